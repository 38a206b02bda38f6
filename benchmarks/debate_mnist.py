"""Debate on sparse-pixel MNIST judges (Irving, Christiano & Amodei 2018), against the paper's numbers.

For each k (pixels revealed): train (or load) a judge on k random nonzero pixels, then on the first test images
measure the judge alone (k random nonzero pixels), debate with precommit (greedy debaters, and MCTS at each rollout
budget), debate without precommit, consultancy, and wall time. Paper (precommit, MCTS with 10,000 rollouts per
move): judge alone 59.4% → debate 88.9% at k=6, 48.2% → 85.2% at k=4.

    python benchmarks/debate_mnist.py --quick          # smoke test, a minute on a laptop CPU (numbers meaningless)
    python benchmarks/debate_mnist.py --data ../shared/data/mnist/mnist.npz --judge-dir judges \\
        --n-images 300 --mcts 100:300 10:100 30:100 300:100 --workers 2 --resume   # what the README table ran

``--mcts R:N`` plays MCTS debaters with R rollouts per move on the first N test images (several allowed: the
rollout curve). ``--judge-dir`` keeps the trained judges (``DIR/k6``, ``DIR/k4``: safetensors + cfg.json) so that a
second run only debates; ``--resume`` keeps the finished runs of an earlier output file with the same settings (the
output is rewritten after every run, so an interrupted benchmark loses at most the run in progress).

Cost: the judge trains on 60k images × 30 epochs at lr 1e-4 (≈45 min per judge on one core of a 2-core CPU).
Debate cost is judge forward passes (≈1,500–2,000 states/s per CPU core, ≈10⁵/s on a GPU): greedy ≈ k batches of
~150 candidate states per game; MCTS ≈ k × (rollouts + ~150) states per game; precommit plays up to 9 games per
image (stopping at the first winning lie), so an image the honest side wins costs all 9.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import machine, write_json  # noqa: E402
from superalign.oversight.consultancy import run_consultancy  # noqa: E402
from superalign.oversight.debate import DebateConfig, run_debates  # noqa: E402
from superalign.oversight.judge import (  # noqa: E402
    Images,
    JudgeConfig,
    judge_accuracy,
    load_images,
    load_judge,
    resolve_device,
    save_judge,
    train_judge,
)
from superalign.oversight.metrics import accuracy_ci  # noqa: E402

PAPER = {6: {"judge_alone": 0.594, "debate_precommit": 0.889}, 4: {"judge_alone": 0.482, "debate_precommit": 0.852}}
# settings that change results: a --resume only reuses runs made with the same values
RESULT_ARGS = ("dataset", "epochs", "lr", "max_train", "seed", "first", "prior", "leaf", "batch", "c_puct",
               "temperature")


def parse_mcts(spec: str) -> tuple[int, int]:
    r, _, n = spec.partition(":")
    if not (r.isdigit() and n.isdigit() and int(r) > 0 and int(n) > 0):
        raise argparse.ArgumentTypeError(f"--mcts takes ROLLOUTS:IMAGES, e.g. 100:300, got {spec!r}")
    return int(r), int(n)


def get_judge(k: int, a, split):
    """The judge for k: loaded from --judge-dir/k{k} when it is there (trained with the same settings: also a
    judge from `superalign debate train-judge`, copied or linked there), else trained (and saved there)."""
    cfg = JudgeConfig(k=k, dataset=split.name, epochs=a.epochs, lr=a.lr, max_train=a.max_train, seed=a.seed,
                      device=a.device)
    folder = Path(a.judge_dir) / f"k{k}" if a.judge_dir else None
    if folder and (folder / "cfg.json").is_file():
        judge, info = load_judge(folder)
        want = {f: getattr(cfg, f) for f in ("k", "dataset", "epochs", "lr", "max_train", "seed")}
        have = {f: (info.get("train") or {}).get(f) for f in want} | {"dataset": info.get("dataset")}
        if have != want:
            sys.exit(f"error: the judge in {folder} was trained with {have}, this run asks for {want}; "
                     f"pass another --judge-dir or delete it")
        return judge, {"loaded_from": str(folder), **(info.get("meta") or {})}
    fit = train_judge(cfg, split, progress=True)
    meta = {"judge_train_s": fit.wall_s, "final_loss": fit.losses[-1], "n_train": fit.n_train}
    if folder:
        save_judge(fit.judge, folder, cfg, meta={"dataset": split.name, "meta": meta})
    return fit.judge, meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 judge epoch on 3,000 images (lr 1e-3), 20 images, "
                                                        "MCTS with 4 and 16 rollouts on 5 images")
    p.add_argument("--dataset", default="auto", help="auto, mnist or digits (offline 8×8 stand-in)")
    p.add_argument("--data", default="", help="mnist.npz (else $SUPERALIGN_DATA/mnist/mnist.npz)")
    p.add_argument("--ks", type=int, nargs="+", default=[6, 4])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--judge-dir", default="", help="keep/reuse trained judges in DIR/k<k>")
    p.add_argument("--n-images", type=int, default=100, help="test images for judge alone, greedy debate, "
                                                             "no-precommit debate and consultancy")
    p.add_argument("--mcts", type=parse_mcts, nargs="*", default=[(100, 100)], metavar="ROLLOUTS:IMAGES",
                   help="MCTS runs (rollouts per move : first test images); several give the rollout curve")
    p.add_argument("--first", default="honest", help="who reveals first: honest or liar")
    p.add_argument("--prior", default="root", help="MCTS prior: root, margin or uniform")
    p.add_argument("--leaf", default="margin", help="MCTS leaf value: margin, random or greedy")
    p.add_argument("--batch", type=int, default=16, help="MCTS leaves per judge call (virtual loss)")
    p.add_argument("--c-puct", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=1, help="debate processes (one CPU thread each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process (judge training)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto: judge training, and debate with --workers 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--resume", action="store_true", help="keep finished runs of --out made with the same settings")
    a = p.parse_args(argv)
    if a.quick:
        a.epochs, a.lr, a.max_train, a.n_images, a.mcts = 1, 1e-3, 3000, 20, [(4, 5), (16, 5)]
    torch.set_num_threads(a.threads)
    split = load_images(a.dataset, a.data)
    print(f"dataset {split.name}: {len(split.train.x)} train, {len(split.test.x)} test images "
          f"{tuple(split.test.x.shape[1:])}" + ("" if split.name == "mnist" else
                                               " (offline stand-in: not comparable with the paper)"), flush=True)
    a.dataset = split.name
    path = Path(a.out or f"benchmarks/results/debate_mnist{'_quick' if a.quick else ''}.json")
    settings = {f: getattr(a, f) for f in RESULT_ARGS}
    out = {"args": vars(a) | {"mcts": [f"{r}:{n}" for r, n in a.mcts]}, "settings": settings, "dataset": split.name,
           "machine": machine(), "paper": PAPER, "k": {}}
    if a.resume and path.is_file():
        old = json.loads(path.read_text())
        if old.get("settings") == settings:
            out["k"] = old.get("k", {})
            out["earlier_args"] = old.get("earlier_args", []) + [old.get("args")]  # the runs they made are kept
            print(f"resuming {path}: {sum(len(v.get('runs', {})) for v in out['k'].values())} finished runs kept")
        else:
            print(f"not resuming {path}: it was made with other settings ({old.get('settings')})")
    t_all = time.perf_counter()
    for k in a.ks:
        judge, judge_meta = get_judge(k, a, split)
        judge.to(resolve_device(a.device))
        x, y = split.test.x[:a.n_images], split.test.y[:a.n_images]
        row = out["k"].setdefault(str(k), {"runs": {}})
        row |= {"judge": judge_meta, "n_images": len(x),
                "judge_alone_acc_all_test": judge_accuracy(judge, split.test, k, seed=a.seed),
                "judge_alone_acc": judge_accuracy(judge, Images(x, y), k, seed=a.seed)}
        print(f"k={k} judge alone {100 * row['judge_alone_acc_all_test']:.1f}% on {len(split.test.x)} test images "
              f"(paper {100 * PAPER.get(k, {}).get('judge_alone', float('nan')):.1f}%), "
              f"{100 * row['judge_alone_acc']:.1f}% on the first {len(x)}", flush=True)
        runs = [("greedy", "greedy", 1, len(x), True), ("greedy_no_precommit", "greedy", 1, len(x), False)] + \
            [(f"mcts_{r}", "mcts", r, min(n, len(split.test.x)), True) for r, n in a.mcts]
        for name, debater, rollouts, n, precommit in runs:
            key = f"{name}@{n}"
            if key in row["runs"]:
                continue
            cfg = DebateConfig(k=k, first=a.first, precommit=precommit, debater=debater, rollouts=rollouts,
                               c_puct=a.c_puct, prior=a.prior, leaf=a.leaf, temperature=a.temperature,
                               batch=a.batch, seed=a.seed)
            step, t0 = max(1, n // 10), time.perf_counter()

            def progress(i, m, what=f"k={k} {key}", step=step, t0=t0):
                if i % step == 0:
                    print(f"  {what}: {i}/{m} images, {time.perf_counter() - t0:.0f} s", flush=True)
            r = run_debates(judge, split.test.x[:n], split.test.y[:n], cfg, workers=a.workers, progress=progress)
            wins = [bool(rec["honest_wins"]) for rec in r.records]
            e = accuracy_ci(wins, seed=a.seed)
            row["runs"][key] = {"debater": debater, "rollouts": rollouts if debater == "mcts" else None,
                                "precommit": precommit, "n": n, "acc": e.value, "ci": [e.lo, e.hi],
                                "wall_s": r.wall_s, "s_per_image": r.wall_s / n,
                                "games_per_image": sum(rec["games"] for rec in r.records) / n,
                                "judge_evaluations": r.judge_evaluations, "honest_wins": wins}
            print(f"k={k} {key:<24} acc {100 * e.value:5.1f}% [{100 * e.lo:.1f}, {100 * e.hi:.1f}] wall "
                  f"{r.wall_s:.0f} s ({r.wall_s / n:.2f} s/image), "
                  f"{row['runs'][key]['games_per_image']:.2f} games/image, {r.judge_evaluations} judge evaluations",
                  flush=True)
            write_json(path, out)
        if "consultancy" not in row:
            c = run_consultancy(judge, x, y, k, seed=a.seed)
            row["consultancy"] = {"acc": c.accuracy, "acc_honest": c.accuracy_honest,
                                  "acc_dishonest": c.accuracy_dishonest, "wall_s": c.wall_s, "n": len(x)}
            print(f"k={k} consultancy {100 * c.accuracy:.1f}% (honest consultant {100 * c.accuracy_honest:.1f}%, "
                  f"dishonest {100 * c.accuracy_dishonest:.1f}%)", flush=True)
        write_json(path, out)
    out["wall_s"] = time.perf_counter() - t_all
    print_table(out)
    print(f"plot: {plot(out, path.with_suffix('.png'))}")
    print(f"wrote {write_json(path, out)} (this invocation: {out['wall_s']:.0f} s)")
    return 0


def print_table(out: dict) -> None:
    print("\n| k | judge alone (paper) | run | images | debate accuracy [95% CI] (paper) | s/image |")
    print("|---|---|---|---|---|---|")
    for k, row in out["k"].items():
        paper = out["paper"].get(int(k)) or out["paper"].get(str(k)) or {}  # int keys become strings in JSON
        alone = f"{100 * row['judge_alone_acc_all_test']:.1f}% ({100 * paper.get('judge_alone', np.nan):.1f}%)"
        for key, r in row["runs"].items():
            ref = f" ({100 * paper['debate_precommit']:.1f}%)" if r["precommit"] and paper else ""
            print(f"| {k} | {alone} | {key.split('@')[0]} | {r['n']} | {100 * r['acc']:.1f}% "
                  f"[{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]{ref} | {r['s_per_image']:.2f} |")
        if "consultancy" in row:
            c = row["consultancy"]
            print(f"| {k} | {alone} | consultancy | {c['n']} | {100 * c['acc']:.1f}% | |")


def plot(out: dict, png: Path) -> Path:
    """Debate accuracy (95% CI) against MCTS rollouts per move, one panel per k, with greedy debaters, the judge
    alone and the paper's numbers as horizontal lines."""
    from superalign.runs.html import figure

    ks = list(out["k"])
    fig, axes = figure(4.2 * len(ks), 3.4, ncols=len(ks))
    for ax, k in zip(axes, ks):
        row, paper = out["k"][k], out["paper"].get(int(k)) or out["paper"].get(str(k)) or {}
        mcts = sorted(((r["rollouts"], r) for r in row["runs"].values() if r["debater"] == "mcts" and r["precommit"]),
                      key=lambda t: t[0])
        for n in sorted({r["n"] for _, r in mcts}, reverse=True):
            pts = [(ro, r) for ro, r in mcts if r["n"] == n]
            ax.errorbar([ro for ro, _ in pts], [100 * r["acc"] for _, r in pts], fmt="o-", capsize=3,
                        yerr=[[100 * (r["acc"] - r["ci"][0]) for _, r in pts],
                              [100 * (r["ci"][1] - r["acc"]) for _, r in pts]], label=f"MCTS, {n} images")
        greedy = next((r for key, r in row["runs"].items() if key.startswith("greedy@")), None)
        if greedy:
            ax.axhline(100 * greedy["acc"], color="tab:green", ls="--", label=f"greedy debaters, {greedy['n']} images")
        if paper:
            ax.axhline(100 * paper["debate_precommit"], color="black", ls=":", label="paper, debate (MCTS 10k)")
            ax.axhline(100 * paper["judge_alone"], color="grey", ls=":", label="paper, judge alone")
        ax.axhline(100 * row["judge_alone_acc_all_test"], color="tab:red", ls="--", label="judge alone (ours)")
        ax.set(xscale="log", xlabel="MCTS rollouts per move", ylabel="judge accuracy with precommit debate (%)",
               title=f"k = {k} pixels", ylim=(40, 100))
        ax.legend(fontsize=6, loc="lower right")
    fig.savefig(png, dpi=110, bbox_inches="tight")
    return png


if __name__ == "__main__":
    sys.exit(main())
