"""The interp pillar on any device and precision, data-parallel SAE training, and its compute records.

CPU tests run everywhere; the ``cuda``-marked ones run the same assertions on a GPU and skip without one."""

import json

import numpy as np
import pytest
import torch

from superalign.interp.jobs import CacheJob, SAEJob, run_cache, run_sae
from superalign.interp.sae import SAEConfig, TopKSAE
from superalign.runs.store import RunStore

WORDS = "the food was good and the hotel staff were friendly but the room was small and noisy at night".split()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
SAE_ARGS = {"n_latents": 64, "k": 4, "batch_size": 64, "epochs": 1, "eval_frac": 0.1, "aux_coef": 0.0,
            "loss_recovered_texts": 0, "progress": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(3, 16)))}) + "\n"
                            for _ in range(40)))
    return str(path)


@pytest.fixture(scope="module")
def fp32_cache(tiny_bert, corpus, tmp_path_factory):
    home = tmp_path_factory.mktemp("cache_home")
    r = run_cache(CacheJob(home=str(home), model=f"hf:{tiny_bert}", texts=corpus, hook="layers.1", batch_size=8,
                           device="cpu", dtype="fp32", progress=False))
    return r


def test_absent_cuda_is_a_one_line_error_and_nothing_is_written(fp32_cache, tiny_bert, corpus, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    from superalign.cli import main

    home = tmp_path / "h"
    for argv in (["interp", "cache", "--model", f"hf:{tiny_bert}", "--texts", corpus, "--hook", "layers.1"],
                 ["interp", "sae", "--cache", fp32_cache["artefacts"]["cache"], "--n-latents", "64", "--k", "4"]):
        assert main([*argv, "--device", "cuda", "--home", str(home), "--progress", "false"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cuda" in err.lower(), err
        assert not home.exists()


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_cache_and_sae_are_finite_close_to_fp32_and_a_different_run(device, fp32_cache, tiny_bert, corpus,
                                                                         tmp_path):
    from superalign.interp.activations import load_activations

    kw = {"model": f"hf:{tiny_bert}", "texts": corpus, "hook": "layers.1", "batch_size": 8, "progress": False,
          "device": device}
    ref = load_activations(fp32_cache["artefacts"]["cache"])
    if device == "cpu":
        fp32 = fp32_cache
    else:
        fp32 = run_cache(CacheJob(home=str(tmp_path / "h32"), dtype="fp32", **kw))
        np.testing.assert_allclose(load_activations(fp32["artefacts"]["cache"]).acts, ref.acts, atol=1e-4)
    bf16 = run_cache(CacheJob(home=str(tmp_path / "h16"), dtype="bf16", **kw))
    assert bf16["id"] != fp32["id"] and not bf16["cached"]  # bf16 activations are another cache
    assert bf16["artefacts"]["cache"] != fp32["artefacts"]["cache"]
    c16 = load_activations(bf16["artefacts"]["cache"])
    assert c16.acts.dtype == torch.bfloat16 and c16.meta["dtype"] == "bfloat16"  # stored as computed
    assert torch.equal(c16.tokens, ref.tokens) and torch.equal(c16.doc, ref.doc)
    a16 = c16.acts.float()
    assert torch.isfinite(a16).all()
    assert float((a16 - ref.acts).norm() / ref.acts.norm()) < 0.03
    assert bf16["compute"]["dtype"] == "bf16" and bf16["compute"]["flops"]["cache"] > 0

    # SAE: fp32 master weights, bf16 autocast; a few steps close to the fp32 run on the same cache
    runs = {dt: run_sae(SAEJob(home=str(tmp_path / f"s{dt}"), cache=fp32["artefacts"]["cache"], device=device,
                               dtype=dt, **SAE_ARGS)) for dt in ("fp32", "bf16")}
    curves = {dt: json.loads(open(r["artefacts"]["train_curve"]).read())["fvu"] for dt, r in runs.items()}
    assert len(curves["bf16"]) == len(curves["fp32"]) > 3 and np.isfinite(curves["bf16"]).all()
    np.testing.assert_allclose(curves["bf16"], curves["fp32"], atol=0.03)
    assert runs["bf16"]["metrics"]["fvu"] == pytest.approx(runs["fp32"]["metrics"]["fvu"], abs=0.03)
    assert runs["bf16"]["compute"]["dtype"] == "bf16" and runs["bf16"]["id"] != runs["fp32"]["id"]
    from safetensors.torch import load_file

    weights = load_file(f"{runs['bf16']['artefacts']['sae']}/sae.safetensors")
    assert all(v.dtype in (torch.float32, torch.long) for v in weights.values())  # fp32 master weights


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_topk_path_under_bf16_autocast_matches_fp32_gradients(device, monkeypatch):
    """The sparse kernels run (no dense fallback) under autocast, in fp32, with fp32 gradients close to fp32's."""
    from superalign.interp import sparse_ops

    calls, real = [], sparse_ops._GatherEncode.apply
    monkeypatch.setattr(sparse_ops._GatherEncode, "apply", staticmethod(lambda *a: calls.append(1) or real(*a)))
    torch.manual_seed(0)
    x = torch.randn(64, 16, device=device)
    grads = {}
    for dt in ("fp32", "bf16"):
        sae = TopKSAE(SAEConfig(d_in=16, n_latents=48, k=4, aux_coef=0.0), seed=0).to(device).train()
        calls.clear()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dt == "bf16"):
            out = sae(x)
        assert calls and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
        out.loss.backward()
        grads[dt] = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for n, g in grads["fp32"].items():
        assert grads["bf16"][n].dtype == torch.float32
        assert float((grads["bf16"][n] - g).norm() / g.norm().clamp(min=1e-12)) < 0.05, n


def test_cache_job_records_the_hand_counted_flops(fp32_cache):
    """Golden: 2·N per cached token, N = the tiny BERT's block parameters (2 layers of q, k, v, o 4·(32·32 + 32),
    FFN 32·64 + 64 + 64·32 + 32 and two LayerNorms 2·2·32), without embeddings and the pooler (one position/text)."""
    n_params = 2 * (4 * (32 * 32 + 32) + (32 * 64 + 64 + 64 * 32 + 32) + 2 * 2 * 32)
    tokens = fp32_cache["metrics"]["tokens"]
    assert fp32_cache["compute"]["flops"] == {"cache": 2 * n_params * tokens}
    assert fp32_cache["compute"]["tokens"] == tokens


def test_sae_job_records_the_hand_counted_flops(fp32_cache, tmp_path):
    """Golden: TopK training counts 2·d·n (dense encoder forward) + 10·k·d (sparse encoder backward, decoder forward
    and backward) per trained token and epoch; evaluation 2·d·n + 2·k·d per held-out token."""
    job = SAEJob(home=str(tmp_path / "h"), cache=fp32_cache["artefacts"]["cache"], device="cpu", **{
        **SAE_ARGS, "epochs": 2})
    r = run_sae(job)
    d, n, k = 32, 64, 4
    n_train, n_eval = r["metrics"]["n_train"], r["metrics"]["n_eval"]
    train = (2 * d * n + 10 * k * d) * n_train * 2
    evaluation = (2 * d * n + 2 * k * d) * n_eval
    c = r["compute"]
    assert c["flops"] == {"sae-train": train, "sae-eval": evaluation}
    assert c["flops_total"] == train + evaluation and c["tokens"] == n_train * 2 + n_eval
    assert c["device"] == "cpu" and c["dtype"] == "fp32" and c["world_size"] == 1


def test_local_llm_loads_in_the_dtype_and_counts_its_flops(tiny_gpt2, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from superalign.interp.activations import lm_flops
    from superalign.interp.llm import HFLocalLLM
    from superalign.runs.ledger import open_ledger

    folder = shutil.copytree(tiny_gpt2, tmp_path / "lm")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.eos_token = "[SEP]"  # generation needs an EOS; the fixture's tokenizer (MiniLM's) names none
    tok.save_pretrained(folder)
    llm = HFLocalLLM(f"hf:{folder}", device="cpu", dtype="bf16")
    assert next(llm.model.parameters()).dtype == torch.bfloat16
    with open_ledger() as ledger:
        lp = llm.next_token_logprobs(["the food"], ["0", "1"])
        out = llm.generate(["the food", "a"], max_new_tokens=3)
    assert np.isfinite(lp).all() and len(out) == 2
    assert ledger.flops >= lm_flops(llm.model, 3) > 0 and ledger.stages["llm"] == ledger.flops


def test_two_processes_train_the_same_sae_as_one(fp32_cache, tmp_path, accelerate_two):
    """`accelerate launch` with 2 CPU processes: the same FVU curve as one process with the same global batch, and
    exactly one stored run (rank 0's)."""
    args = {**SAE_ARGS, "epochs": 2, "aux_coef": 1 / 32, "dead_tokens": 200, "batch_size": 50}
    one = run_sae(SAEJob(home=str(tmp_path / "one"), cache=fp32_cache["artefacts"]["cache"], device="cpu", **args))
    argv = ["interp", "sae", "--cache", fp32_cache["artefacts"]["cache"], "--home", str(tmp_path / "two"),
            "--device", "cpu"]
    for key, value in args.items():
        argv += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    out = accelerate_two(argv, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    (row,) = RunStore(str(tmp_path / "two")).list()
    assert row["status"] == "done" and row["compute"]["world_size"] == 2
    curve = {name: json.loads(open(r["artefacts"]["train_curve"]).read())
             for name, r in (("one", one), ("two", row))}
    assert len(curve["two"]["fvu"]) == len(curve["one"]["fvu"]) > 3
    np.testing.assert_allclose(curve["two"]["fvu"], curve["one"]["fvu"], rtol=1e-5)
    np.testing.assert_allclose(curve["two"]["aux"], curve["one"]["aux"], rtol=1e-5, atol=1e-7)
    assert any(a > 0 for a in curve["one"]["aux"])  # dead latents were found (globally) and AuxK ran
    assert row["metrics"]["fvu"] == pytest.approx(one["metrics"]["fvu"], rel=1e-5)
    # each process counted its own rows (rank 0 alone evaluates): together, one process's FLOPs and tokens
    assert row["compute"]["tokens"] == one["compute"]["tokens"]
    assert row["compute"]["flops_total"] == pytest.approx(one["compute"]["flops_total"], rel=1e-12)
    # the per-stage FLOPs are summed over both processes too, not rank 0's share
    assert sum(row["compute"]["flops"].values()) == pytest.approx(row["compute"]["flops_total"], rel=1e-9)
