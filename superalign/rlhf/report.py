"""The RLHF section of `superalign report`: training curves and samples of the online methods (PPO, GRPO, RLOO, online
DPO), over-optimization curves and fits.

Every string that comes from data (prompts, responses, model names) is HTML-escaped."""

from __future__ import annotations

import numpy as np

from ..runs.html import esc, figure, fmt, img, mpl_safe, table

PPO_CURVES = (("objective/scores", "proxy score (normalized)"), ("gold", "gold reward"),
              ("objective/kl", "KL(π‖π_ref) per sequence"), ("policy/entropy", "entropy per token"))


ONLINE_KINDS = {"rlhf-ppo": "PPO", "rlhf-grpo": "GRPO", "rlhf-rloo": "RLOO", "rlhf-online-dpo": "Online DPO"}


def _ppo(r: dict) -> str:
    """One online RL run (any of ONLINE_KINDS): its curves, headline numbers and last samples."""
    m = r["metrics"]
    title = ONLINE_KINDS.get(r["kind"], "PPO")
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
        pic = img(fig, f"{title} curves of {r['id']}")
    samples = (m.get("samples") or [])[-8:]
    samples_table = table(["update", "prompt", "response", "score", "gold"],
                           [[str(s.get("update")), esc(s.get("prompt")), esc(s.get("response")), fmt(s.get("score")),
                             fmt(s.get("gold"))] for s in samples], numeric={0, 3, 4}) if samples else ""
    c = r.get("config") or {}
    method = {"rlhf-grpo": f", loss={c.get('loss_type')}, G={c.get('group_size')}",
              "rlhf-rloo": f", k={c.get('group_size')}", "rlhf-online-dpo": f", loss={c.get('loss')}",
              }.get(r["kind"], f", estimator={c.get('kl_estimator')}")
    lora = f", LoRA rank {c['lora_rank']}" if c.get("lora_rank") else ""
    desc = (f"policy={c.get('policy')}, reward={c.get('reward')}, β={c.get('kl_coef', c.get('beta'))}{method}, "
            f"updates={c.get('updates')}{lora}")
    head = (f"initial → final gold {fmt(m.get('initial_gold'))} → {fmt(m.get('final_gold'))}, proxy "
            f"{fmt(m.get('initial_proxy'))} → {fmt(m.get('final_proxy'))}, KL {fmt(m.get('final_kl'))}")
    return (f"<h3>{title} <code>{esc(r['id'])}</code></h3><p class='muted'>{esc(desc)}<br>{esc(head)}</p>"
            f"{pic}{samples_table}")


def _legacy_trajectories(m: dict) -> list[dict]:
    """Runs stored before the study had several methods: their PPO runs ("rl", one per β) as trajectories."""
    return [{"method": "ppo", "beta": r.get("kl_coef"), "run": r.get("run"), "x": r.get("update"),
             **{k: r[k] for k in ("kl", "d", "proxy", "gold")}} for r in m.get("rl") or []]


