"""LoRA policies for PPO and DPO (`--lora-rank`): only the adapters train, the saved model is the merged plain model,
and full-finetuning run ids are those stored before LoRA existed."""

import copy
import json

import pytest
import torch

from superalign.cli import main
from superalign.models.lm import load_lm
from superalign.models.lora import apply_lora, merge_lora
from superalign.rlhf.ppo import PPOConfig, train_ppo
from superalign.rlhf.reward import load_reward_model
from superalign.rlhf.testbed import sample_prompts


def _split(state: dict) -> tuple[dict, dict]:
    """(base weights under their plain names, adapter weights) of a peft model's state dict."""
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v.clone() for k, v in state.items()
            if "lora_" not in k}
    return base, {k: v.clone() for k, v in state.items() if "lora_" in k}


def test_lora_ppo_trains_only_the_adapters_and_merges_into_a_plain_model(tiny_lm, tmp_path):
    from superalign.models.lm import save_lm

    tok, policy = load_lm(tiny_lm)
    plain = copy.deepcopy(policy.state_dict())
    _, ref = load_lm(tiny_lm)
    _, rm = load_reward_model(tiny_lm)
    policy = apply_lora(policy, 4)
    base0, lora0 = _split(policy.state_dict())
    # the EMA and PPO-ptx paths too: both must leave the frozen weights alone
    cfg = PPOConfig(updates=2, batch_size=4, minibatch_size=2, ppo_epochs=1, lr=1e-2, response_len=6,
                    ema_decay=0.5, ptx_coef=0.5)
    res = train_ppo(policy, ref, rm, tok, sample_prompts(8, 0), cfg, ptx_rows=[{"text": "the food was good ."}],
                    progress=False)
    base1, lora1 = _split(policy.state_dict())
    assert base1.keys() == plain.keys() and all(torch.equal(base1[k], plain[k]) for k in plain)
    assert any(not torch.equal(lora0[k], lora1[k]) for k in lora0)  # the adapters moved
    ema_base, ema_lora = _split(res.ema.state_dict())
    assert all(torch.equal(ema_base[k], plain[k]) for k in plain)
    assert any(not torch.equal(ema_lora[k], lora1[k]) for k in lora1)  # a lagging average of the adapters
    merged = merge_lora(policy)
    assert type(merged).__name__ == "GPT2LMHeadModel"
    save_lm(merged, tok, tmp_path / "m")
    assert not (tmp_path / "m" / "adapter_config.json").exists()
    _, loaded = load_lm(str(tmp_path / "m"))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in merged.state_dict().items())


def _check_saved_lora_policy(saved: str, initial: str, rank: int) -> None:
    """The saved model is a plain GPT-2 whose linear weights moved by an update of rank ≤ ``rank`` (the merged
    B·A) and whose embeddings, norms and LM head are the initial ones."""
    _, a = load_lm(initial)
    _, b = load_lm(saved)
    assert type(b).__name__ == "GPT2LMHeadModel" and a.state_dict().keys() == b.state_dict().keys()
    moved = 0
    for k, w0 in a.state_dict().items():
        w1 = b.state_dict()[k]
        if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            assert torch.linalg.matrix_rank(w1 - w0, atol=1e-6) <= rank, k
            moved += not torch.equal(w0, w1)
        else:
            assert torch.equal(w0, w1), k
    assert moved > 0


def test_cli_ppo_and_dpo_with_lora(tiny_lm, tmp_path, capsys):
    from superalign.rlhf.jobs import DPOJob, PPOJob
    from superalign.runs import RunStore

    home = tmp_path / "home"
    base = ["--home", str(home), "--progress", "false", "--policy", tiny_lm, "--lora-rank", "4"]
    assert main(["rlhf", "ppo", *base, "--reward", tiny_lm, "--updates", "2", "--batch-size", "4",
                 "--minibatch-size", "2", "--response-len", "6", "--lr", "1e-2"]) == 0
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": "the food was", "chosen": c, "rejected": r}) + "\n"
                             for c, r in [("very good .", "bad ."), ("great .", "awful and dull .")] * 4))
    assert main(["rlhf", "dpo", *base, "--data", str(pairs), "--batch-size", "4", "--lr", "1e-2"]) == 0
    capsys.readouterr()
    store = RunStore(home)
    ppo, = store.list(kind="rlhf-ppo")
    dpo, = store.list(kind="rlhf-dpo")
    for run in (ppo, dpo):
        assert run["config"]["lora_rank"] == 4
        _check_saved_lora_policy(run["artefacts"]["model"], tiny_lm, 4)
    # full-finetuning ids are those of the jobs before LoRA existed
    assert "lora_rank" not in PPOJob(home=str(home)).key() and "lora_alpha" not in DPOJob(home=str(home)).key()
    assert PPOJob(home=str(home), lora_rank=8).key()["lora_rank"] == 8


def test_lora_ppo_flops_count_the_adapters_weight_gradients_only(tiny_lm):
    """Same seed, one update: LoRA starts as the base model (B = 0), so both runs see the same rollout tokens; a
    training pass of the policy costs (4·P + 2·P_adapters)·tokens against 6·P·tokens (P of the LoRA model includes
    its adapters), and the value model, which LoRA PPO still trains in full, costs the same in both."""
    from superalign.runs.ledger import open_ledger, param_count, trainable_count

    stages = []
    for rank in (0, 4):
        tok, policy = load_lm(tiny_lm)
        _, ref = load_lm(tiny_lm)
        _, rm = load_reward_model(tiny_lm)
        full_p = param_count(policy)
        policy = apply_lora(policy, rank)
        cfg = PPOConfig(updates=1, batch_size=4, minibatch_size=2, ppo_epochs=1, response_len=6, reward_norm=False)
        with open_ledger() as led:
            train_ppo(policy, ref, rm, tok, sample_prompts(8, 0), cfg, progress=False)
        stages.append(led.stages)
    P, T = param_count(policy), trainable_count(policy)
    assert 0 < T < P / 5
    # the "policy" stage: a forward for the old log-probs (2·P per token) and one training pass (one PPO epoch)
    assert stages[1]["policy"] / stages[0]["policy"] == pytest.approx((2 * P + 4 * P + 2 * T) / (8 * full_p),
                                                                      rel=1e-9)
    assert stages[1]["value"] == stages[0]["value"]


@pytest.mark.cuda
def test_lora_ppo_and_online_dpo_on_cuda_in_bf16(tiny_lm, tmp_path, capsys):
    """The same CLI on a GPU: bf16 autocast over fp32 master weights of the adapters, a bf16 reference and reward
    model; the saved policy is the merged plain model with a rank-≤4 update."""
    import math

    from superalign.runs import RunStore

    home = tmp_path / "home"
    base = ["--home", str(home), "--progress", "false", "--policy", tiny_lm, "--reward", tiny_lm, "--lora-rank", "4",
            "--device", "cuda", "--dtype", "bf16", "--updates", "2", "--batch-size", "4", "--response-len", "6",
            "--lr", "1e-2"]
    assert main(["rlhf", "ppo", *base, "--minibatch-size", "2", "--ema-decay", "0.5"]) == 0
    assert main(["rlhf", "online-dpo", *base]) == 0
    capsys.readouterr()
    for kind in ("rlhf-ppo", "rlhf-online-dpo"):
        run, = RunStore(home).list(kind=kind)
        assert run["compute"]["dtype"] == "bf16" and run["compute"]["device"].startswith("cuda")
        assert all(math.isfinite(r["objective/kl"]) for r in run["metrics"]["history"])
        _check_saved_lora_policy(run["artefacts"]["model"], tiny_lm, 4)
