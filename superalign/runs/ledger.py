"""The compute ledger: what every run cost — estimated FLOPs, wall and device seconds, device, dtype and MFU.

:func:`superalign.runs.jobs.run_job` opens a :class:`Ledger` for each run and stores :meth:`Ledger.summary` as the
run's ``compute`` record. Code deep inside a job adds the FLOPs it knows how to count with :func:`add_flops` (a no-op
outside a run), so trainers need no ledger argument::

    from superalign.runs.ledger import add_flops
    add_flops(6.0 * n_params * tokens, tokens=tokens)   # one training step of a dense model

FLOPs are estimates by the usual rule (2·params per token forward, 6·params per token for forward + backward; the
sparse parts of SAEs counted as what is multiplied). MFU = FLOPs / (device seconds × peak FLOP/s of one device in the
run's dtype): the peaks of common GPUs are in :data:`GPU_PEAK_FLOPS` (dense, no sparsity); a CPU's peak is measured
once per machine with a large matmul and remembered in ``$SUPERALIGN_CACHE`` (else ``~/.cache/superalign``).
"""

from __future__ import annotations

import contextvars
import json
import os
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    # dense tensor-core peaks from the vendors' data sheets (bf16/fp16 with fp32 accumulation; fp32 without TF32,
    # which PyTorch leaves off for matmuls by default). Matched by substring of torch.cuda.get_device_name(),
    # most specific first.
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "GH200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "B200": {"bf16": 2250e12, "fp16": 2250e12, "fp32": 80e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "A800": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12},
    "L40": {"bf16": 181e12, "fp16": 181e12, "fp32": 90.5e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "fp32": 31.2e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12},
    "RTX 4090": {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "fp16": 71e12, "fp32": 35.6e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
}
"""peak FLOP/s of one device by dtype ('bf16' | 'fp16' | 'fp32'), dense"""

_current: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar("superalign_ledger", default=None)


def gpu_peak_flops(name: str, dtype: str) -> float | None:
    """The data-sheet peak of the GPU called ``name`` in ``dtype``, None when the GPU or dtype is not in the table."""
    for key, peaks in GPU_PEAK_FLOPS.items():
        if key.lower() in name.lower():
            return peaks.get(dtype)
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("SUPERALIGN_CACHE") or Path.home() / ".cache" / "superalign")


def cpu_peak_flops(dtype: str = "fp32") -> float:
    """This machine's measured matmul FLOP/s in ``dtype`` on all torch threads: measured once (well under a second)
    and remembered per host, CPU model, thread count and dtype, since a CPU has no data-sheet peak worth trusting."""
    import torch

    from .files import write_json_atomic

    key = f"{socket.gethostname()}|{platform.processor() or platform.machine()}|{os.cpu_count()}|" \
          f"{torch.get_num_threads()}|{dtype}"
    path = _cache_dir() / "cpu_peak_flops.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), (int, float)) and known[key] > 0:
        return float(known[key])
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    g = torch.Generator().manual_seed(0)
    n, per = 128, 0.0
    while True:  # grow the matrix until one matmul takes ~20 ms (CPUs without bf16 units are 100x slower in bf16)
        a, b = torch.randn(n, n, generator=g).to(tdt), torch.randn(n, n, generator=g).to(tdt)
        a @ b  # warm-up (thread pool, kernel choice)
        t0 = time.perf_counter()
        a @ b
        per = time.perf_counter() - t0
        if per > 0.02 or n >= 2048:
            break
        n *= 2
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 0.3:
        a @ b
        reps += 1
    peak = 2.0 * n ** 3 * reps / (time.perf_counter() - t0)
    try:
        known = known if isinstance(known, dict) else {}
        known[key] = peak
        write_json_atomic(path, known)
    except OSError:  # a read-only home: measure again next time rather than fail the run
        pass
    return peak


