"""Reward over-optimization on the offline testbed (Gao, Schulman & Hilton 2022).

    python benchmarks/rlhf_overopt.py [--kl-coefs 0 0.01 0.05] [--updates 80] [--home DIR] [--quick]

Pipeline (all offline, 2 cores): tiny GPT-2 pretrained on the review grammar → SFT on gold-filtered demonstrations →
proxy reward model on simulated labellers' comparisons (Bradley–Terry noise) → best-of-n (n = 1…256) and PPO runs
(one per KL coefficient) against the proxy. Prints gold and proxy reward against d = sqrt(KL) with the fitted
R_bon(d) = d(α − βd) and R_rl(d) = d(α − β log d), writes JSON and a plot to benchmarks/results/.
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

from superalign.rlhf.overopt import OveroptJob, run_overopt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kl-coefs", type=float, nargs="+", default=[0.0, 0.01, 0.05])
    ap.add_argument("--updates", type=int, default=80)
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--n-max", type=int, default=256)
    ap.add_argument("--rm-prompts", type=int, default=3000,
                    help="comparisons the proxy reward model is trained on (fewer = a more exploitable proxy)")
    ap.add_argument("--home", help="run store (default: a fresh temporary folder)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: 16 prompts, n ≤ 32, 10 PPO updates")
    ap.add_argument("--out", default="benchmarks/results/rlhf_overopt.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.quick:
        a.kl_coefs, a.updates, a.n_prompts, a.n_max = a.kl_coefs[:1], 10, 16, 32
    home = Path(a.home) if a.home else Path(tempfile.mkdtemp(prefix="rlhf_overopt_"))
    t = time.perf_counter()
    reward = "testbed-rm"
    if a.rm_prompts != 3000:
        from superalign.rlhf.jobs import RMJob, run_rm
        rm = run_rm(RMJob(home=str(home), n_prompts=a.rm_prompts, progress=False))
        reward = rm["artefacts"]["model"]
        print(f"proxy RM on {a.rm_prompts} comparisons: held-out accuracy {rm['metrics']['eval_acc']:.3f}, "
              f"agreement with gold {rm['metrics']['eval_gold_agreement']:.3f}")
    r = run_overopt(OveroptJob(home=str(home), reward=reward, kl_coefs=a.kl_coefs, updates=a.updates,
                               n_prompts=a.n_prompts, n_max=a.n_max, eval_every=max(1, a.updates // 16),
                               progress=False))
    wall = time.perf_counter() - t
    m = r["metrics"]
    print(f"SFT policy: gold {m['sft_gold']:.3f}, proxy {m['sft_proxy']:.3f}\n")
    print("best-of-n                      n    KL     d    gold gain  proxy gain")
    b = m["bon"]
    for n, kl, d, g, p in zip(b["n"], b["kl"], b["d"], b["gold"], b["proxy"]):
        print(f"{'':<28}{n:>5} {kl:5.2f} {d:5.2f} {g - b['gold'][0]:+10.3f} {p - b['proxy'][0]:+11.3f}")
    for run in m["rl"]:
        print(f"\nPPO β={run['kl_coef']:<6}          update    KL     d    gold gain  proxy gain")
        for u, kl, d, g, p in zip(run["update"], run["kl"], run["d"], run["gold"], run["proxy"]):
            print(f"{'':<28}{u:>5} {kl:5.2f} {d:5.2f} {g - run['gold'][0]:+10.3f} {p - run['proxy'][0]:+11.3f}")
    print("\nfits (gain over SFT):")
    for k, f in m["fits"].items():
        print(f"  {k:<12} α={f['alpha']:+.3f} β={f['beta']:+.3f} R²={f['r2']:.3f}")
    rl_peak = [max(run["gold"]) - run["gold"][0] for run in m["rl"]]
    rl_drop = [max(run["gold"]) - run["gold"][-1] for run in m["rl"]]
    print(f"\nPPO gold: peak gain {', '.join(f'{x:+.3f}' for x in rl_peak)}; fall from peak by the end "
          f"{', '.join(f'{x:.3f}' for x in rl_drop)}; wall {wall / 60:.1f} min")
    out = Path(a.out)
    if not a.quick:
        shutil.copyfile(r["artefacts"]["plot"], out.with_suffix(".png"))
    write_json(out if not a.quick else out.with_name(out.stem + "_quick.json"),
               {"args": vars(a), "wall_s": wall, "machine": machine(), **m})
    print(f"wrote {out}" + ("" if a.quick else f" and {out.with_suffix('.png')}"))


if __name__ == "__main__":
    main()
