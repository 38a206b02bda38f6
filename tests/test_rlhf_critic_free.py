"""GRPO, Dr. GRPO and RLOO: golden tests of every advantage, baseline and loss against hand computations, training on
the tiny testbed LM, the CLI jobs, bad inputs, determinism and 2-process data parallelism."""

import copy
import math

import numpy as np
import pytest
import torch

from superalign.cli import main
from superalign.errors import SuperalignError
from superalign.models.lm import load_lm
from superalign.rlhf import data as rdata
from superalign.rlhf.critic_free import (
    GRPOConfig,
    RLOOConfig,
    group_advantages,
    grpo_loss,
    rloo_advantages,
    rloo_loss,
    rloo_rewards,
    sequence_means,
    train_grpo,
    train_rloo,
)
from superalign.rlhf.reward import RewardTrainConfig, load_reward_model, train_reward_model
from superalign.rlhf.testbed import GoldReward, sample_prompts, sample_sentence, split_sentence
from superalign.runs.store import RunStore

T = torch.tensor


# ----------------------------------------------------------------------------- golden tests


def test_group_advantages_with_and_without_std_by_hand():
    s = T([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    # group 1: mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3) = sqrt(14/3)
    std = math.sqrt(14 / 3)
    a = group_advantages(s, eps=0.0)
    np.testing.assert_allclose(a[0].tolist(), [-2 / std, -1 / std, 0.0, 3 / std], rtol=1e-6)
    assert group_advantages(s)[1].tolist() == [0.0] * 4  # all equal: 0/(0 + ε), not NaN
    a = group_advantages(s, eps=1e-4)
    assert a[0, 3].item() == pytest.approx(3 / (std + 1e-4))
    assert group_advantages(s, scale_by_std=False).tolist() == [[-2.0, -1.0, 0.0, 3.0], [0.0] * 4]  # Dr. GRPO


def test_rloo_baseline_by_hand():
    s = T([[1.0, 2.0, 6.0]])
    # r_i − mean of the others: 1 − 4, 2 − 3.5, 6 − 1.5
    np.testing.assert_allclose(rloo_advantages(s)[0].tolist(), [-3.0, -1.5, 4.5], rtol=1e-6)
    # = K/(K−1)·(r − mean): 3/2·([1, 2, 6] − 3)
    np.testing.assert_allclose(rloo_advantages(s)[0].tolist(), (1.5 * (np.array([1, 2, 6]) - 3)).tolist())
    assert rloo_advantages(T([[0.5, 2.0]])).tolist() == [[-1.5, 1.5]]  # K = 2: r_i − r_j
    assert rloo_advantages(T([[1.0, 2.0, 6.0]])).sum().item() == pytest.approx(0.0)
    with pytest.raises(SuperalignError, match="at least 2"):
        rloo_advantages(T([[1.0]]))


def test_rloo_reward_has_the_sequence_kl_in_it():
    logp = T([[math.log(0.5), math.log(0.5), 0.0], [math.log(0.25), 0.0, 0.0]])
    ref = T([[math.log(0.25), math.log(0.5), 0.0], [math.log(0.5), 0.0, 0.0]])
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # sequence k1 KL: log 2 + 0; −log 2
    r = rloo_rewards(T([1.0, 2.0]), logp, ref, mask, beta=0.1)
    np.testing.assert_allclose(r.tolist(), [1.0 - 0.1 * math.log(2), 2.0 + 0.1 * math.log(2)], rtol=1e-6)


def _tok_grads(loss_fn, logp):
    logp = logp.clone().requires_grad_(True)
    loss_fn(logp).backward()
    return logp.grad


def test_grpo_and_dr_grpo_normalisations_by_hand_show_the_length_bias():
    """Two responses with the same advantage, lengths 1 and 3, on-policy (ρ = 1), β = 0: ∂loss/∂log π of each token is
    −A/(|y_i|·B) with GRPO's per-sequence mean — a short response's token weighs 3× a long one's — and −A/(L·B) with
    Dr. GRPO's constant L (here 4): every token weighs the same."""
    logp = torch.log(T([[0.5, 0.0, 0.0, 0.0], [0.5, 0.25, 0.5, 0.0]]))
    logp = torch.where(torch.isinf(logp), torch.zeros_like(logp), logp)
    mask = T([[1.0, 0, 0, 0], [1.0, 1, 1, 0]])
    adv = T([2.0, 2.0])

    def loss(lt):
        return lambda lp: grpo_loss(lp, logp, logp, adv, mask, 0.2, 0.0, lt, max_len=4)[0]
    g = _tok_grads(loss("grpo"), logp)
    np.testing.assert_allclose(g.tolist(), [[-1.0, 0, 0, 0], [-1 / 3, -1 / 3, -1 / 3, 0]], rtol=1e-6)
    g = _tok_grads(loss("dr_grpo"), logp)
    np.testing.assert_allclose(g.tolist(), [[-0.25, 0, 0, 0], [-0.25, -0.25, -0.25, 0]], rtol=1e-6)
    # the loss values: −mean_i A·(mean of ρ = 1 over its tokens) = −2; Dr. GRPO: −mean_i A·|y_i|/L = −(2/4 + 6/4)/2
    assert grpo_loss(logp, logp, logp, adv, mask, 0.2, 0.0, "grpo")[0].item() == pytest.approx(-2.0)
    assert grpo_loss(logp, logp, logp, adv, mask, 0.2, 0.0, "dr_grpo", 4)[0].item() == pytest.approx(-1.0)
    assert sequence_means(T([[1.0, 2.0, 3.0]]), T([[1.0, 1.0, 0.0]])).item() == 1.5
    assert sequence_means(T([[1.0, 2.0, 3.0]]), T([[1.0, 1.0, 0.0]]), "dr_grpo", 6).item() == 0.5


def test_grpo_clipping_and_k3_kl_term_by_hand():
    # one token, A = 1: ρ = 1.5 clips at 1.2 → loss −1.2, clipfrac 1; A = −1: max(−1.5·−1, −1.2·−1) = 1.5, no clip
    old = T([[0.0]])
    lp = torch.log(T([[1.5]]))
    mask = T([[1.0]])
    loss, parts = grpo_loss(lp, old, lp, T([1.0]), mask, 0.2, 0.0)
    assert loss.item() == pytest.approx(-1.2) and parts["clipfrac"].item() == 1.0
    loss, parts = grpo_loss(lp, old, lp, T([-1.0]), mask, 0.2, 0.0)
    assert loss.item() == pytest.approx(1.5) and parts["clipfrac"].item() == 0.0
    assert parts["approx_kl"].item() == pytest.approx(0.5 * math.log(1.5) ** 2)
    # the k3 term: π = 0.5, π_ref = 0.25 → r = 0.5: r − 1 − log r = −0.5 + log 2, weighted by β = 0.1, A = 0, ρ = 1
    logp, ref = T([[math.log(0.5)]]), T([[math.log(0.25)]])
    loss, parts = grpo_loss(logp, logp, ref, T([0.0]), mask, 0.2, 0.1)
    assert parts["kl"].item() == pytest.approx(-0.5 + math.log(2))
    assert loss.item() == pytest.approx(0.1 * (-0.5 + math.log(2)))
    # its gradient w.r.t. log π: d/dx (e^{ref − x} − 1 − (ref − x)) = −r + 1 = 0.5, times β
    g = _tok_grads(lambda x: grpo_loss(x, logp, ref, T([0.0]), mask, 0.2, 0.1)[0], logp)
    assert g.item() == pytest.approx(0.1 * 0.5)


def test_rloo_loss_by_hand():
    logp = torch.log(T([[0.5, 0.5, 1.0], [0.25, 1.0, 1.0]]))
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = T([1.0, -2.0])
    # −mean_i A_i·Σ_t log π = −(1·2·log 0.5 + (−2)·log 0.25)/2 = −(−2 log 2 + 4 log 2)/2 = −log 2
    loss, parts = rloo_loss(logp, logp, adv, mask)
    assert loss.item() == pytest.approx(-math.log(2)) and parts["clipfrac"].item() == 0.0
    # gradient: −A_i/B at every real token of sequence i
    g = _tok_grads(lambda x: rloo_loss(x, logp, adv, mask)[0], logp)
    np.testing.assert_allclose(g.tolist(), [[-0.5, -0.5, 0.0], [1.0, 0.0, 0.0]], rtol=1e-6)
    # clipped: on-policy (ρ = 1) the gradient is the same; ρ = e^{0.5} for A > 0 clips at 1.2
    gc = _tok_grads(lambda x: rloo_loss(x, logp, adv, mask, clip=0.2)[0], logp)
    np.testing.assert_allclose(gc.tolist(), g.tolist(), rtol=1e-6)
    loss, parts = rloo_loss(logp + T([[0.25, 0.25, 0.0], [0.0, 0.0, 0.0]]), logp, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx((-1.0 * 1.2 + 2.0 * 1.0) / 2) and parts["clipfrac"].item() == 0.5


@pytest.mark.parametrize("cls,kw,msg", [
    (GRPOConfig, {"batch_size": 10, "group_size": 4}, "not a multiple of --group-size"),
    (GRPOConfig, {"group_size": 1}, "--group-size must be"),
    (GRPOConfig, {"loss_type": "dapo"}, "--loss-type must be one of"),
    (GRPOConfig, {"batch_size": 16, "minibatch_size": 32}, "must be ≤"),
    (RLOOConfig, {"epochs": 2}, "reuses each batch"),
    (RLOOConfig, {"batch_size": 6, "group_size": 4}, "not a multiple"),
])
def test_config_validation(cls, kw, msg):
    with pytest.raises(SuperalignError, match=msg):
        cls(**kw)


# ----------------------------------------------------------------------------- training on the tiny testbed LM


@pytest.fixture(scope="module")
def tiny_rm(tiny_lm):
    rng = np.random.default_rng(0)
    gold, pairs = GoldReward(), []
    while len(pairs) < 200:
        p, a = split_sentence(sample_sentence(rng))
        _, b = split_sentence(sample_sentence(rng))
        ga, gb = gold(p, a), gold(p, b)
        if ga != gb:
            pairs.append({"prompt": p, "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
    tok, rm = load_reward_model(tiny_lm)
    train_reward_model(rm, tok, rdata.preferences_to_rankings(pairs), RewardTrainConfig(epochs=2, batch_size=16,
                       lr=3e-3), progress=False)
    return rm


def _setup(tiny_lm, tiny_rm):
    tok, policy = load_lm(tiny_lm)
    return tok, policy, copy.deepcopy(policy), copy.deepcopy(tiny_rm)


def GOLD(prompts, responses, ended):
    return GoldReward().batch(prompts, responses, ended)


@pytest.mark.parametrize("train,cfg", [
    (train_grpo, GRPOConfig(updates=12, batch_size=16, group_size=4, minibatch_size=8, lr=3e-3, response_len=8,
                            kl_coef=0.0, seed=0)),
    (train_grpo, GRPOConfig(updates=12, batch_size=16, group_size=4, minibatch_size=8, lr=3e-3, response_len=8,
                            kl_coef=0.0, loss_type="dr_grpo", seed=0)),
    (train_rloo, RLOOConfig(updates=12, batch_size=16, group_size=4, minibatch_size=8, lr=3e-3, response_len=8,
                            kl_coef=0.0, seed=0)),
], ids=["grpo", "dr_grpo", "rloo"])
def test_training_raises_the_proxy_score(tiny_lm, tiny_rm, train, cfg):
    tok, policy, ref, rm = _setup(tiny_lm, tiny_rm)
    res = train(policy, ref, rm, tok, sample_prompts(64, 0), cfg, progress=False)
    first = np.mean([r["objective/scores"] for r in res.history[:2]])
    last = np.mean([r["objective/scores"] for r in res.history[-2:]])
    assert last > first + 0.2


@pytest.mark.parametrize("train,cfg", [
    (train_grpo, GRPOConfig(updates=3, batch_size=8, group_size=4, minibatch_size=4, epochs=2, lr=1e-3,
                            response_len=8, kl_coef=0.1, eval_every=3, sample_every=1, seed=1)),
    (train_rloo, RLOOConfig(updates=3, batch_size=8, group_size=2, epochs=2, clip=0.2, lr=1e-3, response_len=8,
                            kl_coef=0.1, eval_every=3, seed=1)),
], ids=["grpo", "rloo"])
def test_runs_logs_and_is_deterministic(tiny_lm, tiny_rm, train, cfg):
    runs = []
    for _ in range(2):
        tok, policy, ref, rm = _setup(tiny_lm, tiny_rm)
        runs.append(train(policy, ref, rm, tok, sample_prompts(32, 0), cfg, gold=GOLD,
                          eval_hook=lambda u, m: {"ok": 1.0}, progress=False))
    h = runs[0].history
    assert len(h) == 3 and runs[0].evals == [{"update": 3, "ok": 1.0}] and runs[0].ema is None
    keys = ["objective/kl", "objective/kl_k3", "objective/entropy", "objective/scores", "reward/raw", "gold",
            "eos_rate", "response_len", "policy/clipfrac", "policy/approx_kl", "loss/policy", "reward/group_std",
            "frac_zero_std", "time_s", "beta", "episodes"]
    keys += ["loss/kl"] if train is train_grpo else ["objective/rlhf_reward"]
    for key in keys:
        assert all(np.isfinite(r[key]) for r in h), key
    assert h[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the first rollout
    assert h[-1]["episodes"] == 3 * cfg.batch_size
    for key in ("objective/scores", "loss/policy", "gold", "policy/clipfrac"):
        assert [r[key] for r in h] == [r[key] for r in runs[1].history], key
    assert runs[0].samples and {"response", "advantage"} <= set(runs[0].samples[0])


def test_grpo_samples_groups_of_one_prompt(tiny_lm, tiny_rm):
    tok, policy, ref, rm = _setup(tiny_lm, tiny_rm)
    cfg = GRPOConfig(updates=1, batch_size=8, group_size=4, minibatch_size=None, lr=1e-3, response_len=8,
                     sample_every=1)
    res = train_grpo(policy, ref, rm, tok, sample_prompts(32, 0), cfg, progress=False)
    assert len({s["prompt"] for s in res.samples}) == 1  # the table shows one group: 4 answers to one prompt
    assert sum(s["advantage"] for s in res.samples) == pytest.approx(0.0, abs=1e-5)


# ----------------------------------------------------------------------------- the CLI jobs


def _cli_base(tmp_path):
    return ["--home", str(tmp_path / "home"), "--progress", "false"]


@pytest.fixture(scope="module")
def tiny_rm_dir(tiny_lm, tiny_rm, tmp_path_factory):
    tok, _ = load_lm(tiny_lm)
    path = tmp_path_factory.mktemp("critic_free_rm") / "rm"
    tiny_rm.save(path, tok)
    return str(path)


@pytest.mark.parametrize("method,extra", [
    ("grpo", ["--loss-type", "dr_grpo", "--minibatch-size", "4"]),
    ("rloo", []),
])
def test_cli_end_to_end(tiny_lm, tiny_rm_dir, tmp_path, method, extra):
    args = ["rlhf", method, *_cli_base(tmp_path), "--policy", tiny_lm, "--reward", tiny_rm_dir, "--updates", "2",
            "--batch-size", "8", "--group-size", "4", "--response-len", "6", "--eval-every", "1", *extra]
    assert main(args) == 0
    runs = RunStore(tmp_path / "home", create=False).list()
    assert [r["kind"] for r in runs] == [f"rlhf-{method}"] and runs[0]["status"] == "done"
    r = runs[0]
    m = r["metrics"]
    assert [e["update"] for e in m["evals"]] == [1, 2]
    assert set(m["evals"][0]) == {"update", "kl", "proxy", "gold", "eos_rate"}
    for k in ("final_gold", "initial_gold", "final_proxy", "final_kl", "kl", "score", "eos_rate", "episodes"):
        assert np.isfinite(m[k]), k
    assert len(m["history"]) == 2 and m["samples"]
    _, model = load_lm(r["artefacts"]["model"])  # a loadable policy
    assert main(args) == 0  # cached: still one run
    assert len(RunStore(tmp_path / "home", create=False).list()) == 1


@pytest.mark.parametrize("args,msg", [
    (["--batch-size", "10", "--group-size", "4"], "not a multiple of --group-size"),
    (["--group-size", "1"], "--group-size must be"),
])
@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, method, args, msg):
    home = tmp_path / "home"
    assert main(["rlhf", method, "--home", str(home), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1
    assert not home.exists()


def test_cli_grpo_with_lora_trains_only_adapters_and_saves_a_merged_model(tiny_lm, tiny_rm_dir, tmp_path):
    from safetensors.torch import load_file

    args = ["rlhf", "grpo", *_cli_base(tmp_path), "--policy", tiny_lm, "--reward", tiny_rm_dir, "--updates", "2",
            "--batch-size", "8", "--group-size", "4", "--minibatch-size", "4", "--response-len", "6", "--lr", "1e-2",
            "--lora-rank", "4", "--eval-every", "2"]
    assert main(args) == 0
    run = RunStore(tmp_path / "home", create=False).list()[0]
    assert run["config"]["lora_rank"] == 4 and [e["update"] for e in run["metrics"]["evals"]] == [2]
    path = run["artefacts"]["model"]
    _, model = load_lm(path)  # a plain causal LM: the adapters are merged in
    assert not any("lora" in k for k in model.state_dict())
    before, after = load_file(f"{tiny_lm}/model.safetensors"), load_file(f"{path}/model.safetensors")
    assert set(before) == set(after)
    frozen = [k for k in before if "wte" in k or "wpe" in k or ".ln_" in k]  # no LoRA there: unchanged
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    adapted = [k for k in before if k.endswith("attn.c_attn.weight") or k.endswith("mlp.c_fc.weight")]
    assert adapted and all(not torch.equal(before[k], after[k]) for k in adapted)


def test_grpo_two_processes_train_like_one(tiny_lm, tiny_rm_dir, tmp_path, accelerate_two):
    """Groups are sharded whole, so each process's advantages are exact: 2 processes log what 1 process does with the
    same global batch (up to float rounding of the per-shard prompt padding)."""
    args = ["rlhf", "grpo", "--progress", "false", "--policy", tiny_lm, "--reward", tiny_rm_dir, "--updates", "3",
            "--batch-size", "8", "--group-size", "2", "--minibatch-size", "4", "--epochs", "2", "--response-len",
            "6", "--lr", "1e-3", "--seed", "3"]
    assert main([*args, "--home", str(tmp_path / "one")]) == 0
    out = accelerate_two([*args, "--home", str(tmp_path / "two")], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    one = RunStore(tmp_path / "one", create=False).list()
    two = RunStore(tmp_path / "two", create=False).list()
    assert len(two) == 1 and two[0]["status"] == "done" and two[0]["compute"]["world_size"] == 2
    h1, h2 = one[0]["metrics"]["history"], two[0]["metrics"]["history"]
    for key in ("objective/scores", "objective/kl", "loss/policy", "loss/kl", "policy/clipfrac", "reward/group_std"):
        np.testing.assert_allclose([r[key] for r in h2], [r[key] for r in h1], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("train,cfg", [
    (train_grpo, GRPOConfig(updates=2, batch_size=8, group_size=4, minibatch_size=4, lr=1e-3, response_len=6)),
    (train_rloo, RLOOConfig(updates=2, batch_size=8, group_size=4, lr=1e-3, response_len=6)),
], ids=["grpo", "rloo"])
def test_bf16_autocast_runs_with_fp32_master_weights(tiny_lm, tiny_rm, device, train, cfg):
    from superalign.train.distributed import Runtime

    rt = Runtime.create(device, "bf16")
    tok, policy = load_lm(tiny_lm, device=rt.device)
    ref, rm = copy.deepcopy(policy).to(torch.bfloat16), copy.deepcopy(tiny_rm).to(rt.device)
    res = train(policy, ref, rm, tok, sample_prompts(16, 0), cfg, gold=GOLD, progress=False, rt=rt)
    assert policy.transformer.wte.weight.dtype == torch.float32
    for r in res.history:
        assert all(np.isfinite(r[k]) for k in ("objective/kl", "objective/scores", "loss/policy", "gold")), r
