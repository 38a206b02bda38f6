#!/usr/bin/env python
"""GPU check: every pillar briefly in bf16 on random-weight causal LMs of real shapes, CPU-vs-CUDA agreement, and a
table of tokens/s, peak memory and MFU against the targets of issue 12.

    python benchmarks/gpu_check.py                                  # a CUDA machine: all sizes, < 8 min on an H100/H200
    python benchmarks/gpu_check.py --device cpu --sizes tiny --quick   # the CPU smoke run (what the tests run)

Nothing is downloaded and no weights are shipped: each model is built from a ``transformers`` config class with
random weights (on the GPU when there is one), saved with ``save_pretrained`` into a temporary folder, and every
pillar loads it from there through its normal loader (``hf:<folder>``), the real code path. The tokenizer is a
byte-level BPE trained at run time with ``tokenizers`` on a synthetic corpus (token ids well inside every vocab).

Shapes (from each model's public ``config.json`` on the Hugging Face hub):

- ``smollm2-135m``: HuggingFaceTB/SmolLM2-135M (LlamaForCausalLM): hidden_size 576, num_hidden_layers 30,
  num_attention_heads 9, num_key_value_heads 3, intermediate_size 1536, vocab_size 49152, rope_theta 100000,
  rms_norm_eps 1e-5, tie_word_embeddings true.
- ``qwen2.5-0.5b``: Qwen/Qwen2.5-0.5B (Qwen2ForCausalLM): hidden_size 896, num_hidden_layers 24,
  num_attention_heads 14, num_key_value_heads 2, intermediate_size 4864, vocab_size 151936, rope_theta 1e6,
  rms_norm_eps 1e-6, tie_word_embeddings true.
- ``qwen2.5-1.5b``: Qwen/Qwen2.5-1.5B (Qwen2ForCausalLM): hidden_size 1536, num_hidden_layers 28,
  num_attention_heads 12, num_key_value_heads 2, intermediate_size 8960, vocab_size 151936, rope_theta 1e6,
  rms_norm_eps 1e-6, tie_word_embeddings true.
- ``tiny``: a 2-layer Llama (hidden 64) for the CPU smoke run and the agreement check under ``--quick``.

Per size, the real jobs run through their Python APIs with ``device``/``dtype`` set: ``rlhf`` SFT, reward model and
DPO on synthetic prompt/completion and preference files; ``interp`` activation cache of a mid-layer over synthetic
texts, then a TopK SAE on that cache (with CE loss recovered on a few held-out texts); ``w2s`` a one-cell sweep
(bag-of-words supervisor → the causal LM as a fully finetuned student) on a synthetic file task; ``oversight`` the
sparse-pixel judge (its own small convnet on scikit-learn digits, once, not per LM size).

Numbers are read from each run's stored ``compute`` record (superalign/runs/ledger.py): FLOPs (per stage), tokens,
wall and device seconds. Two MFUs are shown: **fit** = the FLOPs of the training (or caching) stages over the
trainer's own wall time (what the targets are about: a trainer's throughput), and **run** = all of the run's FLOPs
over the whole run's wall time (model loading and saving included). Where a run recorded no FLOPs the script's own
estimate (6·params·tokens for training, 2·params·tokens forward) is used and marked "(estimated here)". Peak memory
is ``torch.cuda.max_memory_allocated`` reset before each stage. The SAE is measured against the bf16 matmul peak
this script measures with a large ``torch.matmul`` (its dense encoder is one matmul), the LM stages against the
device's data-sheet peak (``GPU_PEAK_FLOPS`` in the ledger).

Targets (issue 12, bf16 on an H100/H200): SFT/RM/DPO ≥ 35% MFU at 0.5B; activation caching ≥ 50% MFU; SAE training
≥ 30% of the matmul peak. CPU-vs-CUDA agreement: the same SFT and SAE jobs for a few steps on the CPU in fp32 and on
CUDA in fp32 (loss curves within 1e-3 relative) and bf16 (within 2e-2).

Status: written and tested on the CPU only (``--device cpu --sizes tiny --quick``, tests/test_gpu_check.py); it has
not yet run on a GPU, so the CUDA sizing (steps chosen for ~10 s of work per stage) is untested.

Stages that would overrun ``--time-budget-s`` are skipped with a note. Results go to ``--out`` (JSON, atomically)
and a Markdown table ready for the README is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub: every model and tokenizer is built here
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHAPES: dict[str, tuple[str, dict]] = {
    "tiny": ("llama", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, vocab_size=2048, tie_word_embeddings=True)),
    "smollm2-135m": ("llama", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                                   rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                                   tie_word_embeddings=True)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                   num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                                   rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
                                   tie_word_embeddings=True)),
    "qwen2.5-1.5b": ("qwen2", dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                                   num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
                                   rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
                                   tie_word_embeddings=True)),
}
GPU_SIZES = ("qwen2.5-0.5b", "smollm2-135m", "qwen2.5-1.5b")
"""default sizes on CUDA, in the order they run: the size the targets name first"""
PILLARS = ("rlhf", "interp", "w2s", "oversight")
TOKENIZER_VOCAB = 1000
"""BPE vocabulary trained here: below every shape's vocab_size, so every id is valid for every model"""

