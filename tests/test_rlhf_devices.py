"""RLHF on any device and precision, data-parallel under Accelerate, with its compute recorded: device/dtype errors,
bf16 autocast close to fp32, sampling without per-token host syncs, FLOPs golden, 2 processes = 1 process."""

import copy
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from superalign.cli import main
from superalign.models.lm import encode_prompts, left_pad, load_lm, sample
from superalign.rlhf import testbed as tb
from superalign.rlhf.dpo import DPOConfig, train_dpo
from superalign.rlhf.sft import SFTConfig, train_sft
from superalign.runs.store import RunStore
from superalign.train.distributed import Runtime

TINY = tb.TestbedLMConfig(n_layer=1, n_embd=32, n_head=2, n_sentences=3000, batch_size=64, lr=5e-3)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _pairs(n: int, seed: int = 0) -> list[dict]:
    rng, gold, out = np.random.default_rng(seed), tb.GoldReward(), []
    while len(out) < n:
        p, a = tb.split_sentence(tb.sample_sentence(rng))
        _, b = tb.split_sentence(tb.sample_sentence(rng))
        ga, gb = gold(p, a), gold(p, b)
        if ga != gb:
            out.append({"prompt": p, "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
    return out


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rlhf_dev_data")
    _write_jsonl(d / "sft.jsonl", tb.testbed_data(n_sft=16).sft)
    _write_jsonl(d / "pairs.jsonl", _pairs(24))
    _write_jsonl(d / "same.jsonl", [{"prompt": "the food was", "completion": "very good ."}] * 8)
    return d


# ----------------------------------------------------------------------------- devices and dtypes


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_absent_cuda_is_one_line_error_and_writes_nothing(tiny_lm, data_dir, tmp_path, capsys):
    home = tmp_path / "home"
    base = ["--home", str(home), "--progress", "false", "--device", "cuda"]
    for cmd in (["sft", "--policy", tiny_lm, "--data", str(data_dir / "sft.jsonl")],
                ["rm", "--base", tiny_lm, "--data", str(data_dir / "pairs.jsonl")],
                ["dpo", "--policy", tiny_lm, "--data", str(data_dir / "pairs.jsonl")],
                ["ppo", "--policy", tiny_lm, "--reward", tiny_lm],
                ["bon", "--policy", tiny_lm, "--reward", tiny_lm]):
        assert main(["rlhf", *cmd, *base]) == 2, cmd
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cuda" in err.lower(), (cmd, err)
    assert not home.exists()  # no store, no run, no artefact


def _n_params_by_hand(vocab: int, d: int, ctx: int, layers: int) -> int:
    """GPT-2 parameters: token + position embeddings; per block 2 layer norms, qkv, attention out, MLP up and down
    (with biases); the final layer norm. The LM head is tied to the token embedding."""
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + ctx * d + layers * block + 2 * d


def test_sft_records_its_compute_golden(tiny_lm, data_dir, tmp_path, capsys):
    home = tmp_path / "home"
    assert main(["rlhf", "sft", "--home", str(home), "--progress", "false", "--policy", tiny_lm,
                 "--data", str(data_dir / "same.jsonl"), "--batch-size", "4"]) == 0
    capsys.readouterr()
    (run,) = RunStore(home, create=False).list()
    params = _n_params_by_hand(len(tb.vocabulary()), TINY.n_embd, TINY.n_positions, TINY.n_layer)
    assert params == sum(p.numel() for p in load_lm(tiny_lm)[1].parameters())
    # 8 rows of <bos> the food was | very good . <eos>: 8 tokens each, one epoch
    tokens = 8 * 8
    c = run["compute"]
    assert run["metrics"]["tokens"] == tokens and c["tokens"] == tokens
    assert c["flops_total"] == pytest.approx(6 * params * tokens, rel=1e-12)
    assert isinstance(c["mfu"], float) and c["mfu"] > 0
    assert (c["dtype"], c["device"], c["world_size"]) == ("fp32", "cpu", 1)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_sft_and_dpo_close_to_fp32(tiny_lm, device):
    rows, pairs = tb.testbed_data(n_sft=32).sft, _pairs(32)
    out = {}
    for precision in ("fp32", "bf16"):
        rt = Runtime.create(device if precision == "bf16" else "cpu", precision)
        tok, model = load_lm(tiny_lm, device=rt.device)
        sft = train_sft(model, tok, rows, SFTConfig(epochs=1, batch_size=8, lr=1e-3), progress=False, rt=rt)
        assert model.transformer.wte.weight.dtype == torch.float32  # master weights stay fp32
        tok, model = load_lm(tiny_lm, device=rt.device)
        dpo = train_dpo(model, copy.deepcopy(model), tok, pairs, DPOConfig(batch_size=8, lr=1e-3), progress=False,
                        rt=rt)
        out[precision] = (sft.losses, dpo.losses)
    for a, b in zip(out["fp32"], out["bf16"]):
        assert len(a) == len(b) == 4 and np.isfinite(b).all()
        np.testing.assert_allclose(b, a, rtol=3e-2)


def test_dtype_bf16_job_on_cpu_is_recorded(tiny_lm, data_dir, tmp_path, capsys):
    home = str(tmp_path / "home")
    losses = {}
    for dtype in ("fp32", "bf16"):
        assert main(["rlhf", "dpo", "--home", home, "--progress", "false", "--policy", tiny_lm, "--data",
                     str(data_dir / "pairs.jsonl"), "--batch-size", "8", "--dtype", dtype]) == 0
        capsys.readouterr()
    runs = {r["compute"]["dtype"]: r for r in RunStore(home, create=False).list(kind="rlhf-dpo")}
    assert set(runs) == {"fp32", "bf16"}  # two runs: the precision is part of the run's key
    for dtype, r in runs.items():
        losses[dtype] = r["metrics"]["losses"]
        assert r["compute"]["device"] == "cpu" and r["compute"]["flops_total"] > 0
    assert losses["fp32"][0] == pytest.approx(math.log(2), abs=1e-5)
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=3e-2)


# ----------------------------------------------------------------------------- generation


def _query(tiny_lm, device, n=16):
    tok, model = load_lm(tiny_lm, device=device)
    q, qm = left_pad(encode_prompts(tok, tb.sample_prompts(n, 0)), tok.pad_token_id)
    return tok, model, q, qm


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_makes_no_per_token_host_sync(tiny_lm, device, monkeypatch):
    """Every Python-level device→host read (item, tolist, bool/int/float of a tensor) made from models/lm.py while
    sampling is counted: with EOS made unreachable the loop runs all 32 steps, and only the "all ended?" checks
    every 8 tokens and the final cut read from the device."""
    tok, model, q, qm = _query(tiny_lm, device)
    calls = []
    here = os.path.join("models", "lm.py")
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            if sys._getframe(1).f_code.co_filename.endswith(here):
                calls.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    never = len(tok)  # an id no model can emit: no row ever ends
    for check_every, most in ((8, 32 // 8 + 1), (1, None)):
        calls.clear()
        resp = sample(model, q, qm, 32, 1.0, never, tok.pad_token_id, torch.Generator().manual_seed(0),
                      check_every=check_every)
        assert resp.shape == (16, 32) and resp.device.type == device
        if most is not None:
            assert len(calls) <= most, calls
        else:  # the control: checking at every token is seen by the counter
            assert len(calls) >= 31


def test_sampling_stops_and_leaves_the_generator_as_at_the_first_all_ended_step(tiny_lm):
    tok, model, q, qm = _query(tiny_lm, "cpu")
    outs = []
    for check_every in (1, 3, 8, 64):
        g = torch.Generator().manual_seed(5)
        r = sample(model, q, qm, 40, 1.0, tok.eos_token_id, tok.pad_token_id, g, check_every=check_every)
        outs.append((r, g.get_state(), torch.rand(3, generator=g)))
    r0, s0, n0 = outs[0]
    assert r0.shape[1] < 40  # every row ended before the limit
    for r, s, n in outs[1:]:
        assert torch.equal(r, r0) and torch.equal(s, s0) and torch.equal(n, n0)


def test_data_parallel_rows_get_the_noise_of_one_process(tiny_lm):
    """A process sampling rows [1, 3, 5, ...] of a global batch (``rows``) draws what one process draws for them."""
    tok, model, q, qm = _query(tiny_lm, "cpu")
    full = sample(model, q, qm, 12, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(2),
                  check_every=4)
    mine = torch.arange(1, 16, 2)
    part = sample(model, q[mine], qm[mine], 12, 1.0, tok.eos_token_id, tok.pad_token_id,
                  torch.Generator().manual_seed(2), check_every=4, rows=(16, mine),
                  across=lambda v: max(int(v), full.shape[1] - 1))  # the other process stops at the full length
    assert torch.equal(part, full[mine])


# ----------------------------------------------------------------------------- two processes = one process

SCRIPT = textwrap.dedent('''
    import json, sys
    from superalign.rlhf.jobs import DPOJob, PPOJob, RMJob, SFTJob, run_dpo, run_ppo, run_rm, run_sft
    from superalign.train.distributed import world

    home, lm, data, out = sys.argv[1:5]
    kw = {"home": home, "progress": False}
    sft = run_sft(SFTJob(policy=lm, data=f"{data}/sft.jsonl", batch_size=8, lr=1e-3, **kw))
    rm = run_rm(RMJob(base=lm, data=f"{data}/pairs.jsonl", batch_size=8, eval_frac=0.25, lr=1e-3, **kw))
    dpo = run_dpo(DPOJob(policy=lm, data=f"{data}/pairs.jsonl", batch_size=8, lr=1e-3, **kw))
    ppo = run_ppo(PPOJob(policy=lm, reward=rm["artefacts"]["model"], updates=2, batch_size=8, minibatch_size=4,
                         ppo_epochs=2, response_len=6, lr=1e-3, **kw))
    if world()[0] == 0:
        json.dump({"world": world()[1], "sft": sft["metrics"]["losses"], "rm": rm["metrics"]["losses"],
                   "rm_acc": rm["metrics"]["eval_acc"], "dpo": dpo["metrics"]["losses"],
                   "ppo": [[h[k] for k in ("loss/policy", "loss/value", "objective/scores", "objective/kl",
                                           "policy/clipfrac", "val/error")] for h in ppo["metrics"]["history"]],
                   "sft_compute": sft["compute"]}, open(out, "w"))
''')


def test_two_processes_train_like_one_with_the_same_global_batch(tiny_lm, data_dir, tmp_path, accelerate_two):
    script = tmp_path / "chain.py"
    script.write_text(SCRIPT)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(script), str(tmp_path / "home1"), tiny_lm, str(data_dir), str(one)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    out = accelerate_two([str(script), str(tmp_path / "home2"), tiny_lm, str(data_dir), str(two)], module=False)
    assert out.returncode == 0, out.stdout[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    for key in ("sft", "rm", "dpo"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
    assert b["rm_acc"] == a["rm_acc"]
    # PPO: rows sampled with the noise of one process, global whitening and normalization statistics
    np.testing.assert_allclose(b["ppo"], a["ppo"], rtol=1e-4, atol=1e-6)
    runs = RunStore(tmp_path / "home2", create=False).list()
    assert sorted(r["kind"] for r in runs) == ["rlhf-dpo", "rlhf-ppo", "rlhf-rm", "rlhf-sft"]
    assert all(r["status"] == "done" for r in runs)
    c1, c2 = a["sft_compute"], b["sft_compute"]
    assert c2["world_size"] == 2 and c2["flops_total"] == pytest.approx(c1["flops_total"], rel=1e-9)
