import numpy as np
import pytest
import torch

from superalign.errors import SuperalignError
from superalign.oversight.debate import (
    DebateConfig,
    Game,
    GreedyDebater,
    JudgeOracle,
    MCTSDebater,
    debate_image,
    nonzero_pixels,
    play,
    run_debates,
    transcript_record,
)
from superalign.oversight.judge import Judge

pytestmark = pytest.mark.usefixtures("one_thread")


class TableOracle:
    """A stub judge: logits from a function of the revealed set; counts calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def logits(self, states):
        self.calls += 1
        return np.stack([np.asarray(self.fn(s), dtype=float) for s in states])


class Recorder:
    """Wraps a debater and records who was asked to move in which state."""

    def __init__(self, name, inner, log):
        self.name, self.inner, self.log = name, inner, log

    def choose(self, game, state, oracle):
        self.log.append((self.name, len(state)))
        return self.inner.choose(game, state, oracle)


@pytest.mark.parametrize("first", ["honest", "liar"])
def test_game_rules_alternation_nonzero_no_repeats(first):
    torch.manual_seed(0)
    img = torch.zeros(8, 8)
    img[2:6, 3] = 0.5
    img[1, 1:7] = 1.0  # 10 nonzero pixels
    oracle = JudgeOracle(Judge(8, 8).eval(), img)
    log = []
    game = Game(nonzero_pixels(img), 6, honest=3, liar=7, first=first)
    r = play(game, oracle, Recorder("honest", GreedyDebater(), log), Recorder("liar", GreedyDebater(), log))
    assert len(r.moves) == 6 and len(set(r.moves)) == 6
    assert all(img.reshape(-1)[p] > 0 for p in r.moves)
    other = "liar" if first == "honest" else "honest"
    assert log == [(first if i % 2 == 0 else other, i) for i in range(6)]  # strict alternation, 3 each
    assert r.honest_wins == (r.margin > 0) and r.margin == pytest.approx(r.logits[3] - r.logits[7])
    # the cache: re-asking known states does not call the judge again
    n = oracle.forward_calls
    oracle.logits([frozenset(r.moves), frozenset(r.moves[:2])])
    assert oracle.forward_calls == n


def test_judge_oracle_matches_direct_encoding():
    from superalign.oversight.judge import encode, judge_logits
    torch.manual_seed(1)
    j = Judge(8, 8).eval()
    img = torch.rand(8, 8) * (torch.rand(8, 8) > 0.5)
    px = nonzero_pixels(img)[:3]
    mask = torch.zeros(64)
    mask[px] = 1
    want = judge_logits(j, encode(img[None], mask.reshape(1, 8, 8).bool()))[0].numpy()
    assert np.allclose(JudgeOracle(j, img).logits([frozenset(px)])[0], want, atol=1e-6)


def test_greedy_picks_best_one_step_margin():
    w = np.array([0.0, 3.0, -1.0, 2.0])  # per-pixel contribution to honest's logit
    oracle = TableOracle(lambda s: [sum(w[p] for p in s), 0.0])
    game = Game([0, 1, 2, 3], 2, honest=0, liar=1)
    assert GreedyDebater().choose(game, (), oracle) == 1   # honest: max margin
    assert GreedyDebater().choose(game, (1,), oracle) == 2  # liar: min margin
    assert oracle.calls == 2  # one batched call per move


def test_precommit_liar_wins_if_any_lie_wins_and_stops_early():
    full = np.zeros(10)
    full[[5, 3]] = [3.0, 2.0]  # lie order: 5, then 3, then the rest
    def fn(win3):
        g = np.zeros(10)
        g[0] = 1.0            # true label 0 beats every lie ...
        g[3] = 2.0 if win3 else 0.0  # ... except lie 3 when win3
        return lambda s: full if len(s) == 4 else g
    cfg = DebateConfig(k=2)
    r = debate_image([0, 1, 2, 3], 0, TableOracle(fn(True)), cfg, GreedyDebater(), GreedyDebater())
    assert not r.honest_wins and r.lie == 3 and len(r.games) == 2  # stopped at the first winning lie
    r = debate_image([0, 1, 2, 3], 0, TableOracle(fn(False)), cfg, GreedyDebater(), GreedyDebater())
    assert r.honest_wins and len(r.games) == 9  # every lie tried
    rec = transcript_record(7, 0, r)
    assert rec["judge"] == 0 and rec["answer"] == 0 and rec["probability"] == pytest.approx(1 / (1 + np.exp(-1.0)))
    # without precommit: one game, the liar wins if the judge's top label over all 10 is wrong
    r = debate_image([0, 1, 2, 3], 0, TableOracle(fn(True)), DebateConfig(k=2, precommit=False),
                     GreedyDebater(), GreedyDebater())
    assert not r.honest_wins and len(r.games) == 1 and transcript_record(0, 0, r)["judge"] == 3


def trap_oracle():
    """Honest moves first, k=2. Pixel 0 looks best after one move (margin 5) but the liar answers 1 (margin -3);
    pixel 2 wins against every answer. Greedy falls into the trap; search should not."""
    single = {0: 5.0, 1: 0.0, 2: 1.0, 3: 0.0}
    pair = {(0, 1): -3.0, (0, 2): 1.0, (0, 3): 1.0, (1, 2): 1.0, (1, 3): -1.0, (2, 3): 1.0}
    def fn(s):
        s = tuple(sorted(s))
        m = 0.0 if not s else single[s[0]] if len(s) == 1 else pair[s]
        return [m, 0.0]
    return TableOracle(fn)


def test_mcts_finds_the_winning_move_greedy_does_not():
    game = Game([0, 1, 2, 3], 2, honest=0, liar=1)
    assert not play(game, trap_oracle(), GreedyDebater(), GreedyDebater()).honest_wins
    for prior in ("root", "margin", "uniform"):
        for batch in (1, 8):  # plain sequential MCTS, and batches of leaves under a virtual loss
            mcts = MCTSDebater(rollouts=200, prior=prior, batch=batch, rng=np.random.default_rng(0))
            assert mcts.choose(game, (), trap_oracle()) == 2
            assert play(game, trap_oracle(), mcts, GreedyDebater()).honest_wins
    for leaf in ("random", "greedy"):
        mcts = MCTSDebater(rollouts=200, leaf=leaf, rng=np.random.default_rng(0))
        assert mcts.choose(game, (), trap_oracle()) == 2
    # the liar's search finds the refutation of the trap
    assert MCTSDebater(rollouts=50).choose(game, (0,), trap_oracle()) == 1


def test_mcts_visit_counts_and_tree_reuse():
    game = Game([0, 1, 2, 3], 2, honest=0, liar=1)
    oracle = trap_oracle()
    mcts = MCTSDebater(rollouts=40, batch=4, rng=np.random.default_rng(0))
    mcts.choose(game, (), oracle)
    root = mcts._tree[frozenset()]
    assert root.n.sum() == 40 and np.all(root.n >= 0)  # one visit per rollout; the virtual losses were undone
    # w/n stays a mean of values in [-1, 1]: the virtual loss was added back exactly
    assert np.all(np.abs(root.w) <= root.n + 1e-9)
    calls = oracle.calls
    mcts.choose(game, (2,), oracle)  # the next move of the same game searches on from the kept subtree
    assert mcts._tree[frozenset({2})].n.sum() >= 40 and frozenset() in mcts._tree
    assert oracle.calls > calls
    mcts.choose(Game([0, 1, 2, 3], 2, honest=0, liar=1), (), oracle)  # a new game starts a fresh tree
    assert mcts._tree[frozenset()].n.sum() == 40  # not 80: the old counts are gone


def test_bad_inputs():
    with pytest.raises(SuperalignError, match="k must be"):
        DebateConfig(k=0)
    with pytest.raises(SuperalignError, match="unknown debater"):
        DebateConfig(debater="oracle")
    with pytest.raises(SuperalignError, match="only 3 nonzero pixels") as e:
        Game([1, 2, 3], 4, honest=0, liar=1)
    assert "\n" not in str(e.value)
    img = torch.zeros(1, 8, 8)
    img[0, 0, :3] = 1.0
    with pytest.raises(SuperalignError, match="fewer than k=6"):
        run_debates(Judge(8, 8), img, torch.tensor([1]), DebateConfig(k=6))


def test_run_debates_workers_same_results():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images[:4].astype(np.float32) / 16)
    y = torch.from_numpy(d.target[:4])
    torch.manual_seed(0)
    j = Judge(8, 8).eval()
    cfg = DebateConfig(k=4, debater="mcts", rollouts=8)
    a = run_debates(j, x, y, cfg, workers=1)
    b = run_debates(j, x, y, cfg, workers=2)
    assert a.records == b.records and len(a.records) == 4 and a.judge_evaluations > 0
    full = run_debates(j, x, y, DebateConfig(k=4, debater="mcts", rollouts=8, incremental=False))
    assert [r["moves"] for r in full.records] == [r["moves"] for r in a.records]  # same games, full forward passes
    assert a.accuracy == np.mean([r["honest_wins"] for r in a.records])