def device_info(device) -> tuple[str, str]:
    """(device type, human-readable device name) of a torch device or device string."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "mps", "Apple MPS"
    return dev.type, platform.processor() or platform.machine() or "cpu"


@dataclass
class Ledger:
    """The running compute account of one run (one process; ``world_size`` devices when data-parallel)."""

    device: str = "cpu"
    """the run's device as given to torch ('cpu', 'cuda:0', …)"""
    dtype: str = "fp32"
    """the precision the heavy work ran in: 'fp32', 'bf16' or 'fp16'"""
    world_size: int = 1
    """data-parallel processes (devices) working on the run"""
    flops: float = 0.0
    """estimated FLOPs so far, summed over every device"""
    tokens: int = 0
    """tokens (or examples, for non-token work) processed so far, summed over every device"""
    flops_known: bool = False
    """whether anything reported FLOPs (else MFU is n/a rather than 0)"""
    stages: dict[str, float] = field(default_factory=dict)
    """FLOPs per named stage, when the caller names one"""
    t0: float = field(default_factory=time.perf_counter)
    c0: float = field(default_factory=time.process_time)

    def add(self, flops: float = 0.0, tokens: int = 0, stage: str | None = None) -> None:
        self.flops += float(flops)
        self.tokens += int(tokens)
        self.flops_known = self.flops_known or flops > 0
        if stage:
            self.stages[stage] = self.stages.get(stage, 0.0) + float(flops)

    def summary(self) -> dict:
        """The compute record stored with the run (JSON-ready; MFU is None when FLOPs or the peak are unknown)."""
        wall = time.perf_counter() - self.t0
        kind, name = device_info(self.device)
        if kind == "cpu":
            peak = cpu_peak_flops(self.dtype) if self.flops_known else None
        else:
            peak = gpu_peak_flops(name, self.dtype) if kind == "cuda" else None
        device_s = wall * self.world_size
        out = {"wall_s": wall, "device_s": device_s, "cpu_s": time.process_time() - self.c0, "device": self.device,
               "device_name": name, "dtype": self.dtype, "world_size": self.world_size,
               "flops_total": self.flops if self.flops_known else None, "tokens": self.tokens,
               "peak_flops_per_s": peak,
               "mfu": self.flops / (device_s * peak) if (self.flops_known and peak and device_s > 0) else None}
        if self.stages:
            out["flops"] = dict(self.stages)
        return out


def current() -> Ledger | None:
    """The ledger of the run this code is working for, None outside a run."""
    return _current.get()


def add_flops(flops: float, tokens: int = 0, stage: str | None = None) -> None:
    """Add estimated FLOPs (and tokens) to the current run's ledger; nothing happens outside a run.
    Under data parallelism each process adds its own share: :func:`superalign.runs.jobs.run_job` sums them."""
    ledger = _current.get()
    if ledger is not None:
        ledger.add(flops, tokens, stage)


def param_count(model) -> int:
    """Parameters of a model (shared tensors such as tied embeddings once), for the FLOP estimates."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def trainable_count(model) -> int:
    """Parameters that receive gradients (shared tensors once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


def count_forward(model, tokens: int, stage: str) -> None:
    """Add 2·params·tokens (a forward pass of a dense model) to the run's ledger."""
    add_flops(2.0 * param_count(model) * tokens, tokens=tokens, stage=stage)


def count_training(model, tokens: int, stage: str = "train") -> None:
    """Add (4·params + 2·trainable params)·tokens to the run's ledger: the forward (2·P) and the backward through
    the activations (2·P) of a dense model, plus the weight gradients (2 per trainable parameter). Full finetuning is
    the usual 6·P; a model with frozen weights (LoRA adapters, frozen lower blocks) costs about 4·P."""
    add_flops((4.0 * param_count(model) + 2.0 * trainable_count(model)) * tokens, tokens=tokens, stage=stage)


class open_ledger:
    """``with open_ledger(device, dtype, world_size) as ledger:`` makes ``ledger`` current for the block."""

    def __init__(self, device: str = "cpu", dtype: str = "fp32", world_size: int = 1):
        self.ledger = Ledger(device=str(device), dtype=dtype, world_size=world_size)

    def __enter__(self) -> Ledger:
        self._token = _current.set(self.ledger)
        return self.ledger

    def __exit__(self, *exc) -> None:
        _current.reset(self._token)
