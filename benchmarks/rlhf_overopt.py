"""Reward over-optimization across alignment methods on the offline testbed (Gao, Schulman & Hilton 2022).

    python benchmarks/rlhf_overopt.py [--methods bon ppo grpo rloo dpo ipo] [--kl-coefs 0 0.05]
                                      [--dpo-betas 0.05 0.5] [--updates 60] [--home DIR] [--quick]

Pipeline (all offline, 2 cores): tiny GPT-2 pretrained on the review grammar → SFT on gold-filtered demonstrations →
proxy reward model on simulated labellers' comparisons (Bradley–Terry noise) → six methods against the proxy with
the SAME sample budget S = updates × batch_size responses each (default 60 × 64 = 3,840):

- best-of-n, n = 1 … 64, on S / 64 = 60 prompts (unbiased subset estimator);
- PPO, GRPO and RLOO at each KL coefficient (default β ∈ {0, 0.05}): 60 updates × 64 samples (GRPO/RLOO: 16 prompts
  × group of 4), evaluated every 5 updates on 32 prompts × 4 samples (KL from samples, proxy, gold);
- DPO and IPO at each β (default {0.05, 0.5}) on S / 2 = 1,920 proxy-labelled pairs of SFT samples (Bradley–Terry
  draw from the proxy), 2 epochs of 32 pairs per step, evaluated every 10 steps the same way.

Prints the per-method table (peak gold gain, KL and d at the peak, gold gain per nat and per nat^½ there, the fall
from the peak by the end, whether the proxy kept rising) and the three answers; writes the JSON to
benchmarks/results/rlhf_overopt_methods.json and the figure next to it (.png).

Sizes were cut from the old two-method study (22 min: best-of-n 64 prompts × n ≤ 256, PPO 80 updates × 64 at three β,
evaluation on 64 prompts × 4) to fit six methods in < 45 min on 2 cores: 60 updates instead of 80, n_max 64 instead of
256 (and 60 prompts, the equal budget, instead of 64), two β per family instead of three, 32 evaluation prompts
instead of 64. The old results stay in benchmarks/results/rlhf_overopt.json. Measured (one torch thread): 11.0 CPU-min
with the SFT policy and proxy RM already in the home (≈ 14 min alone from scratch); 28.6 min wall on the shared
2-core machine at a load of 8–10. On a loaded machine pass ``--threads 1``: two torch threads per process
oversubscribe the cores (a PPO update took 86 s instead of 6.5 s at a load of ~10).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _util import machine, write_json  # noqa: E402

from superalign.rlhf.overopt import LABELS, METHODS, OveroptJob, run_overopt  # noqa: E402


def _f(x, spec: str = "+.3f") -> str:
    return "n/a" if x is None else format(x, spec)


def table(summary: dict) -> str:
    """The README table: one row per method (its best β), Markdown."""
    head = ("| method | best β | peak gold gain | KL at peak (nats) | d at peak | gold gain / nat | gold gain / nat^½ "
            "| no-penalty run | over-optimizes | gold drop by the end | proxy rise after the gold peak |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for p in summary["methods"]:
        npb = p["no_penalty_beta"]
        free = "—" if p["method"] == "bon" else ("n/a" if npb is None else f"β={npb:g}")
        over = {None: "n/a", True: "yes", False: "no"}[p["no_penalty_overoptimized"]]
        rows.append(f"| {LABELS[p['method']]} | {'—' if p['best_beta'] is None else format(p['best_beta'], 'g')} | "
                    f"{_f(p['peak_gold_gain'])} | {_f(p['peak_kl'], '.2f')} | {_f(p['peak_d'], '.2f')} | "
                    f"{_f(p['gain_per_nat'], '.3f')} | {_f(p['gain_per_sqrt_nat'], '.3f')} | {free} | {over} | "
                    f"{_f(p['no_penalty_drop'], '.3f')} | {_f(p['no_penalty_proxy_rise'], '+.3f')} |")
    return "\n".join([head, *rows])


def runs_table(summary: dict) -> str:
    head = ("| method | β | peak gold gain | at | KL at peak | d at peak | gain / nat | final gold gain | drop | "
            "proxy rise | over-optimizes |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {LABELS[r['method']]} | {'—' if r['beta'] is None else format(r['beta'], 'g')} | "
            f"{_f(r['peak_gold_gain'])} | {r['peak_x']} | {_f(r['peak_kl'], '.2f')} | {_f(r['peak_d'], '.2f')} | "
            f"{_f(r['gain_per_nat'], '.3f')} | {_f(r['final_gold_gain'])} | {_f(r['drop_from_peak'], '.3f')} | "
            f"{_f(r['proxy_rise_after_peak'], '+.3f')} | {'yes' if r['overoptimized'] else 'no'} |"
            for r in summary["runs"]]
    return "\n".join([head, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--kl-coefs", type=float, nargs="+", default=[0.0, 0.05], help="β of the online RL runs")
    ap.add_argument("--dpo-betas", type=float, nargs="+", default=[0.05, 0.5], help="β of the DPO/IPO runs")
    ap.add_argument("--updates", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64, help="samples per online update (the budget's unit)")
    ap.add_argument("--n-prompts", type=int, default=32, help="evaluation prompts (4 samples each)")
    ap.add_argument("--n-max", type=int, default=64)
    ap.add_argument("--rm-prompts", type=int, default=3000,
                    help="comparisons the proxy reward model is trained on (fewer = a more exploitable proxy)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--home", help="run store (default: a fresh temporary folder)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: 3 updates of 16 samples, n ≤ 4, 4 evaluation "
                                                         "prompts, one β each")
    ap.add_argument("--out", default="benchmarks/results/rlhf_overopt_methods.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sizes = dict(updates=a.updates, batch_size=a.batch_size, n_prompts=a.n_prompts, n_max=a.n_max,
                 eval_every=max(1, a.updates // 12), dpo_eval_every=10, kl_coefs=a.kl_coefs, dpo_betas=a.dpo_betas)
    if a.quick:
        sizes |= dict(updates=3, batch_size=16, n_prompts=4, n_max=4, eval_every=1, dpo_eval_every=2,
                      kl_coefs=a.kl_coefs[:1], dpo_betas=a.dpo_betas[:1], dpo_batch_size=8, dpo_epochs=1,
                      eval_samples=1)
    home = Path(a.home) if a.home else Path(tempfile.mkdtemp(prefix="rlhf_overopt_"))
    t, cpu0 = time.perf_counter(), time.process_time()
    reward = "testbed-rm"
    if a.rm_prompts != 3000:
        from superalign.rlhf.jobs import RMJob, run_rm
        rm = run_rm(RMJob(home=str(home), n_prompts=a.rm_prompts, progress=False))
        reward = rm["artefacts"]["model"]
        print(f"proxy RM on {a.rm_prompts} comparisons: held-out accuracy {rm['metrics']['eval_acc']:.3f}, "
              f"agreement with gold {rm['metrics']['eval_gold_agreement']:.3f}")
    r = run_overopt(OveroptJob(home=str(home), reward=reward, methods=a.methods, progress=False, **sizes))
    wall = time.perf_counter() - t
    cpu = time.process_time() - cpu0  # every thread of this process
    m = r["metrics"]
    s = m["summary"]
    print(f"SFT policy: gold {m['sft_gold']:.3f}, proxy {m['sft_proxy']:.3f}; sample budget {m['budget']} responses "
          f"per method\n")
    for t_ in m["trajectories"]:
        b = "" if t_["beta"] is None else f" β={t_['beta']:g}"
        print(f"{LABELS[t_['method']]}{b}: {t_['x_name']} → (d, gold gain, proxy gain): "
              + ", ".join(f"{x}: ({d:.2f}, {g - t_['gold'][0]:+.3f}, {p - t_['proxy'][0]:+.2f})"
                          for x, d, g, p in zip(t_["x"], t_["d"], t_["gold"], t_["proxy"])))
    print("\n" + table(s) + "\n\n" + runs_table(s))
    print("\nfits (gain over SFT; bon: d(α − βd), the others: d(α − β log d), pooled over β):")
    for k, f in m["fits"].items():
        print(f"  {k:<12} α={f['alpha']:+.3f} β={f['beta']:+.3f} R²={f['r2']:.3f}")
    ans = s["answers"]
    print(f"\nhighest gold gain per nat at the peak: {ans['best_gain_per_nat']}; first to over-optimize without a "
          f"penalty: {ans['first_to_overoptimize']} (order {ans['overoptimize_ranking']}); group baseline: "
          f"{ans['group_baseline']}")
    if m.get("dpo_data"):
        print(f"DPO/IPO data: {m['dpo_data']}")
    print(f"wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min (this process)")
    out = Path(a.out)
    if a.quick:
        out = out.with_name(out.stem + "_quick.json")
    else:
        tmp = out.with_name(f".{out.stem}.png.tmp")
        shutil.copyfile(r["artefacts"]["plot"], tmp)
        os.replace(tmp, out.with_suffix(".png"))
    write_json(out, {"args": vars(a), "sizes": sizes, "wall_s": wall, "cpu_s": cpu, "machine": machine(),
                     "run": r["id"], "table_md": table(s), "runs_table_md": runs_table(s), **m})
    print(f"wrote {out}" + ("" if a.quick else f" and {out.with_suffix('.png')}"))


if __name__ == "__main__":
    main()
