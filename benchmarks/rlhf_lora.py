"""LoRA vs full finetuning of an RLHF policy: trainable parameters, peak memory and time per update.

    python benchmarks/rlhf_lora.py [--model smollm2] [--ranks 0 8] [--methods ppo online-dpo] [--updates 3] [--quick]

Each (method, rank) runs in a fresh child process (peak memory is that process's own): the policy, a frozen
reference and a reward model with a random head (speed and memory do not depend on what it scores) are loaded from
``--model``; ``--updates`` updates of ``superalign.rlhf.ppo.train_ppo`` (PPO, whose value model — a copy of the
reward model — is always trained in full) or ``superalign.rlhf.online_dpo.train_online_dpo`` (online DPO, the policy
alone) run; the first update is a warm-up and left out of the time per update. Peak memory: the process's maximum
resident set on a CPU (``ru_maxrss``; "training" is the part above what the loaded models already held), the
maximum allocated CUDA memory on a GPU. Prints a Markdown table and writes benchmarks/results/rlhf_lora.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine, write_json  # noqa: E402

PROMPTS = ["The food at this restaurant was", "My favourite thing about the hotel is", "The movie started with",
           "Yesterday the weather was", "The best way to learn is", "Our trip to the mountains was",
           "The service here is", "I think the book is"]


def child(a) -> dict:
    import torch

    import superalign.rlhf  # noqa: F401  (registers the testbed model name)
    from superalign.models.lm import load_lm
    from superalign.models.lora import apply_lora
    from superalign.rlhf.online_dpo import OnlineDPOConfig, train_online_dpo
    from superalign.rlhf.ppo import PPOConfig, train_ppo
    from superalign.rlhf.reward import load_reward_model
    from superalign.runs.ledger import param_count, trainable_count

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok, policy = load_lm(a.model, a.home, require_eos=False, device=device)
    _, ref = load_lm(a.model, a.home, require_eos=False, device=device)
    _, rm = load_reward_model(a.model, a.home, device=device)
    full = param_count(policy)
    policy = apply_lora(policy, a.rank)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prompts = (PROMPTS * 8)[:max(a.batch_size, 8)]
    times: list[float] = []
    hook = lambda u, m: times.append(time.perf_counter()) or {}  # noqa: E731  (called after every update)
    t0 = time.perf_counter()
    if a.method == "ppo":
        cfg = PPOConfig(updates=a.updates, batch_size=a.batch_size, minibatch_size=a.batch_size // 2, ppo_epochs=1,
                        lr=1e-5, response_len=a.response_len, reward_norm=False, eval_every=1, sample_every=0)
        train_ppo(policy, ref, rm, tok, prompts, cfg, eval_hook=hook, progress=False)
    else:
        cfg = OnlineDPOConfig(updates=a.updates, batch_size=a.batch_size, lr=1e-5, response_len=a.response_len,
                              eval_every=1, sample_every=0)
        train_online_dpo(policy, ref, rm, tok, prompts, cfg, eval_hook=hook, progress=False)
    steps = [b - a_ for a_, b in zip([t0] + times[:-1], times)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"method": a.method, "rank": a.rank, "params": full, "trainable": trainable_count(policy),
           "s_per_update": sum(steps[1:]) / max(len(steps) - 1, 1), "first_update_s": steps[0],
           "peak_rss_mb": peak, "training_rss_mb": peak - base_rss, "device": device}
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="policy/reference/reward backbone (smollm2, testbed, a path)")
    ap.add_argument("--home", default=None, help="run store folder for names built on first use (testbed)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[0, 8], help="LoRA ranks (0: full finetuning)")
    ap.add_argument("--methods", nargs="+", default=["ppo", "online-dpo"], choices=["ppo", "online-dpo"])
    ap.add_argument("--updates", type=int, default=3, help="updates per run (the first is a warm-up)")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per update")
    ap.add_argument("--response-len", type=int, default=16, help="maximum new tokens per response")
    ap.add_argument("--quick", action="store_true", help="CI-sized: 2 updates of 4 prompts, 4 tokens")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rlhf_lora.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--method", default="ppo", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.updates, a.batch_size, a.response_len = 2, 4, 4
    if a.child:
        print(json.dumps(child(a)))
        return
    rows = []
    for method in a.methods:
        for rank in a.ranks:
            cmd = [sys.executable, __file__, "--child", "--model", a.model, "--rank", str(rank), "--method", method,
                   "--updates", str(a.updates), "--batch-size", str(a.batch_size), "--response-len",
                   str(a.response_len)] + (["--home", a.home] if a.home else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                sys.exit(f"{method} rank {rank} failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    mem = "peak_cuda_mb" if rows and "peak_cuda_mb" in rows[0] else "training_rss_mb"
    print(f"| method | LoRA rank | trainable params | s / update | peak process RSS (MB) | {mem} |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['rank'] or 'full'} | {r['trainable']:,} ({r['trainable'] / r['params']:.2%}) | "
              f"{r['s_per_update']:.2f} | {r['peak_rss_mb']:.0f} | {r[mem]:.0f} |")
    out = Path(a.out)
    if a.quick:
        out = out.with_name(out.stem + "_quick.json")
    write_json(out, {"config": {k: v for k, v in vars(a).items() if k not in ("child", "rank", "method")},
                     "machine": machine(), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
