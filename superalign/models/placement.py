"""Where a model runs and in what precision: ``device`` and ``dtype`` arguments of every loader, checked once."""

from __future__ import annotations

import torch

from ..errors import SuperalignError
from ..validate import check_device

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """A torch dtype from a torch dtype, 'fp32'/'bf16'/'fp16' (or their long names), or None (float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise SuperalignError(f"unknown dtype {dtype!r}", "use fp32, bf16 or fp16 (float32, bfloat16 or float16)")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """A torch device from 'cpu', 'cuda', 'cuda:<i>', 'mps' or 'auto' (a GPU when there is one), checked to exist."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        if device.type == "cpu":  # Accelerate names a process's CPU 'cpu:0'
            return device
        device = str(device)
    check_device("device", device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""what ``--dtype`` accepts: ``auto`` = bf16 on a CUDA GPU (autocast, fp32 master weights), fp32 elsewhere"""


def resolve_precision(dtype: str | torch.dtype | None, device: torch.device | str | None) -> str:
    """The canonical precision name ('fp32' | 'bf16' | 'fp16') of ``dtype`` on ``device``; ``auto``/None means bf16
    on CUDA (when the GPU supports it, else fp16) and fp32 on CPU and MPS, so the CPU default never changes."""
    dev = resolve_device(device)
    if dtype is None or dtype == "auto":
        if dev.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[resolve_dtype(dtype)]
