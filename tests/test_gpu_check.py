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


def test_agreement_compares_loss_curves(tmp_path):
    """The CPU-vs-CUDA comparison's own code, run here as CPU fp32 vs itself (identical: PASS) and vs CPU bf16."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    chk = gc.Checker(gc.parse_args(["--device", "cpu", "--quick"]), tmp_path)
    rows = chk.agreement(runs=(("cpu", "fp32"), ("cpu", "fp32"), ("cpu", "bf16")))
    by = {r["check"]: r for r in rows}
    assert set(by) == {f"{job} cpu {dt} vs cpu fp32" for job in ("sft", "sae") for dt in ("fp32", "bf16")}, rows
    for job in ("sft", "sae"):
        same, bf16 = by[f"{job} cpu fp32 vs cpu fp32"], by[f"{job} cpu bf16 vs cpu fp32"]
        assert same["result"] == "PASS" and same["max_rel_diff"] == 0.0 and same["steps"] >= 2
        assert 0 < bf16["max_rel_diff"] < 1 and bf16["tolerance"] == 2e-2 and bf16["steps"] == same["steps"]


@pytest.mark.cuda
def test_gpu_check_cuda_quick(tmp_path):
    """On a CUDA machine: every pillar runs in bf16 and CUDA agrees with the CPU (fp32 and bf16 loss curves)."""
    out = tmp_path / "gpu_check.json"
    p = _run(["--device", "cuda", "--sizes", "tiny", "--quick", "--out", str(out)], tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dtype"] == "bf16" and {r["pillar"] for r in result["rows"]} == {"rlhf", "interp", "w2s", "oversight"}
    for r in result["rows"]:
        assert "error" not in r and r["peak_mem_gib"] > 0 and r["tokens_per_s"] > 0, r
    checks = {a["check"]: a["result"] for a in result["agreement"]}
    assert len(checks) == 4 and set(checks.values()) == {"PASS"}, result["agreement"]