def _overopt(r: dict) -> str:
    from .overopt import LABELS, draw_study, fit_curves, summarize

    m = r["metrics"]
    bon, fits = m.get("bon"), m.get("fits") or {}
    trajectories = m.get("trajectories")
    if trajectories is None:
        trajectories = ([{"method": "bon", "beta": None, "x": bon["n"], **{k: bon[k] for k in ("kl", "d", "proxy",
                                                                                                 "gold")}}]
                        if bon else []) + _legacy_trajectories(m)
    if not trajectories:
        return ""
    summary = m.get("summary") or summarize(trajectories, (r.get("config") or {}).get("tol", 0.05))
    fits = fits or fit_curves(bon, trajectories)
    with mpl_safe():
        fig, axes = figure(12, 4.2, ncols=2)
        draw_study(axes, bon, trajectories, fits)
        for ax in axes:
            ax.set_xlabel("d = sqrt(KL) [nats^½]")
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        pic = img(fig, f"over-optimization curves of {r['id']}")
    label = lambda x: esc(LABELS.get(x, x))  # noqa: E731
    beta = lambda b: "—" if b is None else fmt(b)  # noqa: E731
    yes = lambda b: "n/a" if b is None else ("yes" if b else "no")  # noqa: E731
    method_rows = [[label(p["method"]), beta(p["best_beta"]), fmt(p["peak_gold_gain"]), fmt(p["peak_kl"]),
                    fmt(p["peak_d"]), fmt(p["gain_per_nat"]), fmt(p["gain_per_sqrt_nat"]),
                    beta(p["no_penalty_beta"]) if p["method"] != "bon" else "—",
                    yes(p["no_penalty_overoptimized"]), fmt(p["no_penalty_drop"]), fmt(p["no_penalty_proxy_rise"])]
                   for p in summary["methods"]]
    run_rows = [[label(x["method"]), beta(x["beta"]), fmt(x["peak_gold_gain"]), esc(x["peak_x"]), fmt(x["peak_kl"]),
                 fmt(x["peak_d"]), fmt(x["gain_per_nat"]), fmt(x["final_gold_gain"]), fmt(x["drop_from_peak"]),
                 fmt(x["proxy_rise_after_peak"]), yes(x["overoptimized"])] for x in summary["runs"]]
    a = summary["answers"]
    last = lambda g, k: " (still at its best at the end)" if g.get(f"{k}_peak_is_last") else ""  # noqa: E731
    group = "; ".join(f"β={fmt(g['beta'])}: PPO peaks at d={fmt(g['ppo_peak_d'])}{last(g, 'ppo')}"
                      + "".join(f", {LABELS[k]} at {fmt(g[f'{k}_peak_d'])}{last(g, k)}" for k in ("grpo", "rloo")
                                if f"{k}_peak_d" in g) for g in a["group_baseline"]) or "n/a"
    answers = (f"<p>Highest gold gain per nat of KL at the gold peak: <b>{label(a['best_gain_per_nat'] or 'n/a')}"
               f"</b>. First to over-optimize without a penalty (gold turns at the smallest d): "
               f"<b>{label(a['first_to_overoptimize'] or 'none')}</b>"
               + (f" (order: {', '.join(label(x) for x in a['overoptimize_ranking'])})"
                  if a["overoptimize_ranking"] else "")
               + f". Gold peak with and without the group baseline: {esc(group)}.</p>")
    fit_rows = [[esc(k), fmt(f.get("alpha")), fmt(f.get("beta")), fmt(f.get("r2"))] for k, f in fits.items()]
    budget = f"; sample budget per method {fmt(m['budget'])} responses" if m.get("budget") else ""
    return (f"<h3>Over-optimization <code>{esc(r['id'])}</code></h3><p class='muted'>SFT gold "
            f"{fmt(m.get('sft_gold'))}, proxy {fmt(m.get('sft_proxy'))}{esc(budget)}. Gains over SFT; KL in nats; "
            f"d = sqrt(KL); per nat = gold gain / KL at the gold peak. A run over-optimizes when gold ends ≥ tol "
            f"below its peak while the proxy ends above its value there.</p>{pic}{answers}"
            + table(["method", "best β", "peak gold gain", "KL at peak", "d at peak", "gain / nat", "gain / nat^½",
                     "no-penalty β", "over-optimizes", "gold drop", "proxy rise"], method_rows,
                    numeric={2, 3, 4, 5, 6, 9, 10})
            + table(["method", "β", "peak gold gain", "at", "KL", "d", "gain / nat", "final gold gain", "drop",
                     "proxy rise", "over-optimizes"], run_rows, numeric={2, 3, 4, 5, 6, 7, 8, 9})
            + table(["fit", "α", "β", "R²"], fit_rows, numeric={1, 2, 3}))


def rlhf_section(runs: list[dict]) -> str:
    done = [r for r in runs if r["status"] == "done" and (r["kind"] in ONLINE_KINDS or r["kind"] == "rlhf-overopt")]
    if not done:
        return ""
    parts = ["<h2>RLHF</h2><p class='muted'>PPO, GRPO, RLOO and online DPO: per-update means over the rollout batch "
             "(glossary in docs/rlhf.md). "
             "Over-optimization: gains over the SFT policy against d = sqrt(KL(π‖π_SFT)) for best-of-n, PPO, GRPO, "
             "RLOO, DPO and IPO at equal sample budgets; fits R_bon = d(α−βd) for best-of-n, R_rl = d(α−β log d) "
             "per method (Gao, Schulman &amp; Hilton 2022).</p>"]
    parts += [_overopt(r) for r in done if r["kind"] == "rlhf-overopt"]
    parts += [_ppo(r) for kind in ONLINE_KINDS for r in done if r["kind"] == kind]
    return "\n".join(parts)
