"""The shared device / precision / data-parallel layer: Runtime (superalign/train/distributed.py), the compute ledger
(superalign/runs/ledger.py) and run_job's placement checks."""

import json
import textwrap

import numpy as np
import pytest
import torch

from superalign.errors import SuperalignError
from superalign.runs import ledger as L
from superalign.train.distributed import Runtime

PROBE = textwrap.dedent('''
    import json, sys
    import torch
    from superalign.train.distributed import Runtime
    rt = Runtime.create("cpu", "fp32")
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m, opt = rt.prepare(m, opt)
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randn(7, generator=torch.Generator().manual_seed(2))
    losses = []
    for batch in ([0, 1, 2, 3, 4], [5, 6, 0], [3]):   # uneven shards, and a batch smaller than the world
        part = rt.shard(batch)
        idx = torch.as_tensor(part.idx)
        with rt.autocast():
            err = ((m(x[idx]).squeeze(-1) - y[idx]) ** 2).sum()
        loss = rt.global_mean(err, len(idx), part.weight)
        losses.append(rt.all_sum(err.item() * part.weight) / rt.all_sum(len(idx) * part.weight))
        rt.backward(loss)
        rt.step(opt)
    params = [p.detach().flatten().tolist() for p in rt.unwrap(m).parameters()]
    if rt.is_main:
        json.dump({"world": rt.world_size, "losses": losses, "params": params}, open(sys.argv[1], "w"))
''')


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, accelerate_two):
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(script), str(one)], check=True)
    out = accelerate_two([str(script), str(two)], module=False)
    assert out.returncode == 0, out.stdout[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-6)
    np.testing.assert_allclose(sum(a["params"], []), sum(b["params"], []), rtol=1e-6, atol=1e-7)


def test_single_process_runtime_defaults_keep_cpu_fp32():
    rt = Runtime.create("auto", "auto")
    if not torch.cuda.is_available():
        assert (rt.device.type, rt.precision, rt.world_size, rt.accelerator) == ("cpu", "fp32", 1, None)
    assert rt.shard([3, 1, 2]).idx.tolist() == [3, 1, 2]
    # global mean in one process: sum / count
    assert float(rt.global_mean(torch.tensor(6.0), 4)) == pytest.approx(1.5)


def test_bf16_autocast_on_cpu_keeps_fp32_master_weights():
    rt = Runtime.create("cpu", "bf16")
    m = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m, opt = rt.prepare(m, opt)
    with rt.autocast():
        out = m(torch.randn(4, 8))
    assert out.dtype == torch.bfloat16 and m.weight.dtype == torch.float32
    rt.backward(out.float().pow(2).mean())
    rt.step(opt, max_grad_norm=1.0)
    assert m.weight.dtype == torch.float32 and m.weight.grad is None


def test_absent_device_and_unknown_dtype_are_one_line_errors():
    from superalign.runs.jobs import JobBase

    with pytest.raises(SuperalignError, match="dtype"):
        JobBase(dtype="int8").placement()
    if not torch.cuda.is_available():
        with pytest.raises(SuperalignError, match="no CUDA GPU"):
            JobBase(device="cuda").placement()
        with pytest.raises(SuperalignError, match="no CUDA GPU"):
            JobBase(device="cuda:1").key()


def test_key_resolves_auto_to_what_it_stands_for():
    from superalign.runs.jobs import JobBase

    if torch.cuda.is_available():
        pytest.skip("checks the CPU resolution")
    assert JobBase().key() == JobBase(device="cpu", dtype="fp32").key()
    assert JobBase(dtype="bf16").key() != JobBase().key()
    assert JobBase().key()["device"] == "cpu" and JobBase().key()["dtype"] == "fp32"


def test_gpu_peak_table_lookup():
    assert L.gpu_peak_flops("NVIDIA H200", "bf16") == 989e12
    assert L.gpu_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12   # the more specific entry wins
    assert L.gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert L.gpu_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert L.gpu_peak_flops("Tesla T4", "bf16") is None             # no bf16 tensor cores: MFU n/a
    assert L.gpu_peak_flops("Some Future GPU", "bf16") is None


def test_ledger_summary_golden(monkeypatch, tmp_path):
    monkeypatch.setenv("SUPERALIGN_CACHE", str(tmp_path))
    monkeypatch.setattr(L, "cpu_peak_flops", lambda dtype="fp32": 1e10)
    with L.open_ledger("cpu", "fp32", world_size=2) as led:
        L.add_flops(3e9, tokens=100, stage="train")
        L.add_flops(1e9, tokens=20, stage="eval")
        led.t0 -= 2.0  # as if 2 s had passed
    s = led.summary()
    assert s["flops_total"] == 4e9 and s["tokens"] == 120 and s["flops"] == {"train": 3e9, "eval": 1e9}
    assert s["world_size"] == 2 and s["device_s"] == pytest.approx(2 * s["wall_s"])
    assert s["mfu"] == pytest.approx(4e9 / (s["device_s"] * 1e10))
    L.add_flops(1e9)  # outside a run: nothing happens
    assert L.current() is None


def test_ledger_without_flops_has_no_mfu():
    with L.open_ledger("cpu", "fp32") as led:
        pass
    s = led.summary()
    assert s["flops_total"] is None and s["mfu"] is None and s["dtype"] == "fp32"


def test_cpu_peak_measured_once_and_remembered(monkeypatch, tmp_path):
    monkeypatch.setenv("SUPERALIGN_CACHE", str(tmp_path))
    p1 = L.cpu_peak_flops("fp32")
    assert p1 > 1e8
    saved = json.loads((tmp_path / "cpu_peak_flops.json").read_text())
    key = next(iter(saved))
    saved[key] = 123.0
    (tmp_path / "cpu_peak_flops.json").write_text(json.dumps(saved))
    assert L.cpu_peak_flops("fp32") == 123.0  # read back, not measured again


def test_every_registered_job_takes_device_and_dtype():
    """Every job of every pillar has --device and --dtype (auto by default), so no pillar is stuck on one CPU."""
    from dataclasses import fields

    from superalign.pillars import pillars

    seen = []
    for pillar in pillars():
        for job in pillar.jobs:
            f = {x.name: x for x in fields(job.config_class())}
            assert "device" in f and "dtype" in f, f"{pillar.name} {job.name} lacks --device/--dtype"
            assert f["device"].default == "auto" and f["dtype"].default == "auto", (pillar.name, job.name)
            seen.append(f"{pillar.name} {job.name}")
    assert {"rlhf sft", "rlhf ppo", "interp sae", "debate train-judge", "w2s run"} <= set(seen)
