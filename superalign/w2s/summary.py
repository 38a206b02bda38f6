"""Aggregate finished runs into the PGR table: one row per (task, weak, strong, loss), seeds pooled."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .pgr import bootstrap_pgr

ROW_KEYS = ("task", "weak", "strong", "loss")


def summarize(records: list[dict], n_boot: int = 1000, min_gap: float = 0.02) -> list[dict]:
    from .pipeline import load_preds

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r and r["status"] == "done":
            groups[tuple(r["config"][k] for k in ROW_KEYS)].append(r)
    rows = []
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["config"]["seed"])
        seeds = [load_preds(r["artefacts"]["preds"]) for r in rs]
        row = dict(zip(ROW_KEYS, key))
        row["seeds"] = [r["config"]["seed"] for r in rs]
        for k in ("weak_acc", "student_acc", "ceiling_acc", "weak_auroc", "student_auroc", "ceiling_auroc",
                  "agree_weak_correct", "agree_weak_wrong", "diag_gt_es_student_acc"):
            vals = [r["metrics"].get(k, math.nan) for r in rs]
            row[k] = float(np.nanmean(vals)) if not all(map(math.isnan, vals)) else math.nan
        for metric in ("acc", "auroc"):
            est = bootstrap_pgr(seeds, metric, n_boot=n_boot, min_gap=min_gap)
            row[f"pgr_{metric}"] = est.value
            row[f"pgr_{metric}_ci"] = [est.ci_low, est.ci_high]
            row[f"pgr_{metric}_per_seed"] = est.per_seed
            if est.note:
                row[f"pgr_{metric}_note"] = est.note
        row["run_ids"] = [r["id"] for r in rs]
        row["wall_s"] = float(sum(r["compute"].get("wall_s", 0.0) for r in rs))
        row["flops"] = float(sum(r["compute"].get("flops_total", 0.0) for r in rs))
        rows.append(row)
    return rows


def _f(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def format_table(rows: list[dict]) -> str:
    """A plain-text table: accuracies in %, PGR with its 95% CI (seeds × test examples bootstrap)."""
    head = ["task", "weak", "strong", "loss", "seeds", "weak acc", "student acc", "ceiling acc", "PGR acc [95% CI]",
            "weak AUROC", "student AUROC", "ceiling AUROC", "PGR AUROC [95% CI]"]
    body = []
    for r in rows:
        lo, hi = r["pgr_acc_ci"]
        alo, ahi = r["pgr_auroc_ci"]
        body.append([r["task"], r["weak"], r["strong"], r["loss"], str(len(r["seeds"])), _f(r["weak_acc"], True),
                     _f(r["student_acc"], True), _f(r["ceiling_acc"], True),
                     f"{_f(r['pgr_acc'])} [{_f(lo)}, {_f(hi)}]", _f(r["weak_auroc"]), _f(r["student_auroc"]),
                     _f(r["ceiling_auroc"]), f"{_f(r['pgr_auroc'])} [{_f(alo)}, {_f(ahi)}]"])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    notes = [f"note ({r['weak']}→{r['strong']}, {r['loss']}, PGR {k.split('_')[1]}): {r[k]}"
             for r in rows for k in ("pgr_acc_note", "pgr_auroc_note") if k in r]
    return "\n".join(out + notes)
