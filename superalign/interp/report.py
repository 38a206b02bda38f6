"""The interpretability section of `superalign report`: SAE metrics, score distributions, and each scored unit's
explanation next to its top-activating contexts with the tokens highlighted by activation.

Every string that comes from data (tokens, explanations, model names) is HTML-escaped; highlight strengths are
numbers computed here, never copied from the data."""

from __future__ import annotations

import math

import numpy as np

from ..runs.html import ArtefactError, esc, figure, fmt, img, mpl_safe, read_json, read_jsonl, table

SAE_COLS = ("fvu", "l0", "dead_fraction_eval", "dense_fraction", "ce_loss_recovered", "kl_recovered", "tokens_per_s")
SCORE_KEYS = ("ev_correlation", "rsquared", "detection_bacc", "fuzzing_bacc")
MAX_UNITS = 25   # units shown with their contexts per score run
MAX_RECORDS = 3  # top-activating contexts shown per unit


def highlight(tokens: list[str], acts: list[float], max_act: float) -> str:
    """Tokens as spans whose red background grows with the activation (title = the exact value)."""
    out = []
    for t, a in zip(tokens, acts):
        alpha = 0.0 if not max_act > 0 else max(0.0, min(1.0, float(a) / max_act))
        style = f" style='background:rgba(220,40,40,{alpha:.2f})'" if alpha > 0 else ""
        out.append(f"<span title='{float(a):.3g}'{style}>{esc(t)}</span>")
    return "".join(out)


def _read_records(path: str | None) -> dict[int, dict]:
    """unit → its record (top-activating contexts); {} when no records file was kept."""
    data = read_json(path)
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ArtefactError(f"artefact {path} has no list of records: it is not a records file of superalign interp")
    return {int(r["unit"]): r for r in data["records"]}


def _sae_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        c, m = r.get("config") or {}, r.get("metrics") or {}
        rows.append([f"<code>{esc(r['id'][:16])}</code>", esc(c.get("architecture", "topk")), fmt(c.get("n_latents")),
                     fmt(c.get("k")), *[fmt(m.get(k)) for k in SAE_COLS]])
    return table(["run", "arch", "latents", "k", *SAE_COLS], rows, numeric=set(range(2, 4 + len(SAE_COLS))))


def _histograms(runs: list[dict]) -> str:
    """One panel per score, one histogram per score run (labelled by explainer and simulator)."""
    data = []
    for r in runs:
        rows = read_jsonl((r.get("artefacts") or {}).get("scores"))
        m = r.get("metrics") or {}
        label = f"{m.get('explainer')} / {m.get('simulator') or (r.get('config') or {}).get('llm')}"
        data.append((label, rows))
    keys = [k for k in SCORE_KEYS if any(k in x for _, rows in data for x in rows)]
    if not keys:
        return ""
    with mpl_safe():
        fig, axes = figure(3.4 * len(keys), 2.6, ncols=len(keys))
        for ax, k in zip(axes, keys):
            for label, rows in data:
                v = [x[k] for x in rows if isinstance(x.get(k), (int, float)) and math.isfinite(x[k])]
                if v:
                    ax.hist(v, bins=np.linspace(-1 if k != "detection_bacc" and k != "fuzzing_bacc" else 0, 1, 21),
                            alpha=0.5, label=f"{label} (mean {np.mean(v):.2f})")
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("score per unit")
            ax.legend(fontsize=6)
        return img(fig, "distribution of explanation scores")


def _units(r: dict) -> str:
    a = r.get("artefacts") or {}
    scores = read_jsonl(a.get("scores")) or read_jsonl(a.get("explanations"))
    recs = _read_records(a.get("records"))
    rows = []
    for s in sorted(scores, key=lambda x: -x.get("ev_correlation", 0) if math.isfinite(x.get("ev_correlation", 0))
                    else 1)[:MAX_UNITS]:
        rec = recs.get(int(s["unit"]), {})
        ctx = "<br>".join(highlight(x["tokens"], x["acts"], rec.get("max_act", 0.0))
                          for x in rec.get("explain", [])[:MAX_RECORDS])
        rows.append([esc(s["unit"]), esc(s.get("explanation")), fmt(s.get("ev_correlation")), ctx])
    return table(["unit", "explanation", "ev_correlation", "top-activating contexts"], rows, numeric={0, 2})


def interp_section(runs: list[dict]) -> str:
    done = [r for r in runs if r["status"] == "done"]
    saes = [r for r in done if r["kind"] == "interp-sae"]
    scores = [r for r in done if r["kind"] == "interp-score"]
    explained = {(r.get("artefacts") or {}).get("explanations") for r in scores}
    unscored = [r for r in done if r["kind"] == "interp-explain"
                and (r.get("artefacts") or {}).get("explanations") not in explained]
    if not (saes or scores or unscored):
        return ""
    parts = ["<h2>Interpretability</h2>"]
    if saes:
        parts += ["<h3>Sparse autoencoders</h3><p class='muted'>held-out FVU = ‖x − x̂‖² / ‖x − x̄‖²; L0 = active "
                  "latents per token; dead = never active on held-out tokens; dense = active on > 10% of tokens; "
                  "loss recovered = (CE_zero − CE_SAE) / (CE_zero − CE_clean) for causal LMs.</p>", _sae_table(saes)]
    if scores:
        parts += ["<h3>Explanation scores</h3><p class='muted'>ev_correlation: Pearson correlation of simulated and "
                  "real activations pooled over held-out top-activating and random contexts (Bills et al. 2023); "
                  "detection / fuzzing: balanced accuracy of yes/no judgements (delphi).</p>", _histograms(scores)]
        for r in scores:
            m = r.get("metrics") or {}
            parts.append(f"<h4>{esc(m.get('explainer'))} scored by {esc(m.get('simulator'))} "
                         f"<code>{esc(r['id'][:16])}</code></h4><p class='muted'>{esc(m.get('n_units'))} units, mean "
                         f"ev_correlation {fmt(m.get('ev_correlation_mean'))}, median "
                         f"{fmt(m.get('ev_correlation_median'))}</p>" + _units(r))
    for r in unscored:
        parts.append(f"<h4>Explanations by {esc((r.get('metrics') or {}).get('explainer'))} "
                     f"<code>{esc(r['id'][:16])}</code></h4>" + _units(r))
    return "\n".join(parts)
