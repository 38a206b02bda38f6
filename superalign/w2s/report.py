"""The weak-to-strong section of `superalign report`: for every finished sweep the PGR table and the plots of Burns
et al. 2023 (student vs supervisor accuracy with the ceiling; PGR per loss with 95% CIs), embedded as PNGs, and the
same across all sweeps when there are several.

Every string that comes from the store (configs, task and model names, notes) is HTML-escaped; NaN shows as "n/a"."""

from __future__ import annotations

import math
from collections import defaultdict

from ..runs.html import NA, as_float, ci, esc, figure, finite, flops, fmt, img, mpl_safe, short, table, val, when

SWEEP_KIND = "w2s-sweep"
SWEEP_CONFIG = ("task", "weak", "strong", "loss", "seed", "mode")
"""the config fields shown under each sweep's heading"""

# Marker and line style per loss; "--" is left to the ceilings and ":" to the y = x diagonal.
STYLES = [("o", "-"), ("s", "-."), ("D", (0, (3, 1, 1, 1, 1, 1))), ("^", (0, (1, 1))), ("v", "-"), ("P", "-."),
          ("X", (0, (3, 1, 1, 1, 1, 1)))]


def plot_student_vs_weak(rows: list[dict], all_losses: list[str] | None = None) -> str:
    """Student accuracy against weak-supervisor accuracy (Burns et al. Fig. 3 style): one panel per task, one colour
    per strong model, one marker/line style per loss, the strong model's ceiling dashed, and y = x dotted (a
    student on the diagonal only matches its supervisor). ``all_losses`` fixes each loss's style across the plots
    of one report. Returns an <img> tag, or "" when nothing is plottable."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if finite(r.get("weak_acc")) and finite(r.get("student_acc")):
            by_task[_task_label(r)].append(r)
    if not by_task:
        return ""
    with mpl_safe():
        fig, axes = figure(5.2 * len(by_task), 4.2, len(by_task))
        colours = [f"C{i}" for i in range(10)]
        for ax, (task, rs) in zip(axes, sorted(by_task.items())):
            strongs = sorted({str(r.get("strong")) for r in rs})
            losses = sorted({str(r.get("loss")) for r in rs})
            order = {loss: i for i, loss in enumerate(all_losses or losses)}
            vals = []
            for i, strong in enumerate(strongs):
                c = colours[i % len(colours)]
                for k, loss in enumerate(losses):
                    pts = sorted((100 * as_float(r["weak_acc"]), 100 * as_float(r["student_acc"])) for r in rs
                                 if str(r.get("strong")) == strong and str(r.get("loss")) == loss)
                    if pts:
                        m, ls = STYLES[order.get(loss, k) % len(STYLES)]
                        ax.plot(*zip(*pts), marker=m, ls=ls, c=c, label=f"{strong}, {loss}")
                        vals += [v for p in pts for v in p]
                ceil = [as_float(r.get("ceiling_acc")) for r in rs if str(r.get("strong")) == strong]
                ceil = [100 * v for v in ceil if math.isfinite(v)]
                if ceil:
                    # Mean over rows: the ceiling depends only on the strong model and the seeds pooled.
                    ax.axhline(sum(ceil) / len(ceil), ls="--", c=c, lw=1.2, alpha=.8, label=f"{strong} ceiling")
                    vals += ceil
            lo, hi = min(vals) - 2, min(100.0, max(vals) + 2)
            ax.plot([lo, hi], [lo, hi], ls=":", c="gray", lw=1, label="student = weak")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            weak_x: dict[str, list[float]] = defaultdict(list)
            for r in rs:
                weak_x[str(r.get("weak"))].append(100 * as_float(r["weak_acc"]))
            for weak, xs in weak_x.items():  # name the supervisors along the x axis
                ax.annotate(weak, (sum(xs) / len(xs), lo), xytext=(0, 3), textcoords="offset points", fontsize=7,
                            rotation=90, color="gray", ha="center", va="bottom")
            ax.set_title(task, fontsize=9)  # a reward-model task says "(pairwise accuracy)": the axes are that
            ax.set_xlabel("weak supervisor accuracy (%)")
            ax.set_ylabel("strong student accuracy (%)")
            ax.legend(fontsize=7, loc="lower right")  # students mostly sit above the diagonal
        return img(fig, "student accuracy vs weak supervisor accuracy")


def plot_pgr(rows: list[dict], all_losses: list[str] | None = None) -> str:
    """PGR per loss as bars with 95% CI error bars, grouped by (task,) weak → strong pair; accuracy and AUROC
    panels. An undefined PGR is marked "n/a" rather than drawn as zero; ``all_losses`` fixes each loss's colour
    across the plots of one report. Returns an <img> tag or ""."""
    if not rows:
        return ""
    import numpy as np
    from matplotlib.patches import Patch

    key = lambda r: (str(r.get("task")), str(r.get("weak")), str(r.get("strong")))
    pairs = sorted({key(r) for r in rows})
    losses = sorted({str(r.get("loss")) for r in rows})
    order = {loss: i for i, loss in enumerate(all_losses or losses)}
    several_tasks = len({p[0] for p in pairs}) > 1
    labels = [(f"{t}\n" if several_tasks else "") + f"{a}→{b}" for t, a, b in pairs]
    # Room per pair for its bars and its tick label (about 0.075 in per character at 7 pt); labels turn when the
    # panel would get wider than a page.
    per_pair = max(0.45 * len(losses), 0.075 * max(len(line) for lab in labels for line in lab.split("\n")))
    width = max(4.5, per_pair * len(pairs) + 1.5)
    turn = width > 30.0
    width = min(width, 30.0)
    w = 0.8 / max(1, len(losses))
    with mpl_safe():
        fig, axes = figure(2 * width, 3.8, 2)
        for ax, metric in zip(axes, ("acc", "auroc")):
            for k, loss in enumerate(losses):
                x0 = np.arange(len(pairs)) + k * w
                c = f"C{order.get(loss, k) % 10}"
                for xi, p in zip(x0, pairs):
                    r = next((r for r in rows if key(r) == p and str(r.get("loss")) == loss), None)
                    if r is None:  # this loss was not run for the pair: leave the slot empty
                        continue
                    v = as_float(r.get(f"pgr_{metric}"))
                    if not math.isfinite(v):  # undefined PGR (gap too small) is marked, not drawn as a zero
                        ax.text(xi, 0, NA, ha="center", va="bottom", fontsize=7, rotation=90, color=c)
                        continue
                    ax.bar(xi, v, w, color=c)
                    lo, hi = ci(r, f"pgr_{metric}_ci")
                    if math.isfinite(lo) and math.isfinite(hi):
                        # Percentile CIs need not contain the point estimate; error bars must not be negative.
                        ax.errorbar(xi, v, yerr=[[max(0.0, v - lo)], [max(0.0, hi - v)]], fmt="none", ecolor="k",
                                    capsize=3, lw=1)
            ax.axhline(0, c="k", lw=.8)
            ax.axhline(1, c="gray", lw=.8, ls="--")  # PGR 1 = the full gap to the ceiling recovered
            ax.set_xticks(np.arange(len(pairs)) + w * (len(losses) - 1) / 2)
            ax.set_xticklabels(labels, fontsize=7, rotation=45 if turn else 0, ha="right" if turn else "center")
            ax.set_ylabel(f"PGR ({'accuracy' if metric == 'acc' else 'AUROC'}), 95% CI")
        handles = [Patch(color=f"C{order.get(loss, k) % 10}", label=loss) for k, loss in enumerate(losses)]
        axes[1].legend(handles=handles, fontsize=7, title="loss", title_fontsize=7, loc="upper left",
                       bbox_to_anchor=(1.01, 1))
        return img(fig, "performance gap recovered per loss")


def _task_label(r: dict) -> str:
    """The task's name, marked when its accuracies are pairwise accuracies (a reward-model run on preference pairs)."""
    return str(r.get("task")) + (" (pairwise accuracy)" if r.get("metric") == "pairwise_acc" else "")


