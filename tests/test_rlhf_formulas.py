"""Golden tests: every RLHF formula against a hand computation."""

import itertools
import math

import numpy as np
import pytest
import torch

from superalign.rlhf.bon import bon_expected, bon_weights, fit_bon, fit_rl, kl_bon
from superalign.rlhf.dpo import dpo_loss, ipo_loss
from superalign.rlhf.ppo import (
    AdaptiveKL,
    ema_update,
    gae,
    kl_k1,
    kl_k3,
    masked_mean,
    per_token_rewards,
    policy_loss,
    value_loss,
    whiten,
)
from superalign.rlhf.reward import last_token_index, ranking_loss
from superalign.rlhf.testbed import GoldReward, label_pairs

T = torch.tensor


def test_kl_estimators_by_hand():
    logp, ref = T([math.log(0.5)]), T([math.log(0.25)])
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    # r = π_ref/π = 0.5 → r − 1 − log r = −0.5 + log 2
    assert kl_k3(logp, ref).item() == pytest.approx(-0.5 + math.log(2))
    assert kl_k3(ref, logp).item() == pytest.approx(1.0 - math.log(2))  # r = 2
    assert kl_k3(logp, logp).item() == 0.0


def test_kl_estimators_are_unbiased_for_the_sequence_kl():
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    lp, lq = p.log(), q.log()
    # expectation under p of each estimator equals KL(p‖q)
    assert float((p * kl_k1(lp, lq)).sum()) == pytest.approx(exact, abs=1e-6)
    assert float((p * kl_k3(lp, lq)).sum()) == pytest.approx(exact, abs=1e-6)


def test_whiten_by_hand():
    x, m = T([[1.0, 2.0, 3.0, 4.0]]), torch.ones(1, 4)
    sd = math.sqrt(5 / 3)  # unbiased variance of 1..4
    assert whiten(x, m).tolist()[0] == pytest.approx([(v - 2.5) / sd for v in (1, 2, 3, 4)], abs=1e-6)
    x, m = T([[1.0, 2.0, 100.0]]), T([[1.0, 1.0, 0.0]])
    assert whiten(x, m).tolist()[0] == pytest.approx([-math.sqrt(0.5), math.sqrt(0.5), 0.0], abs=1e-6)
    assert whiten(x, m, shift_mean=False).tolist()[0][:2] == pytest.approx([1.5 - math.sqrt(.5), 1.5 + math.sqrt(.5)],
                                                                         abs=1e-6)


