"""`superalign report`: one self-contained HTML file of the run store.

For every finished weak-to-strong sweep: the PGR table and the plots of Burns et al. 2023 (student vs supervisor
accuracy with the ceiling; PGR per loss with 95% CIs), embedded as base64 PNGs; the same across all sweeps when
there are several; then a compact list of every run, of any kind. Every string that comes from the store (configs,
metrics, task and model names, errors) is HTML-escaped, and NaN is shown as "n/a"."""

from __future__ import annotations

import base64
import html
import json
import io
import math
import os
import secrets
import time
from collections import defaultdict
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Iterable

from .store import RunStore, code_version

SWEEP_KIND = "w2s-sweep"
NA = "n/a"

# What the runs list shows for kinds it knows; any other kind shows its scalar metrics (up to MAX_GENERIC) and its
# scalar config values, so later pillars appear without changes here.
KEY_CONFIG: dict[str, tuple[str, ...]] = {
    "w2s": ("task", "weak", "strong", "loss", "seed", "mode"),
    SWEEP_KIND: ("task", "weak", "strong", "loss", "seed", "mode"),
    "rlhf-sft": ("policy", "data", "epochs", "lr", "seed"),
    "rlhf-rm": ("base", "data", "k", "label_beta", "epochs", "lr", "seed"),
    "rlhf-ppo": ("policy", "reward", "kl_coef", "kl_estimator", "updates", "lr", "seed"),
    "rlhf-dpo": ("policy", "data", "beta", "epochs", "lr", "seed"),
    "rlhf-bon": ("policy", "reward", "n", "n_prompts", "seed"),
    "rlhf-overopt": ("policy", "reward", "n_max", "kl_coefs", "updates", "seed"),
    "interp-cache": ("model", "texts", "hook", "max_length"),
    "interp-sae": ("cache", "architecture", "n_latents", "k", "epochs", "seed"),
    "interp-explain": ("sae", "explainer", "units", "window", "seed"),
    "interp-score": ("explanations", "simulator", "llm", "scorers"),
    "debate-judge": ("k", "dataset", "epochs", "lr", "seed"),
    "debate": ("judge", "k", "debater", "rollouts", "precommit", "first", "n_images"),
}
HEADLINE: dict[str, tuple[str, ...]] = {
    "w2s": ("weak_acc", "student_acc", "ceiling_acc", "pgr_acc", "pgr_auroc"),
    SWEEP_KIND: ("n_runs", "n_new"),
    "rlhf-sft": ("loss_first", "loss_last", "tokens_per_s"),
    "rlhf-rm": ("eval_acc", "eval_gold_agreement", "loss_last", "tokens_per_s"),
    "rlhf-ppo": ("initial_gold", "final_gold", "initial_proxy", "final_proxy", "final_kl", "eos_rate"),
    "rlhf-dpo": ("loss_last", "accuracy_last", "initial_gold", "final_gold", "final_kl", "tokens_per_s"),
    "rlhf-bon": ("proxy_best", "gold_best", "gold_mean", "kl_bon"),
    "rlhf-overopt": ("sft_gold", "bon_gold_max", "bon_gold_argmax_n", "rl_gold_max"),
    "interp-cache": ("tokens", "texts", "d"),
    "interp-sae": ("fvu", "l0", "dead_fraction_eval", "ce_loss_recovered", "tokens_per_s"),
    "interp-explain": ("n_units", "explainer", "mean_density"),
    "interp-score": ("n_units", "ev_correlation_mean", "ev_correlation_median", "rsquared_mean", "detection_bacc_mean"),
    "debate-judge": ("judge_acc", "n_train", "wall_s"),
    "debate": ("judge_alone_acc", "debate_acc", "consultancy_acc", "debate_ece", "debate_wall_s"),
}
MAX_GENERIC = 12
MAX_TEXT = 300  # long config values and errors are cut so one run stays one table row

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.8em 0}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;white-space:nowrap}
h2{border-bottom:1px solid #ddd;margin-top:1.6em}img{max-width:100%;display:block;margin:.5em 0}
.muted{color:#777;font-size:13px}.err{color:#a00}code{background:#f5f5f5;padding:0 3px}"""


# --- formatting ----------------------------------------------------------------------------------------------------

def esc(x: Any) -> str:
    """HTML-escape anything (quotes too, so it is also safe inside attributes)."""
    return html.escape(str(x), quote=True)


def _float(x: Any) -> float:
    """A number as float, anything else (None, strings, bools, lists) as NaN."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x)


def _finite(x: Any) -> bool:
    return math.isfinite(_float(x))


def fmt(x: Any, pct: bool = False, digits: int = 3) -> str:
    """A number for a table cell ("n/a" for NaN/None); non-numbers are escaped as text."""
    if x is None:
        return NA
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return esc(_short(x))
    if math.isnan(x):
        return NA
    if pct:
        return f"{100 * x:.1f}"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}" if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3) else f"{x:.{digits}f}"


def read_jsonl(path: str | None) -> list[dict]:
    """The lines of an artefact JSONL file, or [] when it is missing or unreadable (a report never fails on one)."""
    try:
        return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, TypeError, json.JSONDecodeError):
        return []


def _short(x: Any, n: int = MAX_TEXT) -> str:
    s = str(x)
    return s if len(s) <= n else s[: n - 1] + "…"


def _ci(row: dict, key: str) -> tuple[float, float]:
    ci = row.get(key)
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return _float(ci[0]), _float(ci[1])
    return math.nan, math.nan


def _table(head: list[str], rows: Iterable[list[str]], numeric: Iterable[int] = ()) -> str:
    """An HTML table; cells must already be escaped/formatted. Columns in ``numeric`` are right-aligned."""
    numeric = set(numeric)
    out = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for cells in rows:
        out.append("<tr>" + "".join(f"<td class='n'>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(cells)) + "</tr>")
    return "\n".join(out + ["</tbody></table>"])


# --- plots ---------------------------------------------------------------------------------------------------------

def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    """A figure on the Agg canvas, without pyplot, so the caller's matplotlib backend and state are untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _img(fig: Any, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}"/>'


def _mpl_safe() -> AbstractContextManager:
    """Names from the store are plain text for matplotlib: a '$' in a model name must not start mathtext."""
    import matplotlib
    return matplotlib.rc_context({"text.parse_math": False, "text.usetex": False})


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
        if _finite(r.get("weak_acc")) and _finite(r.get("student_acc")):
            by_task[str(r.get("task"))].append(r)
    if not by_task:
        return ""
    with _mpl_safe():
        fig, axes = _figure(5.2 * len(by_task), 4.2, len(by_task))
        colours = [f"C{i}" for i in range(10)]
        for ax, (task, rs) in zip(axes, sorted(by_task.items())):
            strongs = sorted({str(r.get("strong")) for r in rs})
            losses = sorted({str(r.get("loss")) for r in rs})
            order = {loss: i for i, loss in enumerate(all_losses or losses)}
            vals = []
            for i, strong in enumerate(strongs):
                c = colours[i % len(colours)]
                for k, loss in enumerate(losses):
                    pts = sorted((100 * _float(r["weak_acc"]), 100 * _float(r["student_acc"])) for r in rs
                                 if str(r.get("strong")) == strong and str(r.get("loss")) == loss)
                    if pts:
                        m, ls = STYLES[order.get(loss, k) % len(STYLES)]
                        ax.plot(*zip(*pts), marker=m, ls=ls, c=c, label=f"{strong}, {loss}")
                        vals += [v for p in pts for v in p]
                ceil = [_float(r.get("ceiling_acc")) for r in rs if str(r.get("strong")) == strong]
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
                weak_x[str(r.get("weak"))].append(100 * _float(r["weak_acc"]))
            for weak, xs in weak_x.items():  # name the supervisors along the x axis
                ax.annotate(weak, (sum(xs) / len(xs), lo), xytext=(0, 3), textcoords="offset points", fontsize=7,
                            rotation=90, color="gray", ha="center", va="bottom")
            ax.set_title(task, fontsize=9)
            ax.set_xlabel("weak supervisor accuracy (%)")
            ax.set_ylabel("strong student accuracy (%)")
            ax.legend(fontsize=7, loc="lower right")  # students mostly sit above the diagonal
        return _img(fig, "student accuracy vs weak supervisor accuracy")


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
    with _mpl_safe():
        fig, axes = _figure(2 * width, 3.8, 2)
        for ax, metric in zip(axes, ("acc", "auroc")):
            for k, loss in enumerate(losses):
                x0 = np.arange(len(pairs)) + k * w
                c = f"C{order.get(loss, k) % 10}"
                for xi, p in zip(x0, pairs):
                    r = next((r for r in rows if key(r) == p and str(r.get("loss")) == loss), None)
                    if r is None:  # this loss was not run for the pair: leave the slot empty
                        continue
                    v = _float(r.get(f"pgr_{metric}"))
                    if not math.isfinite(v):  # undefined PGR (gap too small) is marked, not drawn as a zero
                        ax.text(xi, 0, NA, ha="center", va="bottom", fontsize=7, rotation=90, color=c)
                        continue
                    ax.bar(xi, v, w, color=c)
                    lo, hi = _ci(r, f"pgr_{metric}_ci")
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
        return _img(fig, "performance gap recovered per loss")


# --- tables --------------------------------------------------------------------------------------------------------

PGR_HEAD = ["task", "weak", "strong", "loss", "#seeds", "weak acc %", "student acc %", "ceiling acc %",
            "PGR acc [95% CI]", "weak AUROC", "student AUROC", "ceiling AUROC", "PGR AUROC [95% CI]",
            "agree | weak correct %", "agree | weak wrong %", "diag: GT early-stop student acc %", "notes"]


def pgr_table(rows: list[dict]) -> str:
    """The PGR table: one row per (task, weak, strong, loss), seeds pooled."""
    body = []
    for r in rows:
        lo, hi = _ci(r, "pgr_acc_ci")
        alo, ahi = _ci(r, "pgr_auroc_ci")
        notes = "; ".join(f"{k.split('_')[1]}: {r[k]}" for k in ("pgr_acc_note", "pgr_auroc_note") if r.get(k))
        seeds = r.get("seeds")
        body.append([esc(r.get("task")), esc(r.get("weak")), esc(r.get("strong")), esc(r.get("loss")),
                     fmt(len(seeds) if isinstance(seeds, list) else None),
                     fmt(r.get("weak_acc", math.nan), True), fmt(r.get("student_acc", math.nan), True),
                     fmt(r.get("ceiling_acc", math.nan), True),
                     f"{fmt(r.get('pgr_acc', math.nan))} [{fmt(lo)}, {fmt(hi)}]",
                     fmt(r.get("weak_auroc", math.nan)), fmt(r.get("student_auroc", math.nan)),
                     fmt(r.get("ceiling_auroc", math.nan)),
                     f"{fmt(r.get('pgr_auroc', math.nan))} [{fmt(alo)}, {fmt(ahi)}]",
                     fmt(r.get("agree_weak_correct", math.nan), True), fmt(r.get("agree_weak_wrong", math.nan), True),
                     fmt(r.get("diag_gt_es_student_acc", math.nan), True), esc(_short(notes))])
    return _table(PGR_HEAD, body, numeric=set(range(4, 16)))


def _scalars(d: dict) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None]


def _val(v: Any) -> str:
    """A config value for display: lists as [a, b] without Python quotes."""
    return f"[{', '.join(map(str, v))}]" if isinstance(v, (list, tuple)) else str(v)


def _config_cell(r: dict) -> str:
    cfg = r.get("config") or {}
    keys = KEY_CONFIG.get(r["kind"])
    items = [(k, cfg[k]) for k in keys if k in cfg] if keys else _scalars(cfg)[:MAX_GENERIC]
    return esc(_short(", ".join(f"{k}={_val(v)}" for k, v in items)))


def _metrics_cell(r: dict) -> str:
    m = r.get("metrics") or {}
    keys = HEADLINE.get(r["kind"])
    if keys:
        items = [(k, m[k]) for k in keys if k in m]
    else:
        items = _scalars(m)[:MAX_GENERIC]
    if r["kind"] == SWEEP_KIND and isinstance(m.get("rows"), list):
        items.append(("rows", len(m["rows"])))
    cell = ", ".join(f"{esc(k)}={fmt(v)}" for k, v in items)
    if r.get("error"):
        cell += f"<div class='err'>error: {esc(_short(r['error']))}</div>"
    return cell


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if _finite(t) else NA


def _flops(compute: dict) -> str:
    # w2s runs keep a per-stage dict under "flops" and the sum under "flops_total"; other kinds may store just "flops".
    x = compute.get("flops_total", compute.get("flops"))
    return f"{_float(x):.3g}" if _finite(x) else NA


def runs_table(runs: list[dict]) -> str:
    """Every run, newest first: id, kind, status, created, key config, headline metrics, wall seconds, FLOPs."""
    body = []
    for r in sorted(runs, key=lambda r: _float(r.get("created_at")) if _finite(r.get("created_at")) else 0.0,
                    reverse=True):
        c = r.get("compute") or {}
        body.append([f"<code>{esc(r['id'])}</code>", esc(r["kind"]), esc(r["status"]), _when(r.get("created_at")),
                     _config_cell(r), _metrics_cell(r), fmt(_float(c.get("wall_s")), digits=1), _flops(c)])
    return _table(["id", "kind", "status", "created", "config", "metrics", "wall s", "FLOPs"], body, numeric={6, 7})


# --- sections ------------------------------------------------------------------------------------------------------

def _sweep_section(g: dict, losses: list[str]) -> str:
    cfg, comp, rows = g.get("config") or {}, g.get("compute") or {}, g["metrics"]["rows"]
    desc = ", ".join(f"{k}={_val(cfg[k])}" for k in KEY_CONFIG[SWEEP_KIND] if k in cfg)
    return "\n".join([
        f"<h3>Sweep <code>{esc(g['id'])}</code></h3>",
        f"<p class='muted'>{esc(_short(desc))} · {_when(g.get('created_at'))} · wall "
        f"{fmt(_float(comp.get('wall_s')), digits=1)} s · FLOPs {_flops(comp)}</p>",
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


def _header(runs: list[dict], store: RunStore, kinds: list[str] | None) -> str:
    versions = sorted({str(r["code_version"]) for r in runs if r.get("code_version")})
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        counts[f"{r['kind']} {r['status']}"] += 1
    return "\n".join([
        "<h1>superalign report</h1>",
        f"<p class='muted'>generated {esc(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} by superalign "
        f"{esc(code_version())} · store <code>{esc(store.db_path)}</code>"
        + (f" · kinds {esc(', '.join(kinds))}" if kinds is not None else "") + "</p>",
        f"<p class='muted'>runs recorded with code: {esc(', '.join(versions) or NA)}</p>",
        f"<p class='muted'>{len(runs)} runs: "
        f"{esc(', '.join(f'{n} {k}' for k, n in sorted(counts.items())) or 'none')}</p>"])


def render(store: RunStore, kinds: list[str] | None = None) -> str:
    """The whole report as one HTML string (see the module docstring)."""
    runs = [r for r in store.list() if kinds is None or r["kind"] in kinds]
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>superalign report</title><style>{CSS}</style></head><body>", _header(runs, store, kinds)]
    if not runs:
        what = "" if kinds is None else f" of kind {esc(', '.join(kinds))}"
        parts += [f"<p>No runs{what} yet. Start with <code>superalign w2s run</code>.</p>", "</body></html>"]
        return "\n".join(parts)
    groups = [r for r in runs if r["kind"] == SWEEP_KIND and r["status"] == "done"
              and isinstance((r.get("metrics") or {}).get("rows"), list) and r["metrics"]["rows"]]
    if groups:
        parts.append(
            "<h2>Weak-to-strong generalization</h2><p class='muted'>PGR = (student − weak) / (ceiling − weak); "
            "95% CIs are bootstrap over seeds and test examples; n/a where |ceiling − weak| is below the minimum "
            "gap. Agreement = share of test examples where the student predicts the supervisor's label, split by "
            "whether the supervisor was right. The ground-truth early-stopping column is a diagnostic only "
            "(not available in a real weak-to-strong setting).</p>")
        losses = sorted({str(r.get("loss")) for g in groups for r in g["metrics"]["rows"]})
        parts += [_sweep_section(g, losses) for g in groups]
        if len(groups) > 1:
            rows = _combined(groups)
            parts += [f"<h3>All {len(groups)} sweeps combined</h3>", pgr_table(rows),
                      plot_student_vs_weak(rows, losses), plot_pgr(rows, losses)]
    if any(r["kind"].startswith("rlhf-") for r in runs):
        from ..rlhf.report import rlhf_section  # numpy/matplotlib only: no torch import for the report
        parts.append(rlhf_section(runs))
    if any(r["kind"].startswith("interp-") for r in runs):
        from ..interp.report import interp_section  # numpy/matplotlib only
        parts.append(interp_section(runs))
    if any(r["kind"].startswith("debate") for r in runs):
        from ..oversight.report import oversight_section  # numpy/matplotlib only
        parts.append(oversight_section(runs))
    parts += ["<h2>All runs</h2>", runs_table(runs), "</body></html>"]
    return "\n".join(parts)


def write_report(store: RunStore, out_path: str | Path, kinds: list[str] | None = None) -> Path:
    """Write the HTML report of ``store`` to ``out_path`` atomically and return its path.

    ``kinds`` limits the report to runs of those kinds (None = all); sweep sections need "w2s-sweep" among them.
    The file is written to a temporary file in the same folder and renamed over ``out_path``, so a reader never
    sees a half-written report and an earlier one survives a failure."""
    if isinstance(kinds, str):  # a bare kind would otherwise match as a substring test
        kinds = [kinds]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(store, kinds)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 gives the report the usual umask-derived permissions (tempfile would make it 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