# --- tables --------------------------------------------------------------------------------------------------------

PGR_HEAD = ["task", "weak", "strong", "loss", "#seeds", "weak acc %", "student acc %", "ceiling acc %",
            "PGR acc [95% CI]", "weak AUROC", "student AUROC", "ceiling AUROC", "PGR AUROC [95% CI]",
            "agree | weak correct %", "agree | weak wrong %", "diag: GT early-stop student acc %", "notes"]


def pgr_table(rows: list[dict]) -> str:
    """The PGR table: one row per (task, weak, strong, loss), seeds pooled."""
    body = []
    for r in rows:
        lo, hi = ci(r, "pgr_acc_ci")
        alo, ahi = ci(r, "pgr_auroc_ci")
        notes = "; ".join(f"{k.split('_')[1]}: {r[k]}" for k in ("pgr_acc_note", "pgr_auroc_note") if r.get(k))
        seeds = r.get("seeds")
        body.append([esc(_task_label(r)), esc(r.get("weak")), esc(r.get("strong")), esc(r.get("loss")),
                     fmt(len(seeds) if isinstance(seeds, list) else None),
                     fmt(r.get("weak_acc", math.nan), True), fmt(r.get("student_acc", math.nan), True),
                     fmt(r.get("ceiling_acc", math.nan), True),
                     f"{fmt(r.get('pgr_acc', math.nan))} [{fmt(lo)}, {fmt(hi)}]",
                     fmt(r.get("weak_auroc", math.nan)), fmt(r.get("student_auroc", math.nan)),
                     fmt(r.get("ceiling_auroc", math.nan)),
                     f"{fmt(r.get('pgr_auroc', math.nan))} [{fmt(alo)}, {fmt(ahi)}]",
                     fmt(r.get("agree_weak_correct", math.nan), True), fmt(r.get("agree_weak_wrong", math.nan), True),
                     fmt(r.get("diag_gt_es_student_acc", math.nan), True), esc(short(notes))])
    return table(PGR_HEAD, body, numeric=set(range(4, 16)))


