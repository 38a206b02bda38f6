"""The RLHF section of `superalign report`: PPO training curves and samples, over-optimization curves and fits.

Every string that comes from data (prompts, responses, model names) is HTML-escaped."""

from __future__ import annotations

import numpy as np

from ..runs.html import esc, figure, fmt, img, mpl_safe, table
from .bon import FunctionalFit, predict_bon, predict_rl

PPO_CURVES = (("objective/scores", "proxy score (normalized)"), ("gold", "gold reward"),
              ("objective/kl", "KL(π‖π_ref) per sequence"), ("policy/entropy", "entropy per token"))


def _ppo(r: dict) -> str:
    m = r["metrics"]
    hist = m.get("history") or []
    if not hist:
        return ""
    keys = [(k, label) for k, label in PPO_CURVES if any(h.get(k) is not None for h in hist)]
    with mpl_safe():
        fig, axes = figure(3.2 * len(keys), 2.6, ncols=len(keys))
        x = [h["update"] for h in hist]
        for ax, (k, label) in zip(axes, keys):
            ax.plot(x, [h.get(k) if h.get(k) is not None else np.nan for h in hist], "-")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("update")
        pic = img(fig, f"PPO curves of {r['id']}")
    samples = (m.get("samples") or [])[-8:]
    samples_table = table(["update", "prompt", "response", "score", "gold"],
                           [[str(s.get("update")), esc(s.get("prompt")), esc(s.get("response")), fmt(s.get("score")),
                             fmt(s.get("gold"))] for s in samples], numeric={0, 3, 4}) if samples else ""
    c = r.get("config") or {}
    desc = (f"policy={c.get('policy')}, reward={c.get('reward')}, β={c.get('kl_coef')}, "
            f"estimator={c.get('kl_estimator')}, updates={c.get('updates')}")
    head = (f"initial → final gold {fmt(m.get('initial_gold'))} → {fmt(m.get('final_gold'))}, proxy "
            f"{fmt(m.get('initial_proxy'))} → {fmt(m.get('final_proxy'))}, KL {fmt(m.get('final_kl'))}")
    return (f"<h3>PPO <code>{esc(r['id'])}</code></h3><p class='muted'>{esc(desc)}<br>{esc(head)}</p>"
            f"{pic}{samples_table}")


def _overopt(r: dict) -> str:
    m = r["metrics"]
    bon, rl, fits = m.get("bon"), m.get("rl") or [], m.get("fits") or {}
    if not bon:
        return ""
    with mpl_safe():
        fig, axes = figure(9, 3.2, ncols=2)
        for ax, what in zip(axes, ("gold", "proxy")):
            d = np.array(bon["d"])
            ax.plot(d, np.array(bon[what]) - bon[what][0], "o", label="best-of-n")
            if f"bon_{what}" in fits:
                xs = np.linspace(0, d.max(), 50)
                ax.plot(xs, predict_bon(FunctionalFit(**fits[f"bon_{what}"]), xs), "-", label="fit d(α−βd)")
            for run in rl:
                ax.plot(run["d"], np.array(run[what]) - run[what][0], ".-", label=f"PPO β={run['kl_coef']}")
            if rl and f"rl_{what}" in fits:
                xs = np.linspace(1e-3, max(max(x["d"]) for x in rl), 50)
                ax.plot(xs, predict_rl(FunctionalFit(**fits[f"rl_{what}"]), xs), "--", label="fit d(α−β log d)")
            ax.set_title(f"{what} reward gain over SFT", fontsize=9)
            ax.set_xlabel("d = sqrt(KL)")
            ax.legend(fontsize=7)
        pic = img(fig, f"over-optimization curves of {r['id']}")
    rows = [[esc(k), fmt(f.get("alpha")), fmt(f.get("beta")), fmt(f.get("r2"))] for k, f in fits.items()]
    return (f"<h3>Over-optimization <code>{esc(r['id'])}</code></h3><p class='muted'>SFT gold "
            f"{fmt(m.get('sft_gold'))}; best gold: best-of-n {fmt(m.get('bon_gold_max'))} (n="
            f"{esc(m.get('bon_gold_argmax_n'))}), PPO {fmt(m.get('rl_gold_max'))}</p>{pic}"
            + table(["fit", "α", "β", "R²"], rows, numeric={1, 2, 3}))


def rlhf_section(runs: list[dict]) -> str:
    done = [r for r in runs if r["status"] == "done" and r["kind"] in ("rlhf-ppo", "rlhf-overopt")]
    if not done:
        return ""
    parts = ["<h2>RLHF</h2><p class='muted'>PPO: per-update means over the rollout batch (glossary in README). "
             "Over-optimization: gains over the SFT policy against d = sqrt(KL(π‖π_SFT)); fits "
             "R_bon = d(α−βd), R_rl = d(α−β log d) (Gao, Schulman &amp; Hilton 2022).</p>"]
    parts += [_overopt(r) for r in done if r["kind"] == "rlhf-overopt"]
    parts += [_ppo(r) for r in done if r["kind"] == "rlhf-ppo"]
    return "\n".join(parts)
