import numpy as np
import pytest
import torch

from superalign.oversight.debate import JudgeOracle, nonzero_pixels
from superalign.oversight.incremental import IncrementalJudgeOracle
from superalign.oversight.judge import Judge

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [28, 8])
def test_incremental_logits_equal_the_full_forward_pass(size):
    torch.manual_seed(0)
    judge = Judge(size, size).eval()
    for p in judge.parameters():  # larger weights than the init: more ReLU/max-pool switches to get right
        p.data.mul_(3)
    img = torch.rand(size, size) * (torch.rand(size, size) > 0.6)
    img[0, 0] = img[-1, -1] = img[0, -1] = img[-1, 0] = 0.7  # corners: the clamped 3×3 windows
    px = nonzero_pixels(img)
    rng = np.random.default_rng(0)
    ref, inc = JudgeOracle(judge, img), IncrementalJudgeOracle(judge, img)
    chain = [frozenset()]
    for _ in range(6):  # a game's worth of states: every child of the current state, then move on
        s = chain[-1]
        kids = [s | {p} for p in px if p not in s]
        assert np.allclose(inc.logits(kids), ref.logits(kids), atol=1e-4, rtol=1e-4)
        chain.append(kids[rng.integers(len(kids))])
    assert inc.incremental > 0.9 * inc.evaluations  # almost all from a cached parent
    # states with no cached parent fall back to the full pass, and a mixed batch gives the same answers
    far = [frozenset(rng.choice(px, 5, replace=False).tolist()) for _ in range(10)]
    assert np.allclose(inc.logits(far + chain), ref.logits(far + chain), atol=1e-4, rtol=1e-4)
    assert inc.logits([chain[-1]]).shape == (1, 10) and (size != 28 or len(px) > 20)


def test_incremental_cache_is_bounded():
    torch.manual_seed(0)
    judge = Judge(8, 8).eval()
    img = torch.rand(8, 8)
    o = IncrementalJudgeOracle(judge, img, max_cached_states=5)
    o.logits([frozenset({p}) for p in range(20)])
    assert len(o._a2) == 5 and len(o.cache) == 20
