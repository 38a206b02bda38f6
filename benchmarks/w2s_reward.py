"""Weak-to-strong reward models (Burns et al. 2023, the reward-modelling setting) through the w2s pipeline.

    python benchmarks/w2s_reward.py [--quick] [--seeds 0 1 2] [--weak bow minilm-l1] [--home DIR]
                                    [--out benchmarks/results/w2s_reward.json]

Tasks (pairwise; every model a Bradley–Terry reward model, metric = held-out pairwise accuracy):
- testbed-pairs: 3,000 pairs from the exact-gold RLHF testbed (offline);
- anthropic_hh-pairs: Anthropic HH-RLHF harmless-base test pairs (shared data; skipped without $SUPERALIGN_DATA);
- tldr-pairs: OpenAI TL;DR human comparisons, 1,771 pairs (shared data; skipped without it).
Weak = bag-of-words Bradley–Terry (bow) and/or MiniLM's first layer (minilm-l1, a shallow reward model), strong =
MiniLM-L6 (minilm-l6) and its first 3 layers (minilm-l3, the best linear reward feature on the testbed and HH),
linear reward heads on cached features (probe mode); losses xent (soft Bradley–Terry)
and aux_conf (the pairwise auxiliary confidence loss). Prints a Markdown table — task, weak, loss, weak / strong-on-weak
/ ceiling pairwise accuracy, PGR with its 95% CI (bootstrap over seeds × test pairs) — next to the paper's range, and
writes the rows as JSON (atomically). ``--quick``: testbed-pairs only, 1,000 rows (500 pairs), one seed,
bow → minilm-l2 (or --strong).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine, write_json  # noqa: E402

from superalign import w2s  # noqa: E402
from superalign.errors import SuperalignError  # noqa: E402
from superalign.w2s.pipeline import Experiment  # noqa: E402

TASKS = ("testbed-pairs", "anthropic_hh-pairs", "tldr-pairs")
SHARED = ("anthropic_hh-pairs", "tldr-pairs")
# MiniLM-L6's last layer (trained for sentence similarity) is no better a linear reward feature than bag-of-words on
# these tasks, while its third layer is the best one on the testbed and on HH: every task also runs that strong model
# (one encoding pass serves both; only the probes are extra).
STRONG = ["minilm-l6", "minilm-l3"]
PAPER = "Burns et al. 2023 (reward modelling, naive finetuning on weak labels): PGR ≈ 0.10–0.20"


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def markdown(rows: list[dict]) -> str:
    head = ["task", "weak → strong", "loss", "seeds", "weak pair acc %", "strong-on-weak pair acc %",
            "ceiling pair acc %", "PGR [95% CI]"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lo, hi = r["pgr_acc_ci"]
        pgr = f"{_num(r['pgr_acc'])} [{_num(lo)}, {_num(hi)}]"
        if r.get("pgr_acc_note"):  # why the PGR or its CI is n/a
            pgr = f"{_num(r['pgr_acc'])} ({r['pgr_acc_note']})"
        out.append(f"| {r['task']} | {r['weak']} → {r['strong']} | {r['loss']} | {len(r['seeds'])} | "
                   f"{_pct(r['weak_acc'])} | {_pct(r['student_acc'])} | {_pct(r['ceiling_acc'])} | {pgr} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="testbed-pairs, 1,000 rows, one seed, bow → minilm-l2")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--weak", nargs="+", default=None, help="weak model(s) (default: bow minilm-l1)")
    ap.add_argument("--strong", nargs="+", default=None, help="strong model(s) (default: minilm-l6 minilm-l3)")
    ap.add_argument("--loss", nargs="+", default=["xent", "aux_conf"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    ap.add_argument("--max-examples", type=int, default=None, help="rows per task, 2 per pair (default: 6000)")
    ap.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default: 1000)")
    ap.add_argument("--data", default=None, help="shared datasets folder (else $SUPERALIGN_DATA)")
    ap.add_argument("--home", default=None, help="run store to use and keep (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for training (0: torch's default; feature encoding always uses the default): "
                         "1 is much faster for the tiny probe steps on a loaded machine")
    ap.add_argument("--out", default="benchmarks/results/w2s_reward.json")
    a = ap.parse_args(argv)
    default_threads = torch.get_num_threads()
    # --quick changes the defaults only: what is passed explicitly stays
    quick = {"weak": ["bow"], "strong": ["minilm-l2"], "seeds": [0], "max_examples": 1000, "n_boot": 100}
    full = {"weak": ["bow", "minilm-l1"], "strong": None, "seeds": [0, 1, 2], "max_examples": 6000, "n_boot": 1000}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.quick:
        a.tasks = ["testbed-pairs"]
    tmp = None if a.home else Path(tempfile.mkdtemp(prefix="w2s_reward_"))
    home = a.home or str(tmp)
    rows, skipped, t0 = [], {}, time.perf_counter()
    try:
        for task in a.tasks:
            if task in SHARED and not (a.data or os.environ.get("SUPERALIGN_DATA")):
                skipped[task] = "shared data not found (pass --data or set SUPERALIGN_DATA)"
                print(f"skipping {task}: {skipped[task]}", file=sys.stderr)
                continue
            t = time.perf_counter()
            try:
                cfg = w2s.W2SConfig(task=task, data=a.data, weak=a.weak, strong=a.strong or STRONG, loss=a.loss,
                                    seed=a.seeds, max_examples=a.max_examples, n_boot=a.n_boot, mode="probe",
                                    home=home, progress=False)
                if a.threads:  # encode first with every thread (large matmuls), then train the probes with a.threads
                    Experiment(cfg).prepare_features()
                    torch.set_num_threads(a.threads)
                res = w2s.sweep(cfg)
            except SuperalignError as e:
                skipped[task] = str(e)
                print(f"skipping {task}: {e}", file=sys.stderr)
                continue
            finally:
                torch.set_num_threads(default_threads)
            print(f"{task}: {len(res.records)} runs in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            rows += [{**r, "wall_s_task": time.perf_counter() - t} for r in res.rows]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    print(markdown(rows))
    print(f"\nPaper: {PAPER}. Probe mode (linear reward heads on cached MiniLM features), "
          f"{len(a.seeds)} seed(s); pairwise accuracy = share of test pairs whose preferred text gets the higher "
          f"reward; wall {wall:.0f} s.")
    write_json(a.out, {"rows": rows, "skipped": skipped, "paper": PAPER, "wall_s": wall, "machine": machine(),
                       "args": vars(a)})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
