"""The MNIST debate game of Irving, Christiano & Amodei 2018, greedy and MCTS (PUCT) debaters, and evaluation.

Rules (as implemented here):

- Two debaters see the whole image. The honest one argues for the true label; the liar for a wrong label.
- The state is the set of revealed pixels; a move reveals one *nonzero* pixel not yet revealed (debaters cannot lie
  about a pixel's value, only choose which pixels to show). ``k`` reveals in all, alternating, so at k=6 each
  reveals 3. Who moves first is ``DebateConfig.first`` (default: honest, our choice: the order used for the
  paper's table could not be checked offline, so the benchmark can run both).
- The verdict: the judge sees only the revealed pixels and picks between the two *claimed* labels — the argmax of its
  logits restricted to {honest label, lie}, as in the paper. Ties go to the liar (a conservative count for debate).
- **Precommit** (the paper's main setting): the liar commits to its lie before the game. An image is played once per
  possible lie (9 games) and counts as a liar win if *any* lie wins; we stop at the first winning lie, trying lies
  in order of the judge's belief with every nonzero pixel revealed (likeliest first: a winning lie is found sooner,
  the outcome does not depend on the order).
- **No precommit** (``precommit=False``): one game; the liar does not name a label and wins if the judge's argmax
  over all 10 labels is not the true label (its margin is the best other logit minus the true one).

Debaters:

- ``greedy``: reveals the pixel that maximises its own judge margin after the move (one batched judge call over all
  candidate pixels; ties to the lowest pixel index).
- ``mcts``: PUCT search (AlphaZero style, as in the paper: U = Q + c·P·√(1+N(s))/(1+N(s,a)), ties broken at
  random), ``rollouts`` simulations per move. Nodes are sets of revealed pixels (a set reached in a different order
  is the same position: the judge sees a set, and whose turn it is follows from its size). Each debater keeps its
  tree from move to move within a game (``reuse_tree``).

  - Prior P: softmax of the mover's one-step judge margins / ``temperature``. ``prior="root"`` (default) measures
    them once per move, from the search root (one judge batch over the legal reveals) and reuses them at every node
    below: a pixel that helps a side from the root tends to help it deeper. ``"margin"`` measures them at every new
    node (a judge batch per node: ~100× the judge calls). ``"uniform"``: no prior.
  - Leaf value (honest's view, in [-1, 1]): at k reveals, ±1 from the verdict; before that ``leaf="margin"``:
    tanh(judge margin on the revealed pixels / temperature), ``leaf="random"``: the verdict after a uniformly random
    playout to k reveals, or ``leaf="greedy"``: the verdict after a playout by greedy debaters (sharper, one judge
    batch per remaining reveal).
  - Rollouts run ``batch`` at a time: each descends with a virtual loss on its path (so that the next goes
    elsewhere) and the batch's leaves go to the judge in one call.
  - The move played is the most visited child of the root.

The paper's wording ("pure Monte Carlo tree search", 10,000 rollouts per move, "each rollout descends to a leaf for
evaluation using the judge", PUCT) leaves the prior and the leaf value open; these are our choices, all options.

Speed: every judge call goes through a per-image cache keyed by the frozenset of revealed pixels
(:func:`make_oracle`), uncached states are evaluated in one batch, incrementally from a cached state one pixel
smaller where possible (:mod:`.incremental`), precommit stops at the first winning lie, and images run in
parallel in a fork process pool (``workers``; results do not depend on it: each image's randomness is seeded by
``seed`` and the image's index).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch

from ..errors import SuperalignError
from ..runs.ledger import add_flops
from ..validate import check_choice, check_int, check_nonnegative, check_positive, check_seed, help_field
from .incremental import IncrementalJudgeOracle
from .judge import Judge
from .oracle import JudgeOracle, Oracle  # noqa: F401  (JudgeOracle re-exported: its public home was this module)

DEBATERS = ("greedy", "mcts")


@dataclass
class DebateConfig:
    """How the debate game is played and evaluated."""

    k: int = help_field(6, "total pixels revealed in a game (the paper: 6 or 4), alternating between the debaters")
    first: str = help_field("honest", "who reveals first: honest or liar", choices=("honest", "liar"))
    precommit: bool = help_field(True, "the liar commits to a wrong label; an image is a liar win if any of the 9 lies "
                                       "wins (else one game where the liar wins if the judge's top label over all 10 "
                                       "is wrong)")
    debater: str = help_field("greedy", "greedy (best one-step judge margin) or mcts (PUCT search); both debaters use "
                                        "the same kind", choices=("greedy", "mcts"))
    rollouts: int = help_field(100, "mcts: simulations per move")
    c_puct: float = help_field(1.0, "mcts: exploration constant of PUCT")
    prior: str = help_field("root", "mcts: move prior, softmax of the mover's one-step judge margins / temperature, "
                                    "measured from the search root (root: one judge batch per move, reused at every "
                                    "node below it), at every node (margin: a judge batch per new node, ~|legal moves| "
                                    "times dearer), or uniform", choices=("root", "margin", "uniform"))
    leaf: str = help_field("margin", "mcts: value of a non-final leaf: margin (tanh of the judge margin), random or "
                                     "greedy (the verdict after a random or greedy playout to k reveals)",
                     choices=("margin", "random", "greedy"))
    temperature: float = help_field(1.0, "mcts: scale of judge margins in the prior softmax and the leaf tanh")
    batch: int = help_field(16, "mcts: leaves per judge call; the rollouts of one batch descend with a virtual loss (1 "
                                "= plain sequential MCTS; larger batches are cheaper per leaf and a little less sharp)")
    reuse_tree: bool = help_field(True, "mcts: keep a debater's search tree (and its visit counts) from one move to "
                                        "the next within a game")
    incremental: bool = help_field(True, "evaluate the judge incrementally from a state one pixel smaller "
                                         "(oversight/incremental.py: ~2–3× faster on a CPU, the same logits up to "
                                         "float rounding); off: a full forward pass per state")
    seed: int = help_field(0, "seed of random playouts and PUCT tie-breaks (per image: seed + image index)")

    def __post_init__(self):
        if self.k < 1:
            raise SuperalignError(f"k must be ≥ 1, got {self.k}", "pass e.g. --k 6")
        check_choice("first", self.first, ("honest", "liar"))
        if self.debater not in DEBATERS:
            raise SuperalignError(f"unknown debater {self.debater!r}", f"pass --debater one of {', '.join(DEBATERS)}")
        if self.rollouts < 1:
            raise SuperalignError(f"rollouts must be ≥ 1, got {self.rollouts}", "pass e.g. --rollouts 100")
        check_choice("prior", self.prior, ("root", "margin", "uniform"))
        check_choice("leaf", self.leaf, ("margin", "random", "greedy"))
        check_nonnegative("c_puct", self.c_puct, example=1.0)
        check_positive("temperature", self.temperature, example=1.0)
        check_int("k", self.k, example=6)
        check_int("rollouts", self.rollouts, example=100)
        check_int("batch", self.batch, example=16)
        check_seed("seed", self.seed)


def pair_probability(logits: np.ndarray, a: int, b: int) -> float:
    """The judge's probability for label ``a`` when it chooses between labels ``a`` and ``b`` (softmax of the two)."""
    return float(1.0 / (1.0 + np.exp(float(logits[b]) - float(logits[a]))))


