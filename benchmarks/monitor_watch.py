"""Run-time activation monitors on SmolLM2-135M-Instruct (issue 13, item 5): TPR at 1% / 5% FPR, AUROC and the cost
per scored token of a linear monitor watching generation.

    python benchmarks/monitor_watch.py [--monitors mean_diff mass_mean] [--n-prompts 80] [--quick] [--home DIR]

Scenario (offline): the model is asked for a short *negative* (flagged) or *positive* (clean) review of one of 40
things, two phrasings each (`demo-negative` / `demo-positive`, identical but for the tone; the first --n-prompts of
each). The monitor reads the middle layer (15 of 30; not tuned on these prompts) and is fitted on the first --n-fit
SST-2 train reviews: `mean_diff` = the whitened negative − positive difference of the reviews' mean-pooled hidden
states (monitor.runtime.mean_difference_monitor); `mass_mean` / `logreg` / `ccs` = a probe on SST-2 contrast pairs
("… Sentiment: negative/positive", last token) turned into a one-state monitor (monitor.runtime.probe_monitor).
Every monitor watches the same samples (same prompts and seed, T = 0.7); half of the clean samples set the
thresholds, the other half and all flagged ones evaluate. The same prompts are also sampled unwatched for the cost.

Sizes cut for the 2-core machine (generation of SmolLM2 on CPU dominates): all 80 prompts per set (40 clean samples
calibrate, 40 clean and 80 flagged evaluate; with fewer, e.g. 32, the 1% and 5% thresholds both fall on the largest
clean calibration score), 20 new tokens, 200 fitting reviews, one monitor; 19 min on a loaded machine.
`--quick`: 8 prompts per set, 8 tokens, 40 fitting rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _util import machine, write_json  # noqa: E402

from superalign.monitor.watch_job import WatchJob, run_watch  # noqa: E402

COLS = ("auroc", "tpr_at_1pct", "fpr_at_1pct", "tpr_at_5pct", "fpr_at_5pct")


def _rate(m: dict, tag: str) -> str:
    """"TPR (realised FPR)", or the job's n/a reason when too few clean samples calibrated that FPR."""
    if m.get(f"tpr_at_{tag}") is None:
        return m.get(f"tpr_at_{tag}_na", "n/a")
    return f"{m[f'tpr_at_{tag}']:.1%} ({m[f'fpr_at_{tag}']:.1%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--monitors", nargs="+", default=["mean_diff"],
                    choices=["mean_diff", "mass_mean", "logreg", "ccs"])
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--n-prompts", type=int, default=80)
    ap.add_argument("--n-fit", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--home", help="run store (default: a fresh temporary folder)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: 8 prompts per set, 8 tokens, one monitor")
    ap.add_argument("--out", default="benchmarks/results/monitor_watch.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.quick:
        a.monitors, a.n_prompts, a.n_fit, a.max_new_tokens = a.monitors[:1], 8, 40, 8
    home = Path(a.home) if a.home else Path(tempfile.mkdtemp(prefix="monitor_watch_"))
    t0 = time.perf_counter()
    results = {}
    for i, fit in enumerate(a.monitors):
        t = time.perf_counter()
        job = WatchJob(home=str(home), model=a.model, fit=fit, layer=a.layer, n_fit=a.n_fit, n_prompts=a.n_prompts,
                       max_new_tokens=a.max_new_tokens, timing_repeats=2 if i == 0 else 1, progress=False)
        r = run_watch(job)
        results[fit] = {"run": r["id"], "wall_s": time.perf_counter() - t, "metrics": r["metrics"],
                        "monitor": r["artefacts"]["monitor"], "compute": r.get("compute")}
    wall = time.perf_counter() - t0

    print(f"\nSmolLM2 ({a.model}), layer {a.layer}: flag generations asked to be negative; clean = positive. "
          f"{a.n_prompts} prompts per set, {a.max_new_tokens} new tokens, T = 0.7\n")
    print("| monitor | AUROC [95% CI] | TPR @ 1% FPR (realised FPR) | TPR @ 5% FPR (realised FPR) | clean / flagged "
          "samples (eval) |")
    print("|---|---|---|---|---|")
    for fit, r in results.items():
        m = r["metrics"]
        ci = m["auroc_ci"]
        print(f"| {fit} | {m['auroc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {_rate(m, '1pct')} | {_rate(m, '5pct')} | "
              f"{m['n_clean_eval']} / {m['n_flagged']} |")
    m = next(iter(results.values()))["metrics"]
    print("\n| cost per scored token | value |\n|---|---|")
    print(f"| generated tokens | {m['generated_tokens']} |")
    print(f"| time in the monitor's calls | {m['monitor_s_per_token'] * 1e6:.1f} µs/token "
          f"({m['monitor_share_of_generation']:.3%} of watched generation) |")
    print(f"| watched − unwatched wall time | {m['extra_s_per_token'] * 1e3:+.2f} ms/token (unwatched "
          f"{m['generation_s_unwatched'] / m['generated_tokens'] * 1e3:.2f} ms/token) |")
    print(f"| monitor FLOPs / model FLOPs per token | {m['monitor_flops_per_token']} / "
          f"{m['model_flops_per_token']:.3g} = {m['monitor_flops_share']:.2e} |")
    print(f"| samples identical watched vs unwatched | {m['samples_identical']} |")
    print(f"\nwall time {wall / 60:.1f} min")
    out = write_json(a.out if not a.quick else a.out.replace(".json", "_quick.json"),
                     {"args": vars(a), "results": results, "wall_s": wall, "machine": machine()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
