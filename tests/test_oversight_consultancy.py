import numpy as np
import pytest
import torch

from superalign.oversight.consultancy import consult, run_consultancy
from superalign.oversight.judge import Judge

pytestmark = pytest.mark.usefixtures("one_thread")


class Linear:
    """Stub judge with 2 classes: honest logit = sum of per-pixel weights, other logit 0."""

    def __init__(self, w):
        self.w = np.asarray(w, dtype=float)

    def logits(self, states):
        return np.array([[sum(self.w[p] for p in s), 0.0] for s in states])


def test_consult_by_hand():
    w = [2.0, -1.0, 0.5, -3.0]
    r = consult([0, 1, 2, 3], 0, 1, True, 2, Linear(w))
    assert r["moves"] == [0, 2] and r["judge"] == 0 and abs(r["probability"] - np.exp(2.5) / (np.exp(2.5) + 1)) < 1e-12
    r = consult([0, 1, 2, 3], 0, 1, False, 2, Linear(w))
    assert r["moves"] == [3, 1] and r["judge"] == 1 and r["honest_consultant"] is False


def test_run_consultancy_assignments_and_determinism():
    torch.manual_seed(0)
    j = Judge(8, 8).eval()
    x = (torch.rand(12, 8, 8) > 0.5).float()
    y = torch.arange(12) % 10
    a = run_consultancy(j, x, y, k=3, seed=1)
    assert len(a.records) == 12 and all(r["answer"] != r["argued"] or r["honest_consultant"] for r in a.records)
    assert 0 < sum(r["honest_consultant"] for r in a.records) < 12  # both assignments occur
    assert a.records == run_consultancy(j, x, y, k=3, seed=1).records