TARGETS = {  # (stage, size or None for any size) → (MFU measure, threshold)
    ("rlhf-sft", "qwen2.5-0.5b"): ("mfu_fit", 0.35),
    ("rlhf-rm", "qwen2.5-0.5b"): ("mfu_fit", 0.35),
    ("rlhf-dpo", "qwen2.5-0.5b"): ("mfu_fit", 0.35),
    ("interp-cache", None): ("mfu_fit", 0.50),
    ("interp-sae", None): ("matmul_frac", 0.30),
}
FIT_STAGES = {  # the ledger stages that run inside each trainer's own wall time
    "rlhf-sft": ("train",), "rlhf-rm": ("train",), "rlhf-dpo": ("train", "reference"),
    "interp-cache": ("cache",), "interp-sae": ("sae-train",), "oversight-judge": ("train",),
}
AGREE_TOL = {"fp32": 1e-3, "bf16": 2e-2}
"""largest relative difference of a loss-curve point between CUDA and CPU fp32, per CUDA precision"""


# ----------------------------------------------------------------------------- synthetic data and models


class Words:
    """A deterministic pseudo-English vocabulary (syllable words) for synthetic texts of known length."""

    def __init__(self, seed: int = 0, n_words: int = 3000):
        rng = np.random.default_rng(seed)
        syl = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["th", "sh", "qu", "an", "er", "on"]
        self.words = np.array(sorted({"".join(rng.choice(syl, rng.integers(1, 4))) for _ in range(n_words)}))
        self.rng = rng

    def text(self, n: int, marker: str | None = None) -> str:
        w = list(self.words[self.rng.integers(0, len(self.words), n)])
        if marker is not None:
            w[int(self.rng.integers(0, n))] = marker
        return " ".join(w)


