"""Seeded, class-balanced splits as in Burns et al. 2023: weak-train / weak-label / validation / test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SuperalignError

SPLITS = ("weak_train", "weak_label", "val", "test")


@dataclass
class Splits:
    """Index arrays into a task. ``weak_train`` trains the weak supervisor on ground truth; the weak supervisor
    labels ``weak_label`` (the student's training set, also the ceiling's, with ground truth) and ``val`` (for
    early stopping on weak labels); ``test`` is only ever scored against ground truth."""

    weak_train: np.ndarray
    weak_label: np.ndarray
    val: np.ndarray
    test: np.ndarray
    n_dropped_balance: int = 0
    """Rows left out to balance the classes."""
    n_dropped_cap: int = 0
    """Rows left out by the ``max_examples`` cap (after balancing) or because the fractions sum to less than 1."""

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in SPLITS}

    def sizes(self) -> dict[str, int]:
        return {f"n_{k}": int(len(getattr(self, k))) for k in SPLITS}


def check_fractions(fractions) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 4 or not all(np.isfinite(f) and 0 < f <= 1 for f in fr) or sum(fr) > 1 + 1e-6:
        raise SuperalignError(f"split fractions {list(fractions)} must be 4 numbers in (0, 1] summing to at most 1",
                              "pass e.g. --split-fracs 0.3 0.4 0.1 0.2 (weak-train, weak-label, val, test)")
    return fr


def _cut(n: int, fractions: tuple[float, ...]) -> list[int]:
    """End positions of the four parts in a sequence of ``n`` rows; fractions summing to 1 give the test part
    the remainder (so rounding never loses a row), to less than 1 leave the tail unused."""
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:3]]).tolist()
    end = n if abs(sum(fractions) - 1) <= 1e-6 else min(n, cuts[-1] + int(round(fractions[3] * n)))
    return [*cuts, end]


def make_splits(labels: np.ndarray, seed: int, fractions=(0.3, 0.4, 0.1, 0.2), max_examples: int | None = None,
                balance: bool = True, groups: np.ndarray | None = None) -> Splits:
    """Balance the classes (downsample the majority), cap at ``max_examples``, shuffle, cut by ``fractions``.

    With ``groups`` (one id per row) every group lands whole in one split: see :func:`_group_splits`."""
    labels = np.asarray(labels)
    fractions = check_fractions(fractions)
    if groups is not None:
        return _group_splits(labels, np.asarray(groups), seed, fractions, max_examples, balance)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if balance:
        m = min(len(pos), len(neg))
        n_balanced = 2 * m
        if max_examples:
            m = min(m, max_examples // 2)
        idx = np.concatenate([rng.choice(pos, m, replace=False), rng.choice(neg, m, replace=False)])
    else:
        n_balanced = len(labels)
        idx = np.arange(len(labels))
        if max_examples and len(idx) > max_examples:
            idx = rng.choice(idx, max_examples, replace=False)
    idx = rng.permutation(idx)
    if len(idx) < 40:
        raise SuperalignError(f"only {len(idx)} usable examples after balancing",
                              "a weak-to-strong run needs at least 40")
    ends = _cut(len(idx), fractions)
    parts = np.split(idx[:ends[-1]], ends[:3])
    return Splits(*parts, n_dropped_balance=len(labels) - n_balanced, n_dropped_cap=n_balanced - ends[-1])


def _group_splits(labels: np.ndarray, groups: np.ndarray, seed: int, fractions: tuple[float, ...],
                  max_examples: int | None, balance: bool) -> Splits:
    """Splits that never separate a group.

    Groups are shuffled (seeded) and taken in that order until ``max_examples`` rows (after balancing) are
    reached; the four splits are then consecutive runs of whole groups, cut where the running row count crosses
    each fraction. Class balancing drops *rows within groups*, not whole groups: a multiple-choice question is
    typically 1 right + k wrong candidates, so every group leans the same way and dropping whole groups could not
    balance the classes; randomly chosen majority-class rows are dropped instead (a question then keeps fewer
    wrong candidates). Deterministic given the seed."""
    if len(groups) != len(labels):
        raise SuperalignError(f"{len(groups)} group ids for {len(labels)} rows")
    rng = np.random.default_rng(seed)
    codes, inverse = np.unique(groups, return_inverse=True)
    order = rng.permutation(len(codes))
    rows_of = [[] for _ in codes]
    for i, g in enumerate(inverse):
        rows_of[g].append(i)
    # take whole groups in shuffled order while the balanced total stays within the cap
    chosen: list[int] = []
    n_pos = n_neg = 0
    for g in order:
        rows = rows_of[g]
        p = int(labels[rows].sum())
        q = len(rows) - p
        if max_examples and chosen:
            after = 2 * min(n_pos + p, n_neg + q) if balance else n_pos + n_neg + len(rows)
            if after > max_examples:
                break
        chosen.append(int(g))
        n_pos, n_neg = n_pos + p, n_neg + q
    keep = np.zeros(len(labels), dtype=bool)
    for g in chosen:
        keep[rows_of[g]] = True
    n_dropped_cap = int(len(labels) - keep.sum())
    n_dropped_balance = 0
    if balance and n_pos != n_neg:
        major = 1 if n_pos > n_neg else 0
        cand = np.flatnonzero(keep & (labels == major))
        drop = rng.choice(cand, abs(n_pos - n_neg), replace=False)
        keep[drop] = False
        n_dropped_balance = len(drop)
    if keep.sum() < 40:
        raise SuperalignError(f"only {int(keep.sum())} usable examples after balancing",
                              "a weak-to-strong run needs at least 40")
    seq = [np.array([i for i in rows_of[g] if keep[i]], dtype=np.int64) for g in chosen]
    sizes = np.cumsum([len(s) for s in seq])
    ends = _cut(int(sizes[-1]), fractions)
    parts: list[list[np.ndarray]] = [[], [], [], []]
    start, k = 0, 0
    for s, stop in zip(seq, sizes):
        # a group goes to the split its middle row falls in, so splits stay close to their fractions
        mid = (start + stop) / 2
        while k < 3 and mid > ends[k]:
            k += 1
        if mid <= ends[3]:
            parts[k].append(s)
        start = stop
    out = [rng.permutation(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]
    used = sum(len(o) for o in out)
    return Splits(*out, n_dropped_balance=n_dropped_balance, n_dropped_cap=n_dropped_cap + int(keep.sum()) - used)
