"""Weak-to-strong on the shared real datasets with the MiniLM depth ladder.

    python benchmarks/w2s_shared.py --data ../shared/data [--seeds 0 1 2] [--max-examples 6000]

Tasks SST-2, CoLA, BoolQ, SciQ; weak = MiniLM layers 1 and 2 (and bag-of-words as a classical weak supervisor);
strong = all 6 layers (linear probe on cached features, the CPU default; `--mode last-n` finetunes the top
`--n-train-layers` blocks instead, with the frozen prefix cached per text); losses xent vs aux_conf; ≥3 seeds.
Prints one table per task and writes JSON. Target: the whole grid under 30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine, write_json  # noqa: E402

from superalign import w2s  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the shared datasets folder")
    ap.add_argument("--tasks", nargs="+", default=["sst2", "cola", "boolq", "sciq"])
    ap.add_argument("--weak", nargs="+", default=["minilm-l1", "minilm-l2", "bow"])
    ap.add_argument("--strong", nargs="+", default=["minilm-l6"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-examples", type=int, default=6000)
    ap.add_argument("--mode", default="probe", help="strong student/ceiling mode: probe, last-n, full, lora")
    ap.add_argument("--n-train-layers", type=int, default=2, help="blocks finetuned in mode last-n")
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--ft-lr", type=float, default=1e-4)
    ap.add_argument("--home", default=None, help="run store (default: a fresh temporary folder)")
    ap.add_argument("--out", default="benchmarks/results/w2s_shared.json")
    a = ap.parse_args()
    home = a.home or tempfile.mkdtemp(prefix="w2s_shared_")
    t_all = time.perf_counter()
    out = {"tasks": {}, "machine": machine(), "args": vars(a)}
    for task in a.tasks:
        t = time.perf_counter()
        res = w2s.sweep(task=task, data=a.data, weak=a.weak, strong=a.strong, loss=["xent", "aux_conf"], seed=a.seeds,
                        max_examples=a.max_examples, home=home, progress=False, mode=a.mode,
                        n_train_layers=a.n_train_layers, ft_epochs=a.ft_epochs, ft_lr=a.ft_lr)
        dt = time.perf_counter() - t
        print(f"\n== {task} ({dt:.0f} s)\n{res.table()}", flush=True)
        out["tasks"][task] = {"rows": res.rows, "wall_s": dt}
        write_json(a.out, out)  # after every task, so a long grid keeps what it finished
    out["total_wall_s"] = time.perf_counter() - t_all
    print(f"\ntotal wall time {out['total_wall_s'] / 60:.1f} min")
    write_json(a.out, out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
