"""LoRA adapters for causal-LM policies (superalign/models/lora.py) and the training-FLOP count of frozen weights."""

from __future__ import annotations

import pytest
import torch

from superalign.errors import SuperalignError
from superalign.models.lora import LoRAOptions, apply_lora, check_lora, is_lora, lora_key, merge_lora
from superalign.runs.ledger import count_training, open_ledger, param_count, trainable_count


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()


def test_rank_zero_is_the_model_itself_and_keeps_old_run_ids():
    m = _gpt2()
    assert apply_lora(m, 0) is m and merge_lora(m) is m
    assert lora_key({"lr": 1.0, "lora_rank": 0, "lora_alpha": None}) == {"lr": 1.0}
    assert lora_key({"lr": 1.0, "lora_rank": 4, "lora_alpha": None}) == {"lr": 1.0, "lora_rank": 4, "lora_alpha": None}


def test_adapters_train_alone_and_merge_into_a_plain_model():
    m = _gpt2()
    base = {k: v.clone() for k, v in m.state_dict().items()}
    p = apply_lora(m, 4)
    assert is_lora(p)
    names = [n for n, q in p.named_parameters() if q.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert not any("wte" in n or "lm_head" in n for n in names)
    # peft starts B at 0: the wrapped model computes what the base did
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.allclose(p(ids).logits, _gpt2()(ids).logits, atol=1e-6)
    opt = torch.optim.SGD([q for q in p.parameters() if q.requires_grad], lr=1.0)
    for _ in range(2):
        loss = p(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        want = p(ids).logits
    for k, v in p.get_base_model().state_dict().items():  # frozen weights untouched
        if "lora_" not in k and "base_layer" in k:
            assert torch.equal(v, base[k.replace(".base_layer", "")])
    merged = merge_lora(p)
    assert not is_lora(merged) and set(merged.state_dict()) == set(base)
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, want, atol=1e-5)
    assert not torch.equal(merged.state_dict()["transformer.h.0.attn.c_attn.weight"],
                           base["transformer.h.0.attn.c_attn.weight"])


def test_training_flops_count_weight_gradients_of_trainable_parameters_only():
    m = _gpt2()
    P = param_count(m)
    with open_ledger() as led:
        count_training(m, 10)
    assert led.summary()["flops_total"] == pytest.approx(6 * P * 10)
    p = apply_lora(m, 2)
    T, P2 = trainable_count(p), param_count(p)
    assert 0 < T < P2 // 4
    with open_ledger() as led:
        count_training(p, 10)
    assert led.summary()["flops_total"] == pytest.approx((4 * P2 + 2 * T) * 10)


@pytest.mark.parametrize("rank,alpha,msg", [(-1, None, "--lora-rank"), (0, 16.0, "--lora-alpha is set"),
                                            (4, -2.0, "--lora-alpha")])
def test_bad_lora_options_are_one_line_errors(rank, alpha, msg):
    with pytest.raises(SuperalignError, match=msg):
        check_lora(LoRAOptions(lora_rank=rank, lora_alpha=alpha))