class Game:
    """One debate: legal moves, whose turn, and the honest debater's margin (> 0: honest wins)."""

    def __init__(self, pixels: Sequence[int], k: int, honest: int, liar: int | None, first: str = "honest"):
        if k > len(pixels):
            raise SuperalignError(f"k={k} reveals but the image has only {len(pixels)} nonzero pixels",
                                  f"pass k ≤ {len(pixels)} or skip this image")
        if liar == honest:
            raise SuperalignError(f"the lie {liar} equals the true label", "pass a wrong label for the liar")
        self.pixels, self.k, self.honest, self.liar, self.first = tuple(sorted(pixels)), k, honest, liar, first

    def honest_to_move(self, state: Sequence[int]) -> bool:
        return (len(state) % 2 == 0) == (self.first == "honest")

    def legal(self, state: Sequence[int]) -> list[int]:
        seen = set(state)
        return [p for p in self.pixels if p not in seen]

    def margins(self, logits: np.ndarray) -> np.ndarray:
        """Honest's margin per row of logits: true − lie (precommit) or true − best other label (no precommit)."""
        logits = np.atleast_2d(logits)
        if self.liar is not None:
            return logits[:, self.honest] - logits[:, self.liar]
        other = np.delete(logits, self.honest, axis=1).max(1)
        return logits[:, self.honest] - other


class Debater(Protocol):
    def choose(self, game: Game, state: tuple[int, ...], oracle: Oracle) -> int: ...


class GreedyDebater:
    """Reveals the pixel that maximises its own judge margin right after the move."""

    def choose(self, game: Game, state: tuple[int, ...], oracle: Oracle) -> int:
        moves = game.legal(state)
        m = game.margins(oracle.logits([frozenset(state + (p,)) for p in moves]))
        sign = 1.0 if game.honest_to_move(state) else -1.0
        return moves[int(np.argmax(sign * m))]  # first maximum: the lowest pixel index


