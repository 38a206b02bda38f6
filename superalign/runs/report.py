"""`superalign report`: one self-contained HTML file of the run store — PGR tables, the paper's plots (as
embedded PNGs) and a list of every run. Every string that comes from data, configs or errors is HTML-escaped."""

from __future__ import annotations

import base64
import html
import io
import math
import os
import time
from collections import defaultdict
from pathlib import Path

from .store import RunStore


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x, pct: bool = False, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (int, float)):
        return f"{100 * x:.1f}" if pct else f"{x:.{digits}g}" if abs(x) >= 1e4 else f"{x:.{digits}f}"
    return _e(x)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def plot_student_vs_weak(rows: list[dict]) -> str:
    """Student accuracy against weak-supervisor accuracy, one panel per strong model, one marker per loss; the
    ceiling as a dashed line and y = x (no improvement over the supervisor) dotted — as in Burns et al. Fig. 3."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_strong: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_strong[f"{r['task']} / {r['strong']}"].append(r)
    n = len(by_strong)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    markers = "osD^v<>"
    for ax, (name, rs) in zip(axes[0], sorted(by_strong.items())):
        losses = sorted({r["loss"] for r in rs})
        for k, loss in enumerate(losses):
            pts = sorted((r["weak_acc"], r["student_acc"], r["weak"]) for r in rs if r["loss"] == loss
                         and _finite(r["weak_acc"]) and _finite(r["student_acc"]))
            if pts:
                ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], marker=markers[k % len(markers)],
                        label=loss)
        ceil = [r["ceiling_acc"] for r in rs if _finite(r["ceiling_acc"])]
        if ceil:
            ax.axhline(100 * sum(ceil) / len(ceil), ls="--", c="k", lw=1, label="ceiling")
        accs = [100 * r[k] for r in rs for k in ("weak_acc", "student_acc", "ceiling_acc") if _finite(r[k])] or [50, 100]
        lo, hi = min(accs) - 1, min(100, max(accs) + 1)
        ax.plot([lo, hi], [lo, hi], ls=":", c="gray", lw=1, label="student = weak")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("weak supervisor accuracy (%)")
        ax.set_ylabel("student accuracy (%)")
        ax.legend(fontsize=7)
    return _png(fig)


def plot_pgr(rows: list[dict]) -> str:
    """PGR (accuracy) per loss with its 95% CI, grouped by weak → strong pair (Burns et al. Fig. 2/5 style)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = sorted({(r["task"], r["weak"], r["strong"]) for r in rows})
    losses = sorted({r["loss"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(pairs) * max(1, len(losses)) / 2), 3.6))
    w = 0.8 / max(1, len(losses))
    for k, loss in enumerate(losses):
        vals, lo, hi = [], [], []
        for p in pairs:
            r = next((r for r in rows if (r["task"], r["weak"], r["strong"]) == p and r["loss"] == loss), None)
            v = r["pgr_acc"] if r and _finite(r["pgr_acc"]) else float("nan")
            ci = r["pgr_acc_ci"] if r else [float("nan")] * 2
            vals.append(v)
            lo.append(v - ci[0] if _finite(ci[0]) and _finite(v) else 0)
            hi.append(ci[1] - v if _finite(ci[1]) and _finite(v) else 0)
        x = np.arange(len(pairs)) + k * w
        ax.bar(x, [0 if math.isnan(v) else v for v in vals], w, yerr=[lo, hi], capsize=3, label=loss)
        for xi, v in zip(x, vals):
            if math.isnan(v):  # undefined PGR (gap too small) is marked, not drawn as a zero
                ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.axhline(0, c="k", lw=0.8)
    ax.set_xticks(np.arange(len(pairs)) + w * (len(losses) - 1) / 2)
    ax.set_xticklabels([f"{t}\n{a}→{b}" for t, a, b in pairs], fontsize=7)
    ax.set_ylabel("PGR (accuracy), 95% CI")
    ax.legend(fontsize=7)
    return _png(fig)


