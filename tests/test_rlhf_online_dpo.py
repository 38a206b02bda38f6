"""Online DPO (`superalign rlhf online-dpo`): pair construction, the first loss, training on the tiny testbed LM,
the CLI end to end and bad input."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from superalign.cli import main
from superalign.errors import SuperalignError
from superalign.models.lm import load_lm
from superalign.rlhf import data as rdata
from superalign.rlhf.online_dpo import OnlineDPOConfig, online_pairs, train_online_dpo
from superalign.rlhf.reward import RewardTrainConfig, load_reward_model, train_reward_model
from superalign.rlhf.testbed import GoldReward, sample_prompts, sample_sentence, split_sentence


@pytest.fixture(scope="module")
def trained_rm(tiny_lm):
    """A reward model on the tiny LM trained on 200 gold-labelled pairs (state dict: each test loads a fresh copy)."""
    rng, gold, pairs = np.random.default_rng(0), GoldReward(), []
    while len(pairs) < 200:
        p, a = split_sentence(sample_sentence(rng))
        _, b = split_sentence(sample_sentence(rng))
        ga, gb = gold(p, a), gold(p, b)
        if ga != gb:
            pairs.append({"prompt": p, "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
    tok, rm = load_reward_model(tiny_lm)
    train_reward_model(rm, tok, rdata.preferences_to_rankings(pairs),
                       RewardTrainConfig(epochs=2, batch_size=16, lr=3e-3), progress=False)
    return copy.deepcopy(rm.state_dict())


def _setup(tiny_lm, rm_state):
    tok, policy = load_lm(tiny_lm)
    ref = copy.deepcopy(policy)
    _, rm = load_reward_model(tiny_lm)
    rm.load_state_dict(rm_state)
    return tok, policy, ref, rm


def test_pairs_choose_the_higher_score_and_mark_ties():
    # prompt 0: second sample wins; prompt 1: first wins; prompt 2: a tie (no preference)
    chosen, rejected, valid = online_pairs(torch.tensor([1.0, 2.0, 3.0, 1.0, 0.5, 0.5]))
    assert chosen.tolist() == [1, 2, 4] and rejected.tolist() == [0, 3, 5]
    assert valid.tolist() == [True, True, False]


def test_online_dpo_starts_at_log2_and_raises_the_proxy(tiny_lm, trained_rm):
    tok, policy, ref, rm = _setup(tiny_lm, trained_rm)
    cfg = OnlineDPOConfig(updates=12, batch_size=16, lr=3e-3, beta=0.1, response_len=8, seed=0, sample_every=6)
    gold = lambda p, c, e: GoldReward().batch(p, c, e)  # noqa: E731
    res = train_online_dpo(policy, ref, rm, tok, sample_prompts(64, 0), cfg, gold=gold, progress=False)
    h = res.history
    assert h[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference: h = 0 for every pair
    assert h[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert h[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6) and h[-1]["episodes"] == 12 * 2 * 16
    assert np.mean([r["objective/scores"] for r in h[-3:]]) > np.mean([r["objective/scores"] for r in h[:2]]) + 0.2
    assert h[-1]["objective/kl"] > 0 and all(np.isfinite(r["gold"]) for r in h)
    assert {s["pair"] for s in res.samples} == {"chosen", "rejected"}
    assert all(s["score"] >= r["score"] for s, r in zip(res.samples[0::2], res.samples[1::2]))


def test_online_ipo_starts_at_its_target_squared(tiny_lm, trained_rm):
    tok, policy, ref, rm = _setup(tiny_lm, trained_rm)
    cfg = OnlineDPOConfig(updates=1, batch_size=8, lr=1e-3, beta=0.5, loss="ipo", response_len=6)
    res = train_online_dpo(policy, ref, rm, tok, sample_prompts(16, 0), cfg, progress=False)
    assert res.history[0]["loss"] == pytest.approx(1.0, abs=1e-4)  # (0 − 1/(2·0.5))²


def test_an_update_whose_pairs_all_tie_takes_no_step(tiny_lm, trained_rm):
    tok, policy, ref, rm = _setup(tiny_lm, trained_rm)
    with torch.no_grad():  # a constant reward model: every pair ties
        rm.head.weight.zero_()
        rm.head.bias.zero_()
    before = copy.deepcopy(policy.state_dict())
    cfg = OnlineDPOConfig(updates=2, batch_size=4, lr=1e-2, response_len=6, eos_penalty=0.0)
    res = train_online_dpo(policy, ref, rm, tok, sample_prompts(8, 0), cfg, progress=False)
    assert all(r["pairs/ties"] == 1.0 and r["loss"] is None for r in res.history)
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("kw, msg", [({"batch_size": 0}, "--batch-size"), ({"loss": "hinge"}, "loss"),
                                     ({"beta": 0.0}, "beta"), ({"temperature": -1.0}, "temperature")])
def test_online_dpo_config_validation(kw, msg):
    with pytest.raises(SuperalignError, match=msg):
        OnlineDPOConfig(**kw)


def test_cli_online_dpo_end_to_end_and_bad_input(tiny_lm, tmp_path, capsys):
    from superalign.rlhf.jobs import OnlineDPOJob
    from superalign.runs import RunStore

    home = tmp_path / "home"
    base = ["rlhf", "online-dpo", "--progress", "false", "--policy", tiny_lm, "--reward", tiny_lm,
            "--updates", "2", "--batch-size", "4", "--response-len", "6"]
    assert main(base + ["--home", str(home), "--eval-every", "2", "--loss", "ipo", "--beta", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "final_gold" in out
    run, = RunStore(home).list(kind="rlhf-online-dpo")
    m = run["metrics"]
    assert [e["update"] for e in m["evals"]] == [2]
    assert set(m["evals"][0]) == {"update", "kl", "proxy", "gold", "eos_rate"}
    assert m["history"][0]["loss"] == pytest.approx(1.0, abs=1e-4) and "accuracy_last" in m
    tok, model = load_lm(run["artefacts"]["model"])  # a plain causal LM, loadable as any policy
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert "lora_rank" not in OnlineDPOJob(home=str(home)).key()
    bad_home = tmp_path / "bad"
    for args, msg in ((["--batch-size", "0"], "--batch-size"),
                      (["--prompts", str(tmp_path / "none.jsonl")], "does not exist"),
                      (["--lora-alpha", "8"], "--lora-alpha is set"),
                      (["--policy", "hf:./nope"], "does not exist")):
        assert main(base + ["--home", str(bad_home)] + args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
    with pytest.raises(SystemExit) as exit_:
        main(base + ["--home", str(bad_home), "--loss", "hinge"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert not bad_home.exists()


@pytest.mark.slow  # two launched processes each import torch and train: ~30-50 s on a busy 2-core machine
def test_two_processes_train_a_lora_policy_like_one(tiny_lm, tmp_path, accelerate_two):
    """DDP over a peft model: both samples of a prompt on one process, the noise of one process, global means."""
    from superalign.runs import RunStore

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in sample_prompts(6, 1)))
    args = ["rlhf", "online-dpo", "--progress", "false", "--policy", tiny_lm, "--reward", tiny_lm, "--lora-rank", "4",
            "--prompts", str(prompts), "--updates", "3", "--batch-size", "3", "--response-len", "6", "--lr", "1e-2",
            "--device", "cpu"]
    assert main(args + ["--home", str(tmp_path / "one")]) == 0
    out = accelerate_two(args + ["--home", str(tmp_path / "two")], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    (a,), (b,) = RunStore(tmp_path / "one").list(), RunStore(tmp_path / "two").list()
    assert b["compute"]["world_size"] == 2
    for key in ("loss", "objective/kl", "objective/scores", "rewards/margins"):
        np.testing.assert_allclose([r[key] for r in b["metrics"]["history"]],
                                   [r[key] for r in a["metrics"]["history"]], rtol=1e-4, atol=1e-6, err_msg=key)