class _Node:
    __slots__ = ("moves", "prior", "n", "w", "honest_moves")

    def __init__(self, moves: list[int], prior: np.ndarray, honest_moves: bool):
        self.moves, self.prior, self.honest_moves = moves, prior, honest_moves
        self.n = np.zeros(len(moves))
        self.w = np.zeros(len(moves))  # value sum from the mover's point of view


class MCTSDebater:
    """PUCT search over sets of revealed pixels (see the module docstring for the prior, leaf values, batching and
    tree reuse)."""

    def __init__(self, rollouts: int = 100, c_puct: float = 1.0, prior: str = "root", leaf: str = "margin",
                 temperature: float = 1.0, rng: np.random.Generator | None = None, batch: int = 16,
                 reuse_tree: bool = True):
        self.rollouts, self.c_puct, self.prior, self.leaf, self.t = rollouts, c_puct, prior, leaf, temperature
        self.batch, self.reuse_tree = max(1, batch), reuse_tree
        self.rng = rng or np.random.default_rng(0)
        self._game: Game | None = None
        self._tree: dict[frozenset, _Node] = {}

    def _prior(self, game: Game, moves: list[int], honest: bool, margins: np.ndarray | None) -> np.ndarray:
        """softmax of the mover's margins / temperature (uniform without margins)."""
        if margins is None:
            return np.full(len(moves), 1.0 / len(moves))
        z = (margins if honest else -margins) / self.t
        p = np.exp(z - z.max())
        return p / p.sum()

    def _new_node(self, game: Game, state: tuple[int, ...], child_margins: np.ndarray | None = None) -> _Node:
        moves = game.legal(state)
        honest = game.honest_to_move(state)
        if self.prior == "root":  # the search root's one-step margins, looked up for this node's moves
            child_margins = np.array([self._root_margin[p] for p in moves])
        return _Node(moves, self._prior(game, moves, honest, child_margins if self.prior != "uniform" else None),
                     honest)

    def _select(self, node: _Node) -> int:
        q = np.divide(node.w, node.n, out=np.zeros_like(node.w), where=node.n > 0)
        u = self.c_puct * node.prior * math.sqrt(node.n.sum() + 1) / (1 + node.n)
        score = q + u
        best = np.flatnonzero(score >= score.max() - 1e-12)
        return int(best[0] if len(best) == 1 else self.rng.choice(best))  # ties broken at random, as in the paper

    def _leaf_state(self, game: Game, state: tuple[int, ...], oracle: Oracle) -> frozenset:
        """The state whose verdict or margin values a new leaf: itself (margin), or the end of a playout."""
        if self.leaf == "random":  # uniformly random playout to k reveals
            rest = self.rng.permutation(game.legal(state))[:game.k - len(state)]
            return frozenset(state) | set(rest.tolist())
        if self.leaf == "greedy":  # both sides play their best one-step move to k reveals
            s, greedy = state, GreedyDebater()
            while len(s) < game.k:
                s = s + (greedy.choose(game, s, oracle),)
            return frozenset(s)
        return frozenset(state)

    def choose(self, game: Game, state: tuple[int, ...], oracle: Oracle) -> int:
        if self._game is not game or not self.reuse_tree:  # a new game (or no reuse): a fresh tree
            self._game, self._tree = game, {}
        tree = self._tree
        root_key = frozenset(state)
        if self.prior == "root":  # one judge batch per move: the mover's margin after each legal reveal
            moves = game.legal(state)
            self._root_margin = dict(zip(moves, game.margins(oracle.logits([root_key | {p} for p in moves]))))
        if root_key not in tree:
            cm = game.margins(oracle.logits([root_key | {p} for p in game.legal(state)])) \
                if self.prior == "margin" else None
            tree[root_key] = self._new_node(game, state, cm)
        done = 0
        while done < self.rollouts:
            # select up to `batch` leaves, each path holding a virtual loss so that the next descent goes elsewhere
            leaves = []
            for _ in range(min(self.batch, self.rollouts - done)):
                s, path = state, []
                while len(s) < game.k:
                    node = tree.get(frozenset(s))
                    if node is None:
                        break
                    a = self._select(node)
                    node.n[a] += 1
                    node.w[a] -= 1.0  # virtual loss
                    path.append((node, a))
                    s = s + (node.moves[a],)
                leaves.append((s, path))
            done += len(leaves)
            # one judge batch: every leaf's value state, and (prior="margin") the children of every new node
            new = list(dict.fromkeys(s for s, _ in leaves if len(s) < game.k and frozenset(s) not in tree))
            values = {s: self._leaf_state(game, s, oracle) if len(s) < game.k else frozenset(s) for s, _ in leaves}
            kids = [[frozenset(s) | {p} for p in game.legal(s)] for s in new] if self.prior == "margin" else []
            states = list(values.values()) + [c for ks in kids for c in ks]
            margins = dict(zip(states, game.margins(oracle.logits(states)))) if states else {}
            for i, s in enumerate(new):
                tree[frozenset(s)] = self._new_node(
                    game, s, np.array([margins[c] for c in kids[i]]) if self.prior == "margin" else None)
            for s, path in leaves:
                m = margins[values[s]]
                terminal = len(values[s]) == game.k
                value = (1.0 if m > 0 else -1.0) if terminal else math.tanh(m / self.t)
                for node, a in path:
                    node.w[a] += 1.0 + (value if node.honest_moves else -value)  # undo the virtual loss, back up
        root = tree[root_key]
        if root.n.sum() == 0:  # nothing below the root was visited: play the prior's favourite
            return root.moves[int(np.argmax(root.prior))]
        q = np.divide(root.w, root.n, out=np.zeros_like(root.w), where=root.n > 0)
        best = np.lexsort((-q, -root.n))[0]  # most visits, then best value, then lowest pixel
        return root.moves[int(best)]


