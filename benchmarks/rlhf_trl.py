"""Reward-model and DPO training side by side with TRL 1.16, same tiny model, same token sequences, one run.

    pip install -e ".[bench]"          # TRL 1.16 is a benchmark-only dependency
    python benchmarks/rlhf_trl.py [--pairs 2000] [--batch-size 32] [--quick]

Model: the testbed's tiny GPT-2 (4 blocks × 128, word-level tokenizer; pretrained once, cached). Data: preference
pairs from the review grammar, chosen = higher exact gold reward. Both trainers see identical token sequences —
TRL gets them pre-tokenized (`chosen_ids`/`rejected_ids`, and `prompt_ids` for DPO) — so what differs is only the
trainer: TRL's RewardTrainer/DPOTrainer on the HF Trainer (bf16=False, gradient_checkpointing=False, CPU) vs
superalign's loops. Same learning rate, batch size, one epoch, linear decay without warmup, AdamW; gradient
clipping off for the reward model (our RM trainer does not clip) and at 1.0 for DPO (both). Expected differences:
data order (each side's own seeded shuffle) and the scalar head's initialisation (TRL: N(0, 0.02), no bias;
ours: N(0, 1/sqrt(d+1)) with a bias), so loss curves are compared after a 10-step moving average.

Prints a table (trainer × side: steps, first/last loss, mean |Δ| of the smoothed curves, tokens, wall, tokens/s,
speed-up) and writes JSON and a PNG of the loss curves to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _util import machine, write_json  # noqa: E402

from superalign.models.lm import encode_prompts, load_lm  # noqa: E402
from superalign.rlhf.data import preferences_to_rankings  # noqa: E402
from superalign.rlhf.dpo import DPOConfig, train_dpo  # noqa: E402
from superalign.rlhf.reward import RewardTrainConfig, encode_completion, load_reward_model, train_reward_model  # noqa: E402
from superalign.rlhf.testbed import GoldReward, sample_sentence, split_sentence, testbed_lm_path  # noqa: E402


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    rng, gold, out = np.random.default_rng(seed), GoldReward(), []
    while len(out) < n:
        p, a = split_sentence(sample_sentence(rng))
        _, b = split_sentence(sample_sentence(rng))
        ga, gb = gold(p, a), gold(p, b)
        if ga != gb:
            out.append({"prompt": p, "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
    return out


def smooth(x: list[float], k: int = 10) -> np.ndarray:
    x = np.asarray(x, float)
    return np.convolve(x, np.ones(k) / k, mode="valid") if len(x) >= k else x


def curve_gap(a: list[float], b: list[float]) -> float:
    n = min(len(a), len(b))
    sa, sb = smooth(a[:n]), smooth(b[:n])
    return float(np.mean(np.abs(sa - sb)))


def trl_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]


def _trl_args(cls, out: str, a, **kw):
    return cls(output_dir=out, per_device_train_batch_size=a.batch_size, learning_rate=a.lr_rm if cls.__name__ ==
               "RewardConfig" else a.lr_dpo, num_train_epochs=1, lr_scheduler_type="linear", warmup_steps=0,
               weight_decay=0.0, logging_steps=1, report_to="none", bf16=False, gradient_checkpointing=False,
               use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, save_strategy="no",
               disable_tqdm=True, max_length=None, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr-rm", type=float, default=3e-4)
    ap.add_argument("--lr-dpo", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--home", default=os.environ.get("SUPERALIGN_HOME",
                                                     str(Path(tempfile.gettempdir()) / "superalign_bench")))
    ap.add_argument("--quick", action="store_true", help="256 pairs")
    ap.add_argument("--out", default="benchmarks/results/rlhf_vs_trl.json")
    a = ap.parse_args()
    if a.quick:
        a.pairs = 256
    torch.set_num_threads(2)
    try:
        import datasets
        import trl
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PrinterCallback
        from transformers.utils import logging as hf_logging
    except ImportError:
        sys.exit("this benchmark needs TRL: pip install -e '.[bench]'")
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    path = str(testbed_lm_path(a.home, progress=False))
    pairs = make_pairs(a.pairs)
    tok, _ = load_lm(path)
    prompt_ids = encode_prompts(tok, [p["prompt"] for p in pairs])
    # the exact sequences our trainers build: [eos as BOS] + prompt + completion + [eos]
    chosen = [encode_completion(tok, p, r["chosen"], 512) for p, r in zip(prompt_ids, pairs)]
    rejected = [encode_completion(tok, p, r["rejected"], 512) for p, r in zip(prompt_ids, pairs)]
    tokens = int(sum(map(len, chosen)) + sum(map(len, rejected)))
    results, curves = {}, {}
    tmp = tempfile.mkdtemp(prefix="rlhf_trl_")

    # ---- reward model: ours in TRL's batch order (checks the curves match), then ours with length grouping
    for side, grouped in (("same", False), ("ours", True)):
        torch.manual_seed(0)
        _, rm = load_reward_model(path)
        fit = train_reward_model(rm, tok, preferences_to_rankings(pairs),
                                 RewardTrainConfig(epochs=1, batch_size=a.batch_size, lr=a.lr_rm, normalize=False,
                                                   group_by_length=grouped), progress=False)
        curves[f"rm_{side}"] = fit.losses
        results[f"rm_{side}"] = {"wall_s": fit.wall_s, "tokens": fit.tokens}
        assert fit.tokens == tokens, (fit.tokens, tokens)

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    ds = datasets.Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    tr = trl.RewardTrainer(model=model, args=_trl_args(trl.RewardConfig, f"{tmp}/rm", a, max_grad_norm=0.0),
                           train_dataset=ds, processing_class=tok)
    tr.remove_callback(PrinterCallback)
    t = time.perf_counter()
    tr.train()
    results["rm_trl"] = {"wall_s": time.perf_counter() - t, "tokens": tokens}
    curves["rm_trl"] = trl_losses(tr)

    # ---- DPO
    for side, grouped in (("same", False), ("ours", True)):
        _, policy = load_lm(path)
        ref = copy.deepcopy(policy)
        torch.manual_seed(0)
        dfit = train_dpo(policy, ref, tok, pairs, DPOConfig(beta=a.beta, epochs=1, batch_size=a.batch_size,
                                                            lr=a.lr_dpo, group_by_length=grouped), progress=False)
        curves[f"dpo_{side}"] = dfit.losses
        results[f"dpo_{side}"] = {"wall_s": dfit.wall_s, "tokens": dfit.tokens}

    torch.manual_seed(0)
    pol = AutoModelForCausalLM.from_pretrained(path)
    refm = AutoModelForCausalLM.from_pretrained(path)
    # TRL 1.16's DPOTrainer tokenizes text itself: the word-level tokenizer splits on whitespace and special tokens,
    # so "<eos> prompt" + " completion" (+ the EOS TRL appends) gives exactly our sequences — checked below.
    dds = datasets.Dataset.from_dict({"prompt": [f"{tok.eos_token} {r['prompt']}" for r in pairs],
                                      "chosen": [" " + r["chosen"] for r in pairs],
                                      "rejected": [" " + r["rejected"] for r in pairs]})
    dtr = trl.DPOTrainer(model=pol, ref_model=refm, args=_trl_args(trl.DPOConfig, f"{tmp}/dpo", a, beta=a.beta,
                                                                    max_grad_norm=1.0),
                         train_dataset=dds, processing_class=tok)
    dtr.remove_callback(PrinterCallback)
    seen = dtr.train_dataset[0]
    trl_seq = list(seen.get("prompt_ids", [])) + list(seen.get("chosen_ids", seen.get("completion_ids", [])))
    if trl_seq and trl_seq != chosen[0]:
        print(f"warning: TRL's DPO tokens differ from ours: {trl_seq} vs {chosen[0]}", file=sys.stderr)
    t = time.perf_counter()
    dtr.train()
    results["dpo_trl"] = {"wall_s": time.perf_counter() - t, "tokens": tokens}
    curves["dpo_trl"] = trl_losses(dtr)

    # ---- table
    rows = []
    print(f"{a.pairs} pairs, batch {a.batch_size}, {tokens} tokens per epoch (chosen + rejected), 2 threads\n")
    print(f"{'trainer':<8}{'side':<28}{'steps':>6}{'loss first':>11}{'loss last10':>12}{'|Δ| vs TRL':>11}"
          f"{'wall s':>8}{'tokens/s':>10}{'speed-up':>9}")
    labels = (("same", "superalign, TRL's order"), ("ours", "superalign (length-grouped)"), ("trl", "TRL 1.16"))
    for name in ("rm", "dpo"):
        tps = {s_: results[f"{name}_{s_}"]["tokens"] / results[f"{name}_{s_}"]["wall_s"] for s_, _ in labels}
        for side, label in labels:
            c = curves[f"{name}_{side}"]
            r = results[f"{name}_{side}"]
            # same order: step-by-step gap; length-grouped: gap of the 10-step moving averages
            gap = (float(np.mean(np.abs(np.array(c) - np.array(curves[f"{name}_trl"][:len(c)])))) if side == "same"
                   else curve_gap(c, curves[f"{name}_trl"]) if side == "ours" else 0.0)
            row = {"trainer": name, "side": label, "steps": len(c), "loss_first": c[0],
                   "loss_last10": float(np.mean(c[-10:])), "gap_vs_trl": gap, "wall_s": r["wall_s"],
                   "tokens_per_s": tps[side], "speedup": tps[side] / tps["trl"]}
            rows.append(row)
            print(f"{name:<8}{label:<28}{len(c):>6}{c[0]:>11.4f}{row['loss_last10']:>12.4f}{gap:>11.4f}"
                  f"{r['wall_s']:>8.1f}{tps[side]:>10.0f}{row['speedup']:>8.2f}×")
    _plot(curves, Path(a.out).with_suffix(".png") if not a.quick else None)
    out = Path(a.out) if not a.quick else Path(a.out).with_name(Path(a.out).stem + "_quick.json")
    write_json(out, {"args": vars(a), "trl": trl.__version__, "machine": machine(), "rows": rows, "curves": curves})
    print(f"\nwrote {out}")


def _plot(curves: dict, path: Path | None) -> None:
    if path is None:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, name, title in zip(axes, ("rm", "dpo"), ("reward model (Bradley–Terry)", "DPO (sigmoid, β=0.1)")):
        for side, label in (("same", "superalign, TRL's order"), ("ours", "superalign, length-grouped"),
                            ("trl", "TRL 1.16")):
            c = curves[f"{name}_{side}"]
            ax.plot(c, alpha=0.2)
            ax.plot(np.arange(len(smooth(c))) + 9, smooth(c), label=f"{label} (10-step mean)")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
