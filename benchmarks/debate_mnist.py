"""Debate on sparse-pixel MNIST judges (Irving, Christiano & Amodei 2018), against the paper's numbers.

For each k (pixels revealed): train a judge on k random nonzero pixels, then on the first N test images measure
the judge alone (k random nonzero pixels), debate with precommit (greedy debaters, then MCTS at each rollout
budget), consultancy, and wall time. Paper (precommit, MCTS debaters): judge alone 59.4% → debate 88.9% at k=6,
48.2% → 85.2% at k=4.

    python benchmarks/debate_mnist.py --quick          # smoke test, minutes on a laptop CPU (numbers meaningless)
    python benchmarks/debate_mnist.py --data ../shared/data/mnist/mnist.npz --epochs 30 --n-images 1000 \\
        --rollouts 10 100 1000 --mcts-images 1000 --workers 16 --threads 1    # the full run (see notes below)
    python benchmarks/debate_mnist.py --data ../shared/data/mnist/mnist.npz --device cuda ...  # judge on a GPU

Notes for the full run: the judge trains on 60k images × 30 epochs at lr 1e-4 (CPU: roughly 1–2 min per epoch on a
few cores). Debate cost is dominated by judge forward passes over batches of ~150 candidate states (one per nonzero
pixel): greedy ≈ k batches per game, MCTS ≤ rollouts × k batches per game, up to 9 games per image with precommit
(fewer: play stops at the first winning lie). At ~0.1 s per batch on one busy CPU core, 1,000 images × 1,000
rollouts is far beyond a CPU budget; run with many --workers, fewer --mcts-images, or a smaller rollout list.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import machine, write_json  # noqa: E402
from superalign.oversight.consultancy import run_consultancy  # noqa: E402
from superalign.oversight.debate import DebateConfig, run_debates  # noqa: E402
from superalign.oversight.judge import (Images, JudgeConfig, judge_accuracy, load_images, resolve_device,  # noqa: E402
                                        train_judge)
from superalign.oversight.metrics import accuracy_ci  # noqa: E402

PAPER = {6: {"judge_alone": 0.594, "debate_precommit": 0.889}, 4: {"judge_alone": 0.482, "debate_precommit": 0.852}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 judge epoch on 3,000 images (lr 1e-3), 20 images, "
                                                        "MCTS with 2 and 8 rollouts on 5 images")
    p.add_argument("--dataset", default="auto", help="auto, mnist or digits (offline 8×8 stand-in)")
    p.add_argument("--data", default="", help="mnist.npz (else $SUPERALIGN_DATA/mnist/mnist.npz)")
    p.add_argument("--ks", type=int, nargs="+", default=[6, 4])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--n-images", type=int, default=100, help="test images for greedy debate and consultancy")
    p.add_argument("--mcts-images", type=int, default=100, help="test images for MCTS debate")
    p.add_argument("--rollouts", type=int, nargs="*", default=[10, 100])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto: judge training, and debate with --workers 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    if a.quick:
        a.epochs, a.lr, a.max_train, a.n_images, a.mcts_images, a.rollouts = 1, 1e-3, 3000, 20, 5, [2, 8]
    torch.set_num_threads(a.threads)
    split = load_images(a.dataset, a.data)
    print(f"dataset {split.name}: {len(split.train.x)} train, {len(split.test.x)} test images "
          f"{tuple(split.test.x.shape[1:])}" + ("" if split.name == "mnist" else
                                               " (offline stand-in: not comparable with the paper)"), flush=True)
    out = {"args": vars(a), "dataset": split.name, "machine": machine(), "paper": PAPER, "k": {}}
    t_all = time.perf_counter()
    for k in a.ks:
        fit = train_judge(JudgeConfig(k=k, dataset=split.name, epochs=a.epochs, lr=a.lr, max_train=a.max_train,
                                      seed=a.seed, device=a.device), split)
        fit.judge.to(resolve_device(a.device))
        x, y = split.test.x[:a.n_images], split.test.y[:a.n_images]
        row = {"judge_train_s": fit.wall_s, "judge_alone_acc_all_test": fit.test_acc,
               "judge_alone_acc": judge_accuracy(fit.judge, Images(x, y), k, seed=a.seed), "n_images": len(x)}
        runs = [("greedy", None, len(x), True), ("greedy", None, len(x), False)] + \
            [("mcts", r, min(a.mcts_images, len(x)), True) for r in a.rollouts]
        for debater, rollouts, n, precommit in runs:
            cfg = DebateConfig(k=k, debater=debater, rollouts=rollouts or 1, precommit=precommit, seed=a.seed)
            r = run_debates(fit.judge, x[:n], y[:n], cfg, workers=a.workers)
            e = accuracy_ci([rec["honest_wins"] for rec in r.records], seed=a.seed)
            name = (debater if rollouts is None else f"mcts_{rollouts}") + ("" if precommit else "_no_precommit")
            row[name] = {"acc": e.value, "ci": [e.lo, e.hi], "n": n, "wall_s": r.wall_s,
                         "games_per_image": sum(rec["games"] for rec in r.records) / n,
                         "judge_evaluations": r.judge_evaluations}
            print(f"k={k} {name:<20} debate acc {100 * e.value:5.1f}% [{100 * e.lo:.1f}, {100 * e.hi:.1f}] "
                  f"n={n} wall {r.wall_s:.1f} s, {row[name]['games_per_image']:.2f} games/image, "
                  f"{r.judge_evaluations} judge evaluations", flush=True)
        c = run_consultancy(fit.judge, x, y, k, seed=a.seed)
        row["consultancy"] = {"acc": c.accuracy, "acc_honest": c.accuracy_honest,
                              "acc_dishonest": c.accuracy_dishonest, "wall_s": c.wall_s}
        print(f"k={k} judge alone {100 * row['judge_alone_acc']:.1f}% on these images, "
              f"{100 * fit.test_acc:.1f}% on {fit.n_test} test images (paper {100 * PAPER.get(k, {}).get('judge_alone', float('nan')):.1f}%); "
              f"consultancy {100 * c.accuracy:.1f}% (honest {100 * c.accuracy_honest:.1f}%, dishonest "
              f"{100 * c.accuracy_dishonest:.1f}%); judge trained in {fit.wall_s:.1f} s on {fit.n_train} images",
              flush=True)
        out["k"][k] = row
    out["wall_s"] = time.perf_counter() - t_all
    path = a.out or f"benchmarks/results/debate_mnist{'_quick' if a.quick else ''}.json"
    print(f"wrote {write_json(path, out)} (total wall {out['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
