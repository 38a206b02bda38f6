"""The weak-to-strong pillar's declaration: `superalign w2s run|sweep`, its run kinds and its report section."""

from __future__ import annotations

import math

from ..pillars import Job, Pillar, RunKind, register_pillar


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def show_result(res) -> None:
    """Print a :class:`~superalign.w2s.W2SResult`: the PGR table, agreement per pair, where it is stored (once:
    under `accelerate launch` only rank 0 prints)."""
    from ..train.distributed import is_main_process

    if not is_main_process():
        return
    print(res.table())
    print()
    for r in res.rows:
        unit = "pairs" if r.get("metric") == "pairwise_acc" else "examples"  # reward models: agreement per pair
        print(f"{r['weak']} → {r['strong']} [{r['loss']}]: student agrees with the supervisor on "
              f"{_pct(r['agree_weak_correct'])} of weak-correct and {_pct(r['agree_weak_wrong'])} of weak-wrong test "
              f"{unit}; ground-truth early stopping (diagnostic only) would give "
              f"{_pct(r['diag_gt_es_student_acc'])}")
    print(f"\nstored: {res.store.db_path} (group {res.group_id}, {len(res.records)} runs); "
          f"wall {res.wall_s:.1f} s. See `superalign runs list` and `superalign report`.")


W2S_CONFIG = ("task", "weak", "strong", "loss", "seed", "mode")

PILLAR = register_pillar(Pillar(
    name="w2s",
    title="Weak-to-strong generalization",
    help="weak-to-strong generalization (Burns et al. 2023)",
    jobs=(
        Job("run", "superalign.w2s.config:W2SConfig", "superalign.w2s.sweep:run",
            help="one weak → strong pair: weak, student per loss, ceiling, PGR with 95% CI",
            description="One weak → strong pair (one --weak, one --strong; any number of losses and seeds): train "
                        "the weak supervisor, the strong student on its labels per loss, and the strong ceiling; "
                        "report PGR with a 95% bootstrap CI.",
            show=show_result, single=("weak", "strong")),
        Job("sweep", "superalign.w2s.config:W2SConfig", "superalign.w2s.sweep:sweep",
            help="a grid over weak × strong × loss × seed; resumes, local or Ray",
            description="A grid over weak × strong × loss × seed on one task; finished cells are reused, so an "
                        "interrupted sweep resumes. Runs locally or on Ray (--executor ray).",
            show=show_result),
    ),
    kinds=(
        RunKind("w2s", W2S_CONFIG, ("weak_acc", "student_acc", "ceiling_acc", "pgr_acc", "pgr_auroc"),
                help="one (weak, strong, loss, seed) cell"),
        RunKind("w2s-sweep", W2S_CONFIG, ("n_runs", "n_new"), help="a grid of w2s runs with its seed-pooled rows"),
    ),
    section="superalign.w2s.report:w2s_section",
))