def build_tokenizer(words: Words, folder: Path):
    """A byte-level BPE tokenizer trained on the synthetic corpus, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([words.text(200) for _ in range(300)], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return tok


def build_model(size: str, folder: Path, tok, device: str, n_layers: int | None = None) -> int:
    """A random-weight causal LM of ``size``'s shape saved to ``folder`` (weights initialised on ``device``: the
    GPU builds a 1.5B model in a second). Returns its parameter count (tied embeddings once)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    family, shape = SHAPES[size]
    shape = dict(shape, **({"num_hidden_layers": n_layers} if n_layers else {}))
    cls = LlamaConfig if family == "llama" else Qwen2Config
    cfg = cls(**shape, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    del model
    if cuda:
        torch.cuda.empty_cache()
    return n


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- plan: how much work per stage


class Plan:
    """Sizes of every stage: on CUDA chosen from the measured matmul peak so that each training stage does about
    ``stage_s`` seconds of work at a modest 30% of peak (compute-bound batches: 16 × 512 tokens for SFT); on the CPU
    a few tiny steps."""

    def __init__(self, cuda: bool, quick: bool, peak: float):
        self.cuda, self.quick, self.peak = cuda, quick, peak
        self.stage_s = 4.0 if quick else 10.0
        self.seq = 512 if cuda else 48
        self.batch = 16 if cuda else 4
        self.w2s_len = 128 if cuda else 32
        self.w2s_batch = 32 if cuda else 8

    def steps(self, flops_per_step: float) -> int:
        if not self.cuda:
            return 2 if self.quick else 4
        return int(np.clip(round(self.stage_s * 0.3 * self.peak / flops_per_step), 3 if self.quick else 10, 400))

    def cache_texts(self, n_params: int) -> int:
        if not self.cuda:
            return 8
        # forward only, capped at 2^20 tokens: the cache is written to disk (bf16, d × 2 bytes per token)
        tokens = min(self.stage_s * 0.5 * self.peak / (2 * n_params), 2 ** 18 if self.quick else 2 ** 20)
        return max(64, int(tokens // self.seq))

    def sae(self, d: int, cache_tokens: int) -> tuple[int, int, int]:
        """(n_latents, k, epochs)"""
        if not self.cuda:
            return 4 * d, 8, 1
        n = 64 * 1024 if d >= 512 else 32 * 1024
        epochs = math.ceil(self.stage_s * 0.3 * self.peak / (2 * d * n) / max(cache_tokens, 1))
        return n, 32, int(np.clip(epochs, 1, 12))  # per-step overhead grows with the steps: capped


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """Measured matmul FLOP/s on ``device`` (8192² bf16 on a GPU; 512² on the CPU, where it only scales plans)."""
    n = 8192 if device.startswith("cuda") else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while reps < 5 or time.perf_counter() - t0 < 0.5:
        a @ b
        reps += 1
    sync(device)
    return 2.0 * n ** 3 * reps / (time.perf_counter() - t0)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- one stage = one real job


class Checker:
    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.device = args.device
        self.cuda = self.device.startswith("cuda")
        self.dtype = "bf16" if self.cuda else "fp32"
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.skipped: list[str] = []
        self.words = Words(0)
        self.tok = build_tokenizer(self.words, work / "tokenizer")
        self.matmul_peak = matmul_peak(self.device, torch.bfloat16 if self.cuda else torch.float32)
        self.plan = Plan(self.cuda, args.quick, self.matmul_peak)
        self.models: dict[str, tuple[Path, int]] = {}
        self.overrun: list[float] = []
        """each finished stage's seconds over its estimate"""
        self.home = str(work / "home")

    # --- helpers

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def model(self, size: str, n_layers: int | None = None, device: str | None = None) -> tuple[Path, int]:
        key = f"{size}@{n_layers}" if n_layers else size
        if key not in self.models:
            folder = self.work / "models" / key
            n = build_model(size, folder, self.tok, device or self.device, n_layers)
            self.models[key] = (folder, n)
        return self.models[key]

    def fits(self, what: str, est_s: float) -> bool:
        # the estimates are scaled by how the stages so far compared with theirs (a slower GPU, a busier disk)
        est_s *= max(0.5, float(np.median(self.overrun))) if self.overrun else 1.0
        if self.elapsed() + est_s > self.args.time_budget_s:
            self.skipped.append(f"{what}: skipped, it would exceed --time-budget-s {self.args.time_budget_s:g} "
                                f"({self.elapsed():.0f} s used, ~{est_s:.0f} s needed)")
            print(f"[gpu_check] {self.skipped[-1]}", flush=True)
            return False
        return True

    def peak_for(self, compute: dict) -> float | None:
        from superalign.runs.ledger import cpu_peak_flops, gpu_peak_flops

        if compute.get("peak_flops_per_s"):
            return float(compute["peak_flops_per_s"])
        if self.cuda:
            return gpu_peak_flops(torch.cuda.get_device_name(), self.dtype)
        return cpu_peak_flops(self.dtype)

    def stage(self, pillar: str, stage: str, size: str, est_s: float, fn) -> dict | None:
        """Run ``fn() -> (record, fit_wall_s, estimate)`` (a stored run, the trainer's own wall time, the script's
        FLOPs estimate) and add its row; a failure is a row with the error, not the end of the check."""
        if not self.fits(f"{stage} {size}", est_s):
            return None
        print(f"[gpu_check] {stage} {size} ({self.elapsed():.0f} s so far)", flush=True)
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        row = {"pillar": pillar, "stage": stage, "size": size, "device": self.device, "dtype": self.dtype}
        try:
            record, fit_wall, estimate = fn()
            row.update(self.numbers(stage, record, fit_wall, estimate))
        except Exception as e:  # one broken pillar must not hide the others' numbers
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            row["traceback"] = traceback.format_exc(limit=6)
            print(f"[gpu_check] {stage} {size} FAILED: {row['error']}", flush=True)
        row["stage_s"] = time.perf_counter() - t
        row["estimated_s"] = est_s
        self.overrun.append(row["stage_s"] / est_s)
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30 if self.cuda else None
        row.update(self.verdict(row))
        self.rows.append(row)
        return row

    def numbers(self, stage: str, record: dict, fit_wall: float | None, estimate: float | None) -> dict:
        compute = record.get("compute") or {}
        metrics = record.get("metrics") or {}
        flops_total, per_stage = compute.get("flops_total"), compute.get("flops") or {}
        note = ""
        fit_flops = sum(per_stage.get(s, 0.0) for s in FIT_STAGES.get(stage, ())) or None
        if flops_total is None and estimate is not None:
            flops_total, fit_flops, note = estimate, estimate, "FLOPs estimated here"
        elif fit_flops is None:
            fit_flops = flops_total
        tokens = compute.get("tokens") or metrics.get("tokens")
        wall = compute.get("wall_s")
        fit_wall = fit_wall or wall
        peak = self.peak_for(compute)
        out = {"tokens": tokens, "run_wall_s": wall, "fit_wall_s": fit_wall, "flops_total": flops_total,
               "flops_fit": fit_flops, "flops_by_stage": per_stage, "peak_flops_per_s": peak,
               "tokens_per_s": metrics.get("tokens_per_s") or (tokens / fit_wall if tokens and fit_wall else None),
               "mfu_run": compute.get("mfu") if compute.get("mfu") is not None else (
                   flops_total / (wall * peak) if flops_total and wall and peak else None),
               "mfu_fit": fit_flops / (fit_wall * peak) if fit_flops and fit_wall and peak else None,
               "flops_per_s_fit": fit_flops / fit_wall if fit_flops and fit_wall else None, "note": note,
               "cached": bool(record.get("cached"))}
        if stage == "interp-sae" and out["flops_per_s_fit"]:
            out["matmul_frac"] = out["flops_per_s_fit"] / self.matmul_peak
        return out

    def verdict(self, row: dict) -> dict:
        target = TARGETS.get((row["stage"], row["size"])) or TARGETS.get((row["stage"], None))
        if target is None:
            return {"target": None, "result": "error" if "error" in row else "—"}
        measure, threshold = target
        text = f"MFU fit ≥ {threshold:.0%}" if measure == "mfu_fit" else f"≥ {threshold:.0%} of matmul peak"
        if "error" in row:
            return {"target": text, "result": "error"}
        if not self.cuda:
            return {"target": text, "result": "n/a (cpu)"}
        value = row.get(measure)
        return {"target": text, "result": "n/a" if value is None else ("PASS" if value >= threshold else "BELOW")}

    # --- the pillars

    def lm_est(self, size: str) -> float:
        """Rough seconds of one LM stage (work + loading and saving; + building the model the first time), for the
        time budget."""
        build = {"tiny": 1, "smollm2-135m": 3, "qwen2.5-0.5b": 5, "qwen2.5-1.5b": 10}[size]
        load = {"tiny": 3, "smollm2-135m": 8, "qwen2.5-0.5b": 12, "qwen2.5-1.5b": 25}[size]
        return self.plan.stage_s + load + (0 if size in self.models else build)

    def sft_rows(self, n: int, seq: int) -> list[dict]:
        # completions longer than the context: the trainer truncates them, so every row is exactly ``seq`` tokens
        return [{"prompt": self.words.text(max(4, seq // 16)), "completion": self.words.text(seq)} for _ in range(n)]

    def pair_rows(self, n: int, seq: int) -> list[dict]:
        return [{"prompt": self.words.text(max(4, seq // 16)), "chosen": self.words.text(seq),
                 "rejected": self.words.text(seq)} for _ in range(n)]

    def run_rlhf(self, size: str) -> None:
        from superalign.rlhf.jobs import DPOJob, RMJob, SFTJob, run_dpo, run_rm, run_sft

        p = self.plan
        common = dict(home=self.home, progress=False, device=self.device, dtype=self.dtype)

        def sft():
            folder, n_params = self.model(size)
            steps = p.steps(6 * n_params * p.batch * p.seq)
            data = write_jsonl(self.work / f"sft-{size}.jsonl", self.sft_rows(steps * p.batch, p.seq))
            r = run_sft(SFTJob(policy=f"hf:{folder}", data=str(data), batch_size=p.batch, max_len=p.seq, epochs=1,
                               lr=1e-5, **common))
            self.drop(r)
            return r, r["metrics"]["wall_s"], 6.0 * n_params * r["metrics"]["tokens"]

        def rm():
            folder, n_params = self.model(size)
            pairs = max(2, p.batch // 2)  # 2 sequences per pair: the same tokens per step as SFT
            steps = p.steps(6 * n_params * 2 * pairs * p.seq)
            data = write_jsonl(self.work / f"rm-{size}.jsonl", self.pair_rows(steps * pairs + 2, p.seq))
            r = run_rm(RMJob(base=f"hf:{folder}", data=str(data), batch_size=pairs, max_len=p.seq, eval_frac=0.01,
                             lr=1e-5, **common))
            self.drop(r)
            return r, r["metrics"]["wall_s"], 6.0 * n_params * r["metrics"]["tokens"]

        def dpo():
            folder, n_params = self.model(size)
            pairs = max(2, p.batch // 2)
            steps = p.steps(8 * n_params * 2 * pairs * p.seq)  # policy forward+backward, reference forward
            data = write_jsonl(self.work / f"dpo-{size}.jsonl", self.pair_rows(steps * pairs, p.seq))
            r = run_dpo(DPOJob(policy=f"hf:{folder}", data=str(data), batch_size=pairs, max_len=p.seq, epochs=1,
                               lr=1e-6, **common))
            self.drop(r)
            return r, r["metrics"]["wall_s"], 8.0 * n_params * r["metrics"]["tokens"]

        for name, fn in (("rlhf-sft", sft), ("rlhf-rm", rm), ("rlhf-dpo", dpo)):
            self.stage("rlhf", name, size, self.lm_est(size), fn)

    def drop(self, record: dict) -> None:
        """Delete a finished run's saved model (GiBs at 1.5B): the numbers are in the record."""
        for key in ("model",):
            path = (record.get("artefacts") or {}).get(key)
            if path and Path(path).is_dir() and str(self.work) in str(Path(path).resolve()):
                shutil.rmtree(path, ignore_errors=True)

    def run_interp(self, size: str) -> None:
        from superalign.interp.jobs import CacheJob, SAEJob, run_cache, run_sae

        p = self.plan
        n_layers, d = SHAPES[size][1]["num_hidden_layers"], SHAPES[size][1]["hidden_size"]
        common = dict(home=self.home, progress=False, device=self.device, dtype=self.dtype)
        state: dict = {}

        def cache():
            folder, n_params = self.model(size)
            n_texts = p.cache_texts(n_params)
            texts = write_jsonl(self.work / f"texts-{size}.jsonl",
                                [{"text": self.words.text(p.seq)} for _ in range(n_texts)])
            r = run_cache(CacheJob(model=f"hf:{folder}", texts=str(texts), hook=f"layers.{n_layers // 2}",
                                   max_length=p.seq, batch_size=32 if self.cuda else 4, **common))
            state["cache"], state["tokens"] = r["artefacts"]["cache"], r["metrics"]["tokens"]
            return r, None, 2.0 * n_params * r["metrics"]["tokens"]

        def sae():
            if "cache" not in state:
                raise RuntimeError("no activation cache (the cache stage failed or was skipped)")
            n_latents, k, epochs = p.sae(d, state["tokens"])
            r = run_sae(SAEJob(cache=state["cache"], n_latents=n_latents, k=k, epochs=epochs,
                               batch_size=4096 if self.cuda else 64, lr=1e-4, eval_frac=0.02,
                               loss_recovered_texts=8 if self.cuda else 2, **common))
            m = r["metrics"]
            tokens = int(m["n_train"]) * epochs
            return r, m["wall_s"], (2.0 * d * n_latents + 10.0 * k * d) * tokens

        self.stage("interp", "interp-cache", size, self.lm_est(size), cache)
        self.stage("interp", "interp-sae", size, self.plan.stage_s + 10, sae)

    def run_w2s(self, size: str) -> None:
        from superalign.w2s import W2SConfig, sweep

        p = self.plan

        def w2s():
            folder, n_params = self.model(size)
            # two full finetunes (ceiling on gold labels, student on weak labels) of ~stage_s/2 each
            per = p.steps(6 * n_params * p.w2s_batch * p.w2s_len) * p.w2s_batch
            # the student trains on the weak-label split (0.4 of the rows); w2s needs at least 40 rows
            n = int(np.clip(per / 0.4, 60, 6000)) if self.cuda else 60
            rng = np.random.default_rng(1)
            rows = []
            for i in range(n):
                label = i % 2
                marker = ("alpha" if label else "omega") if rng.random() < 0.8 else None
                rows.append({"text": self.words.text(p.w2s_len, marker), "label": label})
            import pandas as pd

            task = self.work / f"w2s-{size}.csv"
            pd.DataFrame(rows).to_csv(task, index=False)
            res = sweep(W2SConfig(task=f"file:{task}", text_col=["text"], label_col="label", weak=["bow"],
                                  strong=[f"hf:{folder}"], loss=["xent"], seed=[0], mode="full", ft_epochs=1,
                                  batch_size=p.w2s_batch, max_length=p.w2s_len, max_examples=n, n_boot=50,
                                  home=self.home, progress=False, device=self.device, dtype=self.dtype))
            rec = res.records[0]
            c = rec.get("compute") or {}
            return rec, None, (6.0 * n_params * c["tokens"] if c.get("tokens") else None)

        self.stage("w2s", "w2s-full", size, 2 * self.lm_est(size), w2s)

    def run_oversight(self) -> None:
        from superalign.oversight.jobs import TrainJudgeJob, run_train_judge

        def judge():
            r = run_train_judge(TrainJudgeJob(dataset="digits", epochs=2 if self.args.quick else 20,
                                              batch_size=128, max_train=256 if not self.cuda else 0,
                                              max_test=256 if not self.cuda else 0, home=self.home, progress=False,
                                              device=self.device, dtype=self.dtype))
            return r, r["metrics"]["wall_s"], None

        self.stage("oversight", "oversight-judge", "convnet", 10, judge)

    # --- CPU vs CUDA

    def agreement(self, runs: tuple[tuple[str, str], ...] | None = None) -> list[dict]:
        """The same SFT and SAE jobs on CPU fp32 and on CUDA fp32/bf16: loss curves compared step by step.
        ``runs``: (device, dtype) pairs, the first the reference (default: cpu fp32, then CUDA fp32 and bf16)."""
        if runs is None:
            if not self.cuda:
                return [{"check": "cpu-vs-cuda", "result": "skipped: no CUDA"}]
            runs = (("cpu", "fp32"), (self.device, "fp32"), (self.device, "bf16"))
        if not self.fits("cpu-vs-cuda agreement", 40):
            return [{"check": "cpu-vs-cuda", "result": "skipped: time budget"}]
        from superalign.interp.jobs import CacheJob, SAEJob, run_cache, run_sae
        from superalign.rlhf.jobs import SFTJob, run_sft

        size, layers = ("tiny", None) if self.args.quick or not self.cuda else ("smollm2-135m", 4)
        folder, _ = self.model(size, layers, device="cpu")  # fp32 weights: both devices start from the same ones
        small = size == "tiny"  # a few steps each: the CPU side is the slow one
        data = write_jsonl(self.work / "agree-sft.jsonl", self.sft_rows(12 if small else 24, 64))
        texts = write_jsonl(self.work / "agree-texts.jsonl",
                            [{"text": self.words.text(64)} for _ in range(24 if small else 48)])
        out = []
        curves: dict[str, dict] = {"sft": {}, "sae": {}}
        try:
            for dev, dt in runs:
                r = run_sft(SFTJob(policy=f"hf:{folder}", data=str(data), batch_size=4, max_len=64, epochs=1,
                                   lr=1e-3, home=self.home, progress=False, device=dev, dtype=dt))
                curves["sft"][(dev, dt)] = r["metrics"]["losses"]
            cache = run_cache(CacheJob(model=f"hf:{folder}", texts=str(texts), hook="layers.1", max_length=64,
                                       batch_size=8, home=self.home, progress=False, device="cpu", dtype="fp32"))
            for dev, dt in runs:
                r = run_sae(SAEJob(cache=cache["artefacts"]["cache"], n_latents=512 if small else 2048, k=16,
                                   epochs=1 if small else 2, batch_size=128 if small else 256, lr=1e-3,
                                   loss_recovered_texts=0, home=self.home, progress=False, device=dev, dtype=dt))
                curves["sae"][(dev, dt)] = json.loads(Path(r["artefacts"]["train_curve"]).read_text())["fvu"]
        except Exception as e:
            out.append({"check": "cpu-vs-cuda", "result": f"error: {type(e).__name__}: {str(e)[:200]}",
                        "traceback": traceback.format_exc(limit=6)})
        for job, by in curves.items():
            ref = by.get(runs[0])
            for dev, dt in runs[1:]:
                cur = by.get((dev, dt))
                if ref is None or cur is None:
                    continue
                a, b = np.asarray(ref, float), np.asarray(cur, float)
                n = min(len(a), len(b))
                rel = float(np.max(np.abs(a[:n] - b[:n]) / np.maximum(np.abs(a[:n]), 1e-12))) if n else math.inf
                ok = len(a) == len(b) and rel <= AGREE_TOL[dt]
                out.append({"check": f"{job} {dev} {dt} vs {' '.join(runs[0])}", "shape": f"{size}@{layers or 2}",
                            "steps": n, "max_rel_diff": rel, "tolerance": AGREE_TOL[dt],
                            "result": "PASS" if ok else "FAIL"})
        return out


# ----------------------------------------------------------------------------- output


def _fmt(v, kind: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "int":
        return f"{int(v):,}"
    if kind == "rate":
        return f"{v:,.0f}"
    if kind == "gib":
        return f"{v:.1f}"
    return str(v)


def _flops(v: float) -> str:
    return f"{v / 1e12:.1f} TFLOP/s" if v >= 1e12 else f"{v / 1e9:.1f} GFLOP/s"


def markdown(result: dict) -> str:
    head = ["pillar", "stage", "size", "tokens", "tokens/s", "peak mem GiB", "MFU fit", "MFU run", "target", "result",
            "note"]
    lines = [f"GPU check on {result['device_name']} ({result['dtype']}), {result['elapsed_s']:.0f} s; "
             f"measured matmul peak {_flops(result['matmul_peak_flops'])}; MFU fit = the training "
             "(caching) FLOPs over the trainer's own wall time, MFU run = all FLOPs over the whole run",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        note = r.get("error") or r.get("note") or ""
        if r["stage"] == "interp-sae" and r.get("matmul_frac") is not None:
            note = (note + "; " if note else "") + f"{100 * r['matmul_frac']:.1f}% of matmul peak"
        lines.append("| " + " | ".join([r["pillar"], r["stage"], r["size"], _fmt(r.get("tokens"), "int"),
                                        _fmt(r.get("tokens_per_s"), "rate"), _fmt(r.get("peak_mem_gib"), "gib"),
                                        _fmt(r.get("mfu_fit"), "pct"), _fmt(r.get("mfu_run"), "pct"),
                                        r.get("target") or "—", r["result"], note.replace("|", "/")]) + " |")
    lines += ["", "| CPU vs CUDA | steps | max rel. diff | tolerance | result |", "|---|---|---|---|---|"]
    for a in result["agreement"]:
        lines.append(f"| {a['check']} | {a.get('steps', '—')} | "
                     f"{a['max_rel_diff']:.2e} | {a['tolerance']:g} | {a['result']} |" if "max_rel_diff" in a
                     else f"| {a['check']} | — | — | — | {a['result']} |")
    if result["skipped"]:
        lines += ["", *(f"- {s}" for s in result["skipped"])]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--sizes", nargs="+", choices=tuple(SHAPES), default=None,
                    help=f"model shapes (default: {' '.join(GPU_SIZES)} on CUDA, tiny on the CPU)")
    ap.add_argument("--pillars", nargs="+", choices=PILLARS, default=list(PILLARS), help="pillars to run")
    ap.add_argument("--quick", action="store_true", help="a few steps per stage (a smoke run)")
    ap.add_argument("--time-budget-s", type=float, default=420.0,
                    help="skip stages (with a note) that would run past this many seconds (default 420)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"), help="JSON results")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (models, data, run store)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; pass --device cpu --sizes tiny for the CPU smoke run")
        return 2
    if args.device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(args.device))
    sizes = args.sizes or (list(GPU_SIZES) if args.device.startswith("cuda") else ["tiny"])
    from superalign.runs.files import write_json_atomic

    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        chk = Checker(args, work)
        lm_pillars = [p for p in args.pillars if p != "oversight"]
        agreement = None
        for i, size in enumerate(sizes):
            for pillar in lm_pillars:
                getattr(chk, f"run_{pillar}")(size)
            if i == 0:  # after the headline size, before the others: short and essential
                agreement = chk.agreement()
                if "oversight" in args.pillars:
                    chk.run_oversight()
        result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                  "device": args.device, "dtype": chk.dtype,
                  "device_name": torch.cuda.get_device_name() if chk.cuda else "cpu",
                  "torch": torch.__version__, "matmul_peak_flops": chk.matmul_peak, "sizes": sizes,
                  "quick": args.quick, "time_budget_s": args.time_budget_s, "elapsed_s": chk.elapsed(),
                  "params": {k: n for k, (_, n) in chk.models.items()}, "rows": chk.rows, "agreement": agreement,
                  "skipped": chk.skipped, "targets": {f"{k[0]}@{k[1] or 'any'}": f"{m} >= {t}"
                                                      for k, (m, t) in TARGETS.items()}}
        write_json_atomic(Path(args.out), result, indent=2)
        print()
        print(markdown(result))
        print(f"\nwrote {args.out}")
        return 1 if any("error" in r for r in chk.rows) else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
