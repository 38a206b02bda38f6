"""Aggregate finished runs into the PGR table: one row per (task, weak, strong, loss), seeds pooled."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .pgr import bootstrap_pgr

ROW_KEYS = ("task", "weak", "strong", "loss")
MC_KEYS = ("weak_mc_acc", "student_mc_acc", "ceiling_mc_acc", "n_mc_questions")
# per-seed counts, averaged over seeds: rows per split, rows class balancing dropped, truncated texts
COUNT_KEYS = ("n_weak_train", "n_weak_label", "n_val", "n_test", "n_dropped_balance", "n_truncated_weak",
              "n_truncated_strong")


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
        # reward-model runs (pairwise tasks): *_acc is pairwise accuracy, bootstrapped over pairs; no AUROC
        pairwise = any(r["metrics"].get("metric") == "pairwise_acc" for r in rs)
        if pairwise:
            row["metric"] = "pairwise_acc"
        for k in ("weak_acc", "student_acc", "ceiling_acc", "weak_auroc", "student_auroc", "ceiling_auroc",
                  "agree_weak_correct", "agree_weak_wrong", "diag_gt_es_student_acc", *MC_KEYS, *COUNT_KEYS):
            vals = [math.nan if r["metrics"].get(k) is None else float(r["metrics"][k]) for r in rs]
            row[k] = float(np.nanmean(vals)) if not all(map(math.isnan, vals)) else math.nan
        for metric in ("acc", "auroc"):
            if pairwise and metric == "auroc":
                row.update(pgr_auroc=math.nan, pgr_auroc_ci=[math.nan, math.nan],
                           pgr_auroc_per_seed=[math.nan] * len(rs))
                continue
            est = bootstrap_pgr(seeds, "pair_acc" if pairwise else metric, n_boot=n_boot, min_gap=min_gap)
            row[f"pgr_{metric}"] = est.value
            row[f"pgr_{metric}_ci"] = [est.ci_low, est.ci_high]
            row[f"pgr_{metric}_per_seed"] = est.per_seed
            if est.note:
                row[f"pgr_{metric}_note"] = est.note
        row["run_ids"] = [r["id"] for r in rs]
        # a run whose FLOPs are unknown (the ledger's None) adds none
        row["wall_s"] = float(sum(r["compute"].get("wall_s") or 0.0 for r in rs))
        row["flops"] = float(sum(r["compute"].get("flops_total") or 0.0 for r in rs))
        rows.append(row)
    return rows


def _f(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def _n(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0f}"


def format_table(rows: list[dict]) -> str:
    """A plain-text table: accuracies in %, PGR with its 95% CI (seeds × test examples bootstrap), rows per split
    (weak-train/weak-label/val/test, mean over seeds) and rows dropped by class balancing; multiple-choice accuracy
    columns when a task has groups. PGR is n/a, with a note under the table, when the weak supervisor or the
    ceiling is not above chance or their gap is below --min-gap. Reward-model rows (pairwise tasks) show pairwise
    accuracy and pairs per split; a table of only such rows drops the AUROC columns, which do not apply to them."""
    mc = any(not math.isnan(r.get("weak_mc_acc", math.nan)) for r in rows)
    pairs_only = bool(rows) and all(r.get("metric") == "pairwise_acc" for r in rows)
    acc = "pair acc" if pairs_only else "acc"
    head = ["task", "weak", "strong", "loss", "seeds", f"weak {acc}", f"student {acc}", f"ceiling {acc}",
            f"PGR {acc} [95% CI]"]
    if not pairs_only:
        head += ["weak AUROC", "student AUROC", "ceiling AUROC", "PGR AUROC [95% CI]"]
    if mc:
        head += ["weak MC acc", "student MC acc", "ceiling MC acc"]
    head += ["pairs wt/wl/val/test" if pairs_only else "n wt/wl/val/test", "dropped by balancing"]
    body = []
    for r in rows:
        lo, hi = r["pgr_acc_ci"]
        alo, ahi = r["pgr_auroc_ci"]
        task = r["task"] + (" (pairs)" if r.get("metric") == "pairwise_acc" and not pairs_only else "")
        cells = [task, r["weak"], r["strong"], r["loss"], str(len(r["seeds"])), _f(r["weak_acc"], True),
                 _f(r["student_acc"], True), _f(r["ceiling_acc"], True), f"{_f(r['pgr_acc'])} [{_f(lo)}, {_f(hi)}]"]
        if not pairs_only:
            cells += [_f(r["weak_auroc"]), _f(r["student_auroc"]), _f(r["ceiling_auroc"]),
                      f"{_f(r['pgr_auroc'])} [{_f(alo)}, {_f(ahi)}]"]
        if mc:
            cells += [_f(r.get(k, math.nan), True) for k in MC_KEYS[:3]]
        cells += ["/".join(_n(r.get(k, math.nan)) for k in COUNT_KEYS[:4]), _n(r.get("n_dropped_balance", math.nan))]
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    notes = [f"note ({r['weak']}→{r['strong']}, {r['loss']}, PGR {k.split('_')[1]}): {r[k]}"
             for r in rows for k in ("pgr_acc_note", "pgr_auroc_note") if k in r]
    for r in rows:
        for metric in ("acc",) if r.get("metric") == "pairwise_acc" else ("acc", "auroc"):
            bad = [sd for sd, v in zip(r["seeds"], r[f"pgr_{metric}_per_seed"]) if math.isnan(v)]
            if bad and f"pgr_{metric}_note" not in r:
                notes.append(f"note ({r['weak']}→{r['strong']}, {r['loss']}, PGR {metric}): n/a for seed(s) {bad} "
                             "(weak or ceiling not above chance there, or gap below --min-gap)")
        trunc = max(r.get("n_truncated_weak", 0) or 0, r.get("n_truncated_strong", 0) or 0)
        if trunc and not math.isnan(trunc):
            notes.append(f"note ({r['weak']}→{r['strong']}): ~{trunc:.0f} texts per seed longer than --max-length "
                         "were truncated")
    return "\n".join(out + notes)
