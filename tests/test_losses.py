"""Golden tests: every loss against a hand computation."""

import math

import numpy as np
import pytest
import torch

from superalign.errors import SuperalignError
from superalign.train.losses import aux_conf_loss, get_loss, hardened_predictions, product_loss, warmup_coef, xent_loss

LOGITS = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.5], [3.0, 1.0]])
WEAK = torch.tensor([0.9, 0.2, 0.6, 0.3])


def softmax1(logits):
    return math.exp(logits[1]) / (math.exp(logits[0]) + math.exp(logits[1]))


def ce(logits, q1):
    p1 = softmax1(logits)
    return -(q1 * math.log(p1) + (1 - q1) * math.log(1 - p1))


def test_xent_matches_hand_computation():
    want = np.mean([ce(row.tolist(), q) for row, q in zip(LOGITS, WEAK.tolist())])
    assert xent_loss(LOGITS, WEAK).item() == pytest.approx(want, rel=1e-6)


def test_warmup_is_a_linear_ramp_not_a_jump():
    assert warmup_coef(0.0, 0.75, 0.2) == 0.0
    assert warmup_coef(0.1, 0.75, 0.2) == pytest.approx(0.375)
    assert warmup_coef(0.2, 0.75, 0.2) == pytest.approx(0.75)
    assert warmup_coef(0.9, 0.75, 0.2) == pytest.approx(0.75)
    # continuity at the end of warm-up (openai/weak-to-strong jumps from 0.2 to 0.75 there)
    assert warmup_coef(0.1999, 0.75, 0.2) == pytest.approx(0.75, abs=1e-3)
    assert warmup_coef(0.3, 0.5, 0.0) == 0.5


def test_hardened_predictions_match_weak_class_balance():
    p1 = torch.tensor([0.1, 0.7, 0.4, 0.9, 0.55, 0.2])
    h = hardened_predictions(p1, 0.5)
    assert h.tolist() == [0, 1, 0, 1, 1, 0]  # the 3 most positive are positives
    assert hardened_predictions(p1, 1 / 6).tolist() == [0, 0, 0, 1, 0, 0]
    assert hardened_predictions(p1, 0.0).sum() == 0
    assert hardened_predictions(p1, 1.0).sum() == 6


def test_aux_conf_golden():
    # weak mean = 0.5 → the 2 examples with highest student P(1) are hardened to 1: rows 0 (0.88) and 2 (0.62)
    step_frac, alpha, warm = 0.1, 0.75, 0.2
    a = alpha * step_frac / warm  # 0.375
    hard = [1, 0, 1, 0]
    want = np.mean([(1 - a) * ce(row.tolist(), q) + a * ce(row.tolist(), h)
                    for row, q, h in zip(LOGITS, WEAK.tolist(), hard)])
    got = aux_conf_loss(LOGITS, WEAK, step_frac, alpha=alpha, warmup_frac=warm).item()
    assert got == pytest.approx(want, rel=1e-6)
    # at step 0 it is plain cross-entropy on the weak labels
    assert aux_conf_loss(LOGITS, WEAK, 0.0).item() == pytest.approx(xent_loss(LOGITS, WEAK).item(), rel=1e-6)


def test_aux_conf_gradient_does_not_flow_through_targets():
    logits = LOGITS.clone().requires_grad_(True)
    aux_conf_loss(logits, WEAK, 1.0, alpha=1.0).backward()
    # with α=1 the target is the hard labels: grad of mean CE = (softmax − onehot)/B
    p = torch.softmax(LOGITS, -1)
    onehot = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]], dtype=torch.float)
    assert torch.allclose(logits.grad, (p - onehot) / 4, atol=1e-6)


def test_product_loss_golden():
    beta = 1.0
    want = []
    for row, q in zip(LOGITS.tolist(), WEAK.tolist()):
        p1 = softmax1(row)
        t1 = p1 ** beta * q
        t0 = (1 - p1) ** beta * (1 - q)
        want.append(ce(row, t1 / (t0 + t1)))
    assert product_loss(LOGITS, WEAK, 0.5, beta=beta, warmup_frac=0.2).item() == pytest.approx(np.mean(want), rel=1e-6)
    assert product_loss(LOGITS, WEAK, 0.0).item() == pytest.approx(xent_loss(LOGITS, WEAK).item(), rel=1e-6)


def test_get_loss_unknown():
    with pytest.raises(SuperalignError, match="unknown loss"):
        get_loss("nope")
