"""Small helpers shared by the benchmark scripts: atomic JSON output and the machine's fp32 matmul peak."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def write_json(path: str | Path, obj) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, p)
    return p


def matmul_peak_gflops(n: int = 1024, reps: int = 20) -> float:
    """Measured fp32 matmul throughput (GFLOP/s) on this machine with torch's current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