def pgr_table(rows: list[dict]) -> str:
    head = ["task", "weak", "strong", "loss", "seeds", "weak acc %", "student acc %", "ceiling acc %", "PGR acc [95% CI]",
            "weak AUROC", "student AUROC", "ceiling AUROC", "PGR AUROC [95% CI]", "agree weak-correct",
            "agree weak-wrong", "diag: GT early stop acc %", "notes"]
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        lo, hi = r.get("pgr_acc_ci", [float("nan")] * 2)
        alo, ahi = r.get("pgr_auroc_ci", [float("nan")] * 2)
        notes = "; ".join(str(r[k]) for k in ("pgr_acc_note", "pgr_auroc_note") if r.get(k))
        cells = [_e(r["task"]), _e(r["weak"]), _e(r["strong"]), _e(r["loss"]), _e(len(r.get("seeds", []))),
                 _num(r["weak_acc"], True), _num(r["student_acc"], True), _num(r["ceiling_acc"], True),
                 f"{_num(r['pgr_acc'])} [{_num(lo)}, {_num(hi)}]", _num(r["weak_auroc"]), _num(r["student_auroc"]),
                 _num(r["ceiling_auroc"]), f"{_num(r['pgr_auroc'])} [{_num(alo)}, {_num(ahi)}]",
                 _num(r.get("agree_weak_correct")), _num(r.get("agree_weak_wrong")),
                 _num(r.get("diag_gt_es_student_acc"), True), _e(notes)]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def runs_table(runs: list[dict]) -> str:
    head = ["id", "kind", "status", "created", "config", "metrics", "wall s", "FLOPs"]
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    keys = ("task", "weak", "strong", "loss", "seed", "mode")
    for r in runs:
        cfg = ", ".join(f"{k}={r['config'][k]}" for k in keys if k in r["config"]) or \
            ", ".join(f"{k}={v}" for k, v in list(r["config"].items())[:6])
        scal = {k: v for k, v in r["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        met = ", ".join(f"{k}={_num(v)}" for k, v in list(scal.items())[:8])
        if r.get("error"):
            met = f"error: {r['error']}"
        c = r.get("compute") or {}
        out.append("<tr>" + "".join(f"<td>{x}</td>" for x in (
            _e(r["id"]), _e(r["kind"]), _e(r["status"]),
            _e(time.strftime("%Y-%m-%d %H:%M", time.localtime(r.get("created_at") or 0))), _e(cfg), _e(met),
            _num(c.get("wall_s"), digits=1), _num(c.get("flops_total"), digits=3))) + "</tr>")
    return "\n".join(out + ["</table>"])


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;
font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}
h2{border-bottom:1px solid #ddd}img{max-width:100%}.muted{color:#777}"""


def render(store: RunStore) -> str:
    runs = store.list()
    versions = sorted({r["code_version"] for r in runs if r.get("code_version")})
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>superalign report</title><style>{CSS}</style>"
             "</head><body><h1>superalign report</h1>",
             f"<p class='muted'>store {_e(store.db_path)} · {len(runs)} runs · code {_e(', '.join(versions) or 'n/a')}"
             f" · generated {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>"]
    if not runs:
        parts.append("<p>No runs yet. Start with <code>superalign w2s run</code>.</p></body></html>")
        return "\n".join(parts)
    groups = [r for r in runs if r["kind"] == "w2s-sweep" and r["status"] == "done" and r["metrics"].get("rows")]
    all_rows: list[dict] = []
    if groups:
        parts.append("<h2>Weak-to-strong generalization</h2><p>PGR = (student − weak) / (ceiling − weak); CIs are "
                     "95% bootstrap over seeds and test examples; n/a where ceiling − weak is below the minimum gap. "
                     "Agreement = share of test examples where the student predicts what the supervisor predicted, "
                     "split by whether the supervisor was right. The ground-truth early-stopping column is a "
                     "diagnostic only.</p>")
    seen = set()
    for g in groups:
        rows = g["metrics"]["rows"]
        parts.append(f"<h3>sweep {_e(g['id'])} · task {_e(g['config'].get('task'))} · "
                     f"mode {_e(g['config'].get('mode'))}</h3>")
        parts.append(pgr_table(rows))
        parts.append(plot_student_vs_weak(rows) + plot_pgr(rows))
        for r in rows:
            key = tuple(r["run_ids"])
            if key not in seen:
                seen.add(key)
                all_rows.append(r)
    if len(groups) > 1:
        parts.append("<h3>All sweeps combined</h3>" + pgr_table(all_rows))
    parts.append("<h2>All runs</h2>" + runs_table(runs))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(store: RunStore, out_path: str | Path) -> Path:
    """Render the store to ``out_path`` atomically (a temporary file in the same folder, then a rename)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(render(store), encoding="utf-8")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
