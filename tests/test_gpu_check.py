"""benchmarks/gpu_check.py: the CPU smoke run prints the table with a row per pillar and writes the JSON; without
CUDA, --device cuda is a one-line message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SUPERALIGN_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_gpu_check_cpu_smoke(tmp_path):
    out = tmp_path / "gpu_check.json"
    # ~25 s of CPU time on 2 idle cores; the generous timeout is for a machine shared with other jobs
    p = _run(["--device", "cpu", "--sizes", "tiny", "--quick", "--out", str(out)], tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    for pillar in ("rlhf", "interp", "w2s", "oversight"):
        assert any(line.startswith(f"| {pillar} |") for line in table), (pillar, p.stdout)
    assert "skipped: no CUDA" in p.stdout
    result = json.loads(out.read_text())
    stages = {r["stage"] for r in result["rows"]}
    assert {"rlhf-sft", "rlhf-rm", "rlhf-dpo", "interp-cache", "interp-sae", "w2s-full", "oversight-judge"} <= stages
    for r in result["rows"]:
        assert "error" not in r, r
        assert r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["flops_total"] > 0, r
        assert r["mfu_fit"] is not None and 0 < r["mfu_fit"] < 1, r
        assert r["result"] in ("—", "n/a (cpu)"), r  # targets are judged on CUDA only
    assert result["agreement"] == [{"check": "cpu-vs-cuda", "result": "skipped: no CUDA"}]
    assert result["device"] == "cpu" and result["dtype"] == "fp32" and result["sizes"] == ["tiny"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on a machine without CUDA")
def test_gpu_check_without_cuda_says_how_to_smoke_run(tmp_path):
    p = _run(["--out", str(tmp_path / "x.json")], tmp_path, timeout=120)
    assert p.returncode == 2
    assert p.stdout.strip().count("\n") == 0 and "--device cpu --sizes tiny" in p.stdout
    assert not (tmp_path / "x.json").exists()
