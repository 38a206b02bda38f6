"""Reward-model accuracy on held-out real human preference pairs, next to chance and a length baseline.

    python benchmarks/rlhf_rm_real.py --data ../shared/data [--seeds 0 1 2 3 4]

Pairs: Anthropic HH-RLHF harmless-base (2,312 pairs, the shared folder's test split) and OpenAI's TL;DR
comparisons (1,771 pairs, validation batches 13 and 18). Reward model: a linear Bradley–Terry head on frozen
MiniLM-L6 features (mean-pooled last layer, cached per text), r(x) = w·f(x), trained with
``superalign.rlhf.reward.fit_linear_bt``; L2 chosen on a validation fifth of the training part. 80/20 splits over
seeds; accuracy with a 95% bootstrap CI over held-out pairs pooled across seeds. Text per side: HH — the last
human turn and the response (MiniLM reads 256 tokens; the last turn is what the response answers); TL;DR — the
post title and the summary (the post itself would not fit).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _util import machine, write_json  # noqa: E402

from superalign.errors import SuperalignError  # noqa: E402
from superalign.models import resolve_model  # noqa: E402
from superalign.models.features import encode_texts  # noqa: E402
from superalign.rlhf.data import load_preferences  # noqa: E402
from superalign.rlhf.reward import fit_linear_bt  # noqa: E402
from superalign.train.metrics import percentile_ci  # noqa: E402


def sides(name: str, pairs: list[dict]) -> tuple[list[str], list[str]]:
    if name == "anthropic_hh":
        last = [p["prompt"].rsplit("Human:", 1)[-1].replace("Assistant:", "").strip() for p in pairs]
        return ([f"Human: {q} Assistant: {p['chosen'].strip()}" for q, p in zip(last, pairs)],
                [f"Human: {q} Assistant: {p['rejected'].strip()}" for q, p in zip(last, pairs)])
    titles = [p["prompt"].split("\nTITLE: ", 1)[-1].split("\nPOST:", 1)[0] for p in pairs]
    return ([f"{t} TL;DR: {p['chosen'].strip()}" for t, p in zip(titles, pairs)],
            [f"{t} TL;DR: {p['rejected'].strip()}" for t, p in zip(titles, pairs)])


def evaluate(fc: np.ndarray, fr: np.ndarray, len_c: np.ndarray, len_r: np.ndarray, seeds: list[int]) -> dict:
    n = len(fc)
    accs, correct, length_correct = [], [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        test, train = perm[: n // 5], perm[n // 5:]
        val, fit_part = train[: len(train) // 5], train[len(train) // 5:]
        best = max((1e-4, 1e-3, 1e-2, 1e-1), key=lambda l2: np.mean(
            (fc[val] - fr[val]) @ fit_linear_bt(fc[fit_part], fr[fit_part], l2=l2, seed=seed) > 0))
        w = fit_linear_bt(fc[train], fr[train], l2=best, seed=seed)
        ok = ((fc[test] - fr[test]) @ w > 0).astype(float)
        accs.append(ok.mean())
        correct.append(ok)
        length_correct.append(np.where(len_c[test] == len_r[test], 0.5, (len_c[test] > len_r[test]).astype(float)))
    pooled = np.concatenate(correct)
    rng = np.random.default_rng(0)
    boot = [rng.choice(pooled, len(pooled)).mean() for _ in range(1000)]
    lo, hi = percentile_ci(np.array(boot))
    return {"acc": float(pooled.mean()), "acc_ci": [lo, hi], "acc_std_over_seeds": float(np.std(accs)),
            "acc_per_seed": [float(a) for a in accs], "length_baseline": float(np.concatenate(length_correct).mean()),
            "n_pairs": n, "n_test_per_seed": n // 5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("SUPERALIGN_DATA",
                                                     str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--home", default=os.environ.get("SUPERALIGN_HOME", "superalign_runs"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--out", default="benchmarks/results/rlhf_rm_real.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    spec = resolve_model(a.model)
    results = {}
    print(f"{'dataset':<14}{'features':<10}{'pairs':>7}  {'held-out acc [95% CI]':<24}{'± seeds':>8}"
          f"{'longer wins':>12}{'chance':>8}{'wall s':>8}")
    for name in ("anthropic_hh", "tldr"):
        try:
            pairs = load_preferences(name, a.data)
        except SuperalignError as e:
            print(f"{name:<14}skipped: {e}")
            continue
        t = time.perf_counter()
        c, r = sides(name, pairs)
        feats = encode_texts(spec, c + r, cache_dir=Path(a.home) / "cache", max_length=256, progress=False)[-1]
        fc, fr = feats[: len(c)], feats[len(c):]
        res = evaluate(fc, fr, np.array([len(p["chosen"]) for p in pairs]),
                       np.array([len(p["rejected"]) for p in pairs]), a.seeds)
        res["wall_s"] = time.perf_counter() - t
        results[name] = res
        print(f"{name:<14}{a.model:<10}{res['n_pairs']:>7}  {100 * res['acc']:5.1f} [{100 * res['acc_ci'][0]:.1f}, "
              f"{100 * res['acc_ci'][1]:.1f}]{'':<8}{100 * res['acc_std_over_seeds']:>7.1f}"
              f"{100 * res['length_baseline']:>12.1f}{50.0:>8.1f}{res['wall_s']:>8.1f}")
    write_json(a.out, {"args": vars(a), "machine": machine(), "results": results})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
