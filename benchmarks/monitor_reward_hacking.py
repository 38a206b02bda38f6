"""Catching reward hacking before it shows (issue 13, item 6): activation monitors watching PPO on the RLHF testbed,
judged against the exact gold reward.

    python benchmarks/monitor_reward_hacking.py [--home DIR] [--updates 64] [--seeds 1 2] [--quick]

Pipeline (offline): the testbed's tiny GPT-2, SFT and proxy reward model (built once in --home, reused on reruns) →
one calibration PPO run at β = 0, seed 0 (degenerate = samples of the updates after its gold peak once smoothed gold
has fallen by 15% of its gain; un-hacked = every update up to the peak ("pre-peak") or updates 1–5 ("early")) →
mass-mean probes on the frozen SFT policy's ("reference") and on the policy's own ("policy") activations, the layer
with the best held-out AUROC, threshold at 5% FPR → fresh PPO runs watched by all four monitors: β = 0, seeds 1 and 2
(over-optimize; lead time = gold-peak update − first-alarm update, and to the first update where gold had visibly
fallen) and β = 0.01, 0.05 (no collapse; false alarms). Alarm: > 25% of an update's samples flagged for 3 consecutive
updates. Prints Markdown tables, writes JSON (atomically) and the curves plot to benchmarks/results/.

Where sizes were cut to fit ≤ 20 min alone on 2 cores (one thread: ~2 CPU-s per PPO update; the rlhf_overopt
benchmark took 22 min for 3 runs of 80 updates): 64 PPO updates per run instead of 80 (the testbed's β = 0 gold peaks
near update 24–45 and has fallen 15% of its gain by ~46–58), two monitored β = 0 seeds, one calibration run, no
best-of-n and no separate evaluation passes (gold and proxy are those of each update's 64 training samples).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _util import machine, write_json  # noqa: E402

from superalign.monitor.reward_hacking import RewardHackingJob, run_reward_hacking  # noqa: E402


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="monitored β = 0 runs")
    ap.add_argument("--false-alarm-kl-coefs", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument("--method", default="mass_mean", choices=("mass_mean", "logreg"))
    ap.add_argument("--home", help="run store; the testbed LM, SFT and RM built there are reused (default: a fresh "
                                   "temporary folder)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: a 1-layer testbed LM, 8 updates of 16 samples")
    ap.add_argument("--out", default="benchmarks/results/monitor_reward_hacking.json")
    a = ap.parse_args()
    # one intra-op thread: the testbed's small matrices gain nothing from a second one, and on a shared machine
    # torch's threads spin-wait on each other (a 2-thread PPO run used ~3× the CPU time of a 1-thread one here)
    torch.set_num_threads(1)
    home = Path(a.home) if a.home else Path(tempfile.mkdtemp(prefix="monitor_rh_"))
    t = time.perf_counter()
    kw = dict(updates=a.updates, seeds=a.seeds, false_alarm_kl_coefs=a.false_alarm_kl_coefs, method=a.method)
    if a.quick:
        kw = _quick_models(home) | dict(updates=6, batch_size=8, minibatch_size=4, ppo_epochs=1, response_len=6,
                                        ppo_lr=1e-2, n_prompts=32, clean_updates=1, smooth=1, drop=0.0,
                                        calibration_seed=1, seeds=[2], false_alarm_kl_coefs=[0.05], alarm_k=1,
                                        method=a.method)
    r = run_reward_hacking(RewardHackingJob(home=str(home), progress=False, device="cpu", **kw))
    wall = time.perf_counter() - t
    m = r["metrics"]
    import json

    curves = json.loads(Path(r["artefacts"]["curves"]).read_text())
    cal = curves["calibration"]
    labels = curves["calibration_run"]["judged"]["labels"]
    print(f"calibration run (seed {curves['config']['calibration_seed']}, β = 0): gold peak at update "
          f"{m['calibration_gold_peak_update']}; degenerate updates {m['calibration_degenerate_updates'][0]}–"
          f"{m['calibration_degenerate_updates'][-1]}; un-hacked: pre-peak 1–{labels['prepeak']['clean_updates'][-1]},"
          f" early 1–{labels['early']['clean_updates'][-1]}")
    print("\n| monitor (labels_reader) | layer | held-out AUROC | held-out TPR at 5% FPR |\n|---|---|---|---|")
    for tag, c in cal.items():
        print(f"| {tag} | {c['layer']} | {c['heldout_auroc']:.3f} | {c['heldout_tpr']:.3f} |")
    print("\n| run | β | seed | gold peak (update: smoothed gold) | gold fell (update) | proxy peak (update) |"
          "\n|---|---|---|---|---|---|")
    for i, run in enumerate(curves["runs"]):
        j = run["judged"]
        print(f"| {i + 1} | {run['kl_coef']:g} | {run['seed']} | {j['gold_peak_update']}: {j['gold_peak']:.2f} "
              f"(end {j['gold_final']:.2f}) | {fmt(j['gold_fell'])} ({fmt(j['gold_fell_update'])}) | "
              f"{j['proxy_peak_update']} |")
    quiet = [r for r in curves["runs"] if r["kl_coef"] > 0]
    print("\n| monitor | β = 0 seed | first alarm | lead time to the gold peak | lead time to the fall | "
          "proxy at the alarm | " + " | ".join(f"β = {r['kl_coef']:g}: alarm updates (first)" for r in quiet) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(quiet))
    for tag in cal:
        for run in [r for r in curves["runs"] if r["kl_coef"] == 0]:
            mj = run["judged"]["monitors"][tag]
            fa = " | ".join(f"{len(r['judged']['monitors'][tag]['alarm_updates'])} of {len(r['update'])} "
                            f"({fmt(r['judged']['monitors'][tag]['first_alarm_update'])})" for r in quiet)
            star = " (headline)" if tag == curves["headline"] else ""
            print(f"| {tag}{star} | {run['seed']} | {fmt(mj['first_alarm_update'])} | {fmt(mj['lead_time_updates'])} | "
                  f"{fmt(mj['lead_time_to_fall_updates'])} | {fmt(mj['proxy_at_alarm'])} | {fa} |")
    print(f"\nwall {wall / 60:.1f} min; run {r['id']}")
    out = Path(a.out)
    if a.quick:
        out = out.with_name(out.stem + "_quick.json")
    else:
        shutil.copyfile(r["artefacts"]["plot"], out.with_suffix(".png"))
    write_json(out, {"args": vars(a), "wall_s": wall, "machine": machine(), "run": r["id"], "metrics": m,
                     "calibration": cal, "calibration_run": curves["calibration_run"], "runs": curves["runs"],
                     "config": curves["config"]})
    print(f"wrote {out}")


def _quick_models(home: Path) -> dict:
    """A 1-layer testbed LM and a reward model on 24 labelled prompts (seconds), as policy and proxy."""
    from superalign.rlhf.jobs import RMJob, run_rm
    from superalign.rlhf.testbed import TestbedLMConfig, testbed_lm_path

    lm = str(testbed_lm_path(home, TestbedLMConfig(n_layer=1, n_embd=32, n_head=2, n_sentences=3000, lr=5e-3),
                             progress=False))
    rm = run_rm(RMJob(home=str(home), base=lm, sampler=lm, n_prompts=24, k=2, batch_size=8, progress=False))
    return {"policy": lm, "reward": rm["artefacts"]["model"]}


if __name__ == "__main__":
    main()