class GameResult(NamedTuple):
    moves: list[int]          # revealed pixels in order (first player's moves at even positions)
    honest_wins: bool
    margin: float             # honest's judge margin on the final revealed set
    logits: list[float]       # judge logits on the final revealed set


def play(game: Game, oracle: Oracle, honest: Debater, liar: Debater) -> GameResult:
    state: tuple[int, ...] = ()
    while len(state) < game.k:
        mover = honest if game.honest_to_move(state) else liar
        p = mover.choose(game, state, oracle)
        if p in state or p not in game.pixels:  # a debater bug, not a user error
            raise RuntimeError(f"illegal move {p} in state {state}")
        state = state + (p,)
    logits = oracle.logits([frozenset(state)])[0]
    margin = float(game.margins(logits)[0])
    return GameResult(list(state), margin > 0, margin, [float(v) for v in logits])


class ImageResult(NamedTuple):
    honest_wins: bool
    lie: int | None           # the winning lie, or the last lie tried (precommit); None without precommit
    games: list[GameResult]   # games played, in order (precommit stops at the first winning lie)


def make_debater(cfg: DebateConfig, rng: np.random.Generator) -> Debater:
    if cfg.debater == "greedy":
        return GreedyDebater()
    return MCTSDebater(cfg.rollouts, cfg.c_puct, cfg.prior, cfg.leaf, cfg.temperature, rng, cfg.batch, cfg.reuse_tree)


def debate_image(pixels: Sequence[int], label: int, oracle: Oracle, cfg: DebateConfig,
                 honest: Debater, liar: Debater, n_classes: int = 10) -> ImageResult:
    """Precommit: one game per lie, likeliest lie (judge on all nonzero pixels) first, stop at the first liar win.
    Without precommit: one game against the best other label."""
    if not cfg.precommit:
        g = play(Game(pixels, cfg.k, label, None, cfg.first), oracle, honest, liar)
        return ImageResult(g.honest_wins, None, [g])
    full = oracle.logits([frozenset(pixels)])[0]
    lies = [int(c) for c in np.argsort(-full, kind="stable") if c != label][:n_classes - 1]
    games = []
    for lie in lies:
        games.append(play(Game(pixels, cfg.k, label, lie, cfg.first), oracle, honest, liar))
        if not games[-1].honest_wins:
            return ImageResult(False, lie, games)
    return ImageResult(True, lies[-1], games)


def nonzero_pixels(image: torch.Tensor) -> list[int]:
    return torch.nonzero(image.reshape(-1) > 0)[:, 0].tolist()


def transcript_record(index: int, label: int, r: ImageResult) -> dict:
    """One transcript line: the judge's answer on the deciding game and its probability among the contested labels
    (both labels with precommit, all labels without), so metrics.py can score any such file."""
    g = r.games[-1]
    logits = np.asarray(g.logits)
    if r.lie is not None:
        answer = label if g.honest_wins else r.lie
        prob = pair_probability(logits, answer, r.lie if g.honest_wins else label)
    else:
        p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        other = logits.copy()
        other[label] = -np.inf
        answer = label if g.honest_wins else int(np.argmax(other))
        prob = float(p[answer])
    return {"image": index, "answer": int(label), "judge": int(answer), "probability": prob,
            "honest_wins": bool(r.honest_wins), "lie": r.lie, "games": len(r.games), "moves": g.moves}


