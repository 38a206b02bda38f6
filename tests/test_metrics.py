"""Golden tests for accuracy, AUROC, PGR, bootstrap CIs and agreement."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from superalign.train.metrics import accuracy, auroc, percentile_ci
from superalign.w2s.pgr import agreement, bootstrap_pgr, pgr


def test_accuracy_golden():
    assert accuracy(np.array([1, 0, 1, 0]), np.array([0.9, 0.4, 0.2, 0.6])) == 0.5
    assert accuracy(np.array([1]), np.array([0.5])) == 0.0  # 0.5 counts as class 0


def test_auroc_golden_with_ties():
    y = np.array([0, 0, 1, 1])
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) → 3/4
    assert auroc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # a tie counts ½: (0.4=0.4) → ½ ; others wins → (1 + 0.5 + 1 + 1) / 4
    assert auroc(y, np.array([0.1, 0.4, 0.4, 0.8])) == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    yy, ss = rng.integers(0, 2, 200), np.round(rng.random(200), 1)
    assert auroc(yy, ss) == pytest.approx(roc_auc_score(yy, ss))
    assert math.isnan(auroc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_pgr_golden_and_guard():
    assert pgr(0.6, 0.7, 0.8) == pytest.approx(0.5)
    assert pgr(0.6, 0.85, 0.8) == pytest.approx(1.25)
    assert pgr(0.6, 0.55, 0.8) == pytest.approx(-0.25)
    assert math.isnan(pgr(0.8, 0.81, 0.805, min_gap=0.02))
    assert math.isnan(pgr(0.8, 0.9, 0.8))
    assert math.isnan(pgr(0.566, 0.528, 0.545, min_gap=0.02))  # ceiling below weak: no sign-flipped PGR


def _seed(rng, n, acc_w, acc_s, acc_c):
    y = rng.integers(0, 2, n)
    mk = lambda a: np.where(rng.random(n) < a, y, 1 - y) * 0.8 + 0.1
    return {"y": y, "p_weak": mk(acc_w), "p_student": mk(acc_s), "p_ceiling": mk(acc_c)}


def test_bootstrap_pgr_point_ci_and_determinism():
    rng = np.random.default_rng(0)
    seeds = [_seed(rng, 500, 0.6, 0.75, 0.9) for _ in range(3)]
    est = bootstrap_pgr(seeds, "acc", n_boot=400, min_gap=0.02)
    w = np.mean([accuracy(s["y"], s["p_weak"]) for s in seeds])
    st = np.mean([accuracy(s["y"], s["p_student"]) for s in seeds])
    c = np.mean([accuracy(s["y"], s["p_ceiling"]) for s in seeds])
    assert est.value == pytest.approx((st - w) / (c - w))
    assert est.ci_low < est.value < est.ci_high
    assert 0.3 < est.value < 0.7 and est.ci_high - est.ci_low < 0.3
    assert len(est.per_seed) == 3
    assert bootstrap_pgr(seeds, "acc", n_boot=400) == est  # deterministic
    a = bootstrap_pgr(seeds, "auroc", n_boot=200)
    assert a.ci_low <= a.ci_high


def test_bootstrap_pgr_guard_when_gap_tiny():
    rng = np.random.default_rng(1)
    s = _seed(rng, 300, 0.8, 0.8, 0.8)
    s["p_ceiling"] = s["p_weak"].copy()
    est = bootstrap_pgr([s], "acc", n_boot=100)
    assert math.isnan(est.value) and math.isnan(est.ci_low) and "undefined" in est.note


def test_percentile_ci():
    lo, hi = percentile_ci(np.arange(101, dtype=float))
    assert lo == pytest.approx(2.5) and hi == pytest.approx(97.5)


def test_agreement_split_golden():
    y = np.array([1, 1, 0, 0, 1])
    w = np.array([0.9, 0.2, 0.1, 0.8, 0.7])   # hard 1 0 0 1 1 → correct: T F T F T
    s = np.array([0.8, 0.3, 0.9, 0.1, 0.6])   # hard 1 0 1 0 1
    a = agreement(y, w, s)
    assert a["agree_all"] == pytest.approx(3 / 5)
    assert a["agree_weak_correct"] == pytest.approx(2 / 3)  # rows 0, 2, 4 → agree, disagree, agree
    assert a["agree_weak_wrong"] == pytest.approx(1 / 2)    # rows 1, 3 → agree, disagree
    assert a["n_weak_wrong"] == 2


def test_auroc_rows_equals_auroc_per_row_and_bootstrap_uses_the_seeded_resamples():
    import numpy as np

    from superalign.train.metrics import auroc, auroc_rows, bootstrap_auroc, bootstrap_indices, percentile_ci

    y = np.array([[0, 1, 1, 0], [1, 1, 1, 1], [0, 1, 0, 1]])
    s = np.array([[0.1, 0.4, 0.35, 0.8], [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.1, 0.9]])  # ties in the last row
    got = auroc_rows(y, s)
    assert got[0] == auroc(y[0], s[0]) == 0.5 and np.isnan(got[1]) and got[2] == auroc(y[2], s[2]) == 0.875
    yy, ss = y[0], s[0]
    idx = bootstrap_indices(4, 200, 3)
    auc, ci = bootstrap_auroc(yy, ss, seed=3, n_boot=200)
    assert auc == 0.5 and ci == percentile_ci(np.array([auroc(yy[i], ss[i]) for i in idx]))