def test_gae_by_hand():
    r, v, m = T([[0.0, 0.0, 1.0]]), T([[0.5, 0.6, 0.7]]), torch.ones(1, 3)
    adv, ret = gae(r, v, m, gamma=1.0, lam=0.95)
    # t=2: 1 − .7 = .3;  t=1: (0 + .7 − .6) + .95·.3 = .385;  t=0: (.6 − .5) + .95·.385 = .46575
    assert adv.tolist()[0] == pytest.approx([0.46575, 0.385, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.96575, 0.985, 1.0])
    # padding after the last real token is terminal and ignored, whatever it holds
    adv, ret = gae(T([[0.0, 1.0, 5.0]]), T([[0.5, 0.6, 9.0]]), T([[1.0, 1.0, 0.0]]), 1.0, 0.95)
    assert adv.tolist()[0] == pytest.approx([0.1 + 0.95 * 0.4, 0.4, 0.0])
    # γ < 1 discounts the next value
    adv, _ = gae(T([[0.0, 1.0]]), T([[0.0, 0.0]]), torch.ones(1, 2), gamma=0.5, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([0.5, 1.0])


def test_per_token_rewards_by_hand():
    r = per_token_rewards(T([2.0]), T([[0.1, 0.2, 0.3]]), T([[1.0, 1.0, 0.0]]), beta=0.5)
    assert r.tolist()[0] == pytest.approx([-0.05, -0.1 + 2.0, 0.0])


def test_policy_loss_by_hand():
    old = T([[0.0]])
    new = old + math.log(1.5)  # ratio 1.5
    loss, cf, akl = policy_loss(new, old, T([[1.0]]), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(-1.2) and cf.item() == 1.0  # clipped at 1.2
    assert akl.item() == pytest.approx(0.5 * math.log(1.5) ** 2)
    loss, cf, _ = policy_loss(new, old, T([[-1.0]]), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(1.5) and cf.item() == 0.0  # pessimistic: unclipped term
    loss, _, _ = policy_loss(old, old, T([[2.0, 7.0]]), T([[1.0, 0.0]]), clip=0.2)
    assert loss.item() == pytest.approx(-2.0)  # masked token ignored


def test_value_loss_by_hand():
    m = torch.ones(1, 1)
    loss, cf = value_loss(T([[1.0]]), T([[0.5]]), T([[0.0]]), m, clip=0.2)
    assert loss.item() == pytest.approx(0.5) and cf.item() == 0.0  # (1−0)² vs (0.7−0)²: unclipped larger
    loss, cf = value_loss(T([[1.0]]), T([[0.5]]), T([[2.0]]), m, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 1.3 ** 2) and cf.item() == 1.0  # clipped 0.7 is further from 2


def test_adaptive_kl_by_hand():
    ctl = AdaptiveKL(0.1, target=1.0, horizon=100)
    assert ctl.update(kl=2.0, n=10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    assert ctl.update(kl=0.9, n=10) == pytest.approx(0.102 * (1 - 0.1 * 0.1))
    assert AdaptiveKL(0.1, None, 100).update(5.0, 10) == 0.1  # fixed β


def test_ema_update():
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        a.weight.fill_(0.0), b.weight.fill_(1.0)
    ema_update(a, b, decay=0.9)
    assert a.weight.item() == pytest.approx(0.1)


def test_masked_mean():
    assert masked_mean(T([1.0, 3.0, 100.0]), T([1.0, 1.0, 0.0])).item() == 2.0


def test_ranking_loss_by_hand():
    scores = T([3.0, 2.0, 0.0, 0.0, 1.0])  # a K=3 ranking (best first) then a K=2 pair scored the wrong way
    loss, acc = ranking_loss(scores, [3, 2])
    nls = lambda x: -math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    g1 = (nls(1.0) + nls(3.0) + nls(2.0)) / 3  # C(3,2) pairs averaged within the prompt
    g2 = nls(-1.0)
    assert loss.item() == pytest.approx((g1 + g2) / 2)  # every prompt weighs the same
    assert acc.item() == pytest.approx(3 / 4)
    loss, _ = ranking_loss(T([1.0, 0.0]), [2], margins=[0.5])
    assert loss.item() == pytest.approx(nls(0.5))


def test_last_token_index_left_and_right_padding():
    assert last_token_index(T([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]])).tolist() == [1, 3, 3]


def test_dpo_loss_by_hand():
    loss, rc, rr = dpo_loss(T([-1.0]), T([-2.0]), T([-1.5]), T([-1.5]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.1)))  # h = 0.5 − (−0.5) = 1
    assert rc.item() == pytest.approx(0.05) and rr.item() == pytest.approx(-0.05)
    loss0, _, _ = dpo_loss(T([-1.0]), T([-1.0]), T([-1.0]), T([-1.0]), beta=0.1)
    assert loss0.item() == pytest.approx(math.log(2))
    ls, _, _ = dpo_loss(T([-1.0]), T([-2.0]), T([-1.5]), T([-1.5]), beta=0.1, label_smoothing=0.2)
    assert ls.item() == pytest.approx(0.8 * math.log(1 + math.exp(-0.1)) + 0.2 * math.log(1 + math.exp(0.1)))


def test_ipo_loss_by_hand():
    # h = (−1 − (−1.5)) − (−2 − (−1.5)) = 1; β = 0.1 → target 1/(2β) = 5; loss = (1 − 5)² = 16
    loss, rc, rr = ipo_loss(T([-1.0]), T([-2.0]), T([-1.5]), T([-1.5]), beta=0.1)
    assert loss.item() == pytest.approx(16.0)
    assert rc.item() == pytest.approx(0.05) and rr.item() == pytest.approx(-0.05)
    at_target, _, _ = ipo_loss(T([0.0]), T([-1.0]), T([0.0]), T([0.0]), beta=0.5)  # h = 1 = 1/(2·0.5)
    assert at_target.item() == pytest.approx(0.0)
    over, _, _ = ipo_loss(T([0.0]), T([-3.0]), T([0.0]), T([0.0]), beta=0.5)  # h = 3 overshoots: penalised too
    assert over.item() == pytest.approx(4.0)


def test_kl_bon_and_weights_by_hand():
    assert kl_bon(1) == 0.0
    assert kl_bon(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_weights(3, 2).tolist() == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert bon_weights(4, 1).tolist() == pytest.approx([0.25] * 4)
    assert bon_weights(5, 5).tolist() == pytest.approx([0, 0, 0, 0, 1.0])


def test_bon_expected_matches_brute_force():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    for n in (1, 2, 3, 7):
        brute = np.mean([np.mean([gold[p][list(s)][np.argmax(proxy[p][list(s)])]
                                  for s in itertools.combinations(range(7), n)]) for p in range(3)])
        assert bon_expected(proxy, gold, n) == pytest.approx(brute)


def test_functional_form_fits_recover_parameters():
    d = np.linspace(0.1, 3, 20)
    f = fit_bon(d, d * (1.0 - 0.5 * d))
    assert (f.alpha, f.beta, f.r2) == pytest.approx((1.0, 0.5, 1.0))
    f = fit_rl(np.r_[0.0, d], np.r_[0.0, d * (1.0 - 0.3 * np.log(d))])
    assert (f.alpha, f.beta) == pytest.approx((1.0, 0.3))


def test_gold_reward_by_hand():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    v = SentimentIntensityAnalyzer()
    g = GoldReward(repeat_penalty=1.0, no_eos_penalty=0.5)
    assert g("the food was", "good good .") == pytest.approx(
        v.polarity_scores("the food was good good .")["compound"] - 1 / 3)
    assert g("the food was", "bad .", ended=False) == pytest.approx(
        v.polarity_scores("the food was bad .")["compound"] - 0.5)
    assert g("the food was", "") == pytest.approx(0.0)


def test_simulated_labellers_follow_bradley_terry():
    rng = np.random.default_rng(0)
    a, b = np.full(20000, 0.3), np.zeros(20000)
    p = label_pairs(a, b, beta=5.0, rng=rng).mean()
    assert p == pytest.approx(1 / (1 + math.exp(-1.5)), abs=0.01)
    assert label_pairs(np.array([1.0, 0.0]), np.array([0.0, 1.0]), math.inf, rng).tolist() == [True, False]