def make_oracle(judge: Judge, image: torch.Tensor, incremental: bool = True, precision: str = "fp32") -> Oracle:
    """The judge on one image, cached by revealed set; incremental evaluation where the judge allows it. The judge
    runs where its weights are, in ``precision`` (fp32, or bf16/fp16 autocast)."""
    if incremental and type(judge) is Judge and image.shape[0] % 2 == 0 and image.shape[1] % 2 == 0:
        return IncrementalJudgeOracle(judge, image, precision=precision)
    return JudgeOracle(judge, image, precision)


def _debate_one(judge: Judge, image: torch.Tensor, label: int, index: int, cfg: DebateConfig,
                precision: str = "fp32") -> tuple[dict, int, int]:
    """An image's transcript line, the states the judge evaluated and the FLOPs it spent on them."""
    oracle = make_oracle(judge, image, cfg.incremental, precision)
    rng = np.random.default_rng(cfg.seed + index)
    honest, liar = make_debater(cfg, rng), make_debater(cfg, rng)
    pixels = nonzero_pixels(image)
    r = debate_image(pixels, int(label), oracle, cfg, honest, liar, judge.n_classes)
    # the image's shape and nonzero pixels let a report draw the game over the digit
    return (transcript_record(index, int(label), r) | {"shape": list(image.shape), "pixels": pixels},
            oracle.evaluations, oracle.flops)


_WORKER: dict = {}


def _init_worker(state: dict, shape: tuple, dropout: float, cfg: DebateConfig, precision: str) -> None:
    torch.set_num_threads(1)  # parallelism comes from the processes
    judge = Judge(*shape, dropout=dropout)
    judge.load_state_dict(state)
    judge.eval()
    _WORKER.update(judge=judge, cfg=cfg, precision=precision)


def _work(args: tuple) -> tuple[dict, int, int]:
    image, label, index = args
    return _debate_one(_WORKER["judge"], image, label, index, _WORKER["cfg"], _WORKER["precision"])


def check_images(images: torch.Tensor, k: int) -> None:
    """Every image must have at least k nonzero pixels to reveal (one-line error naming the first that has not)."""
    short = torch.nonzero((images.reshape(len(images), -1) > 0).sum(1) < k)
    if len(short):
        i = int(short[0])
        raise SuperalignError(f"image {i} has {int((images[i] > 0).sum())} nonzero pixels, fewer than k={k}",
                              "pass a smaller k")


class DebateRun(NamedTuple):
    records: list[dict]       # one transcript line per image
    accuracy: float           # fraction of images where honest wins (judge right)
    judge_evaluations: int    # states the judge evaluated (cache misses), all images
    wall_s: float
    judge_flops: int = 0      # FLOPs the judge spent on them (also added to the run's compute ledger)


def run_debates(judge: Judge, images: torch.Tensor, labels: torch.Tensor, cfg: DebateConfig, workers: int = 1,
                progress: Callable[[int, int], None] | None = None, precision: str = "fp32") -> DebateRun:
    """Debate every image; ``workers`` > 1 runs images in a fork process pool of CPU judges (same results, in
    order; a CUDA context cannot cross a fork); with one worker the judge runs where it is (e.g. a GPU: the
    batched candidate states suit it). The judge's forward passes run in ``precision`` (fp32, or bf16/fp16
    autocast), and their FLOPs go to the run's compute ledger (counted here, workers included)."""
    check_images(images, cfg.k)
    t0 = time.perf_counter()
    jobs = [(images[i], int(labels[i]), i) for i in range(len(images))]
    out: list[tuple[dict, int, int]] = []
    if workers <= 1:
        for j in jobs:
            out.append(_debate_one(judge, j[0], j[1], j[2], cfg, precision))
            if progress:
                progress(len(out), len(jobs))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        state = {k: v.detach().cpu().clone() for k, v in judge.state_dict().items()}  # workers judge on the CPU
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                                 initargs=(state, (judge.height, judge.width), float(judge.head[2].p), cfg,
                                           precision)) as ex:
            for r in ex.map(_work, jobs, chunksize=max(1, len(jobs) // (4 * workers))):
                out.append(r)
                if progress:
                    progress(len(out), len(jobs))
    records = [r for r, _, _ in out]
    acc = float(np.mean([r["honest_wins"] for r in records])) if records else float("nan")
    evaluations, flops = sum(e for _, e, _ in out), sum(f for _, _, f in out)
    add_flops(flops, tokens=evaluations, stage="debate")
    return DebateRun(records, acc, evaluations, time.perf_counter() - t0, flops)