def _sweep_section(g: dict, losses: list[str]) -> str:
    cfg, comp, rows = g.get("config") or {}, g.get("compute") or {}, g["metrics"]["rows"]
    desc = ", ".join(f"{k}={val(cfg[k])}" for k in SWEEP_CONFIG if k in cfg)
    return "\n".join([
        f"<h3>Sweep <code>{esc(g['id'])}</code></h3>",
        f"<p class='muted'>{esc(short(desc))} · {when(g.get('created_at'))} · wall "
        f"{fmt(as_float(comp.get('wall_s')), digits=1)} s · FLOPs {flops(comp)}</p>",
        pgr_table(rows), plot_student_vs_weak(rows, losses), plot_pgr(rows, losses)])


def _combined(groups: list[dict]) -> list[dict]:
    """One row per (task, weak, strong, loss) across sweeps: the one with the most seeds, the newest on a tie —
    sweeps that share cells reuse the same runs, so their rows would otherwise be plotted twice."""
    best: dict[tuple, tuple[int, int, dict]] = {}
    for gi, g in enumerate(groups):
        for r in g["metrics"]["rows"]:
            k = tuple(str(r.get(x)) for x in ("task", "weak", "strong", "loss"))
            n = len(r.get("seeds") or [])
            if k not in best or (n, gi) >= best[k][:2]:
                best[k] = (n, gi, r)
    return [best[k][2] for k in sorted(best)]


INTRO = ("<h2>Weak-to-strong generalization</h2><p class='muted'>PGR = (student − weak) / (ceiling − weak); 95% CIs "
         "are bootstrap over seeds and test examples; n/a where |ceiling − weak| is below the minimum gap. Agreement = "
         "share of test examples where the student predicts the supervisor's label, split by whether the supervisor "
         "was right. The ground-truth early-stopping column is a diagnostic only (not available in a real "
         "weak-to-strong setting). Tasks marked \"(pairwise accuracy)\" are reward-model runs on preference pairs: "
         "their accuracies are the share of test pairs whose preferred text gets the higher reward (ties ½), their "
         "PGR is on that, bootstrapped over pairs, and AUROC does not apply (n/a).</p>")


def w2s_section(runs: list[dict]) -> str:
    """Every finished sweep with rows (PGR table and both plots), then all sweeps combined when there are several;
    "" when there is none (single w2s runs appear in the runs table only)."""
    groups = [r for r in runs if r["kind"] == SWEEP_KIND and r["status"] == "done"
              and isinstance((r.get("metrics") or {}).get("rows"), list) and r["metrics"]["rows"]]
    if not groups:
        return ""
    losses = sorted({str(r.get("loss")) for g in groups for r in g["metrics"]["rows"]})
    parts = [INTRO] + [_sweep_section(g, losses) for g in groups]
    if len(groups) > 1:
        rows = _combined(groups)
        parts += [f"<h3>All {len(groups)} sweeps combined</h3>", pgr_table(rows), plot_student_vs_weak(rows, losses),
                  plot_pgr(rows, losses)]
    return "\n".join(parts)
