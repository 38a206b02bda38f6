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

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in SPLITS}


def make_splits(labels: np.ndarray, seed: int, fractions=(0.3, 0.4, 0.1, 0.2), max_examples: int | None = None,
                balance: bool = True) -> Splits:
    """Balance the classes (downsample the majority), cap at ``max_examples``, shuffle, cut by ``fractions``."""
    labels = np.asarray(labels)
    if len(fractions) != 4 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise SuperalignError(f"split fractions {fractions} must be 4 positive numbers summing to 1")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if balance:
        m = min(len(pos), len(neg))
        if max_examples:
            m = min(m, max_examples // 2)
        idx = np.concatenate([rng.choice(pos, m, replace=False), rng.choice(neg, m, replace=False)])
    else:
        idx = np.arange(len(labels))
        if max_examples and len(idx) > max_examples:
            idx = rng.choice(idx, max_examples, replace=False)
    idx = rng.permutation(idx)
    if len(idx) < 40:
        raise SuperalignError(f"only {len(idx)} usable examples after balancing", "a weak-to-strong run needs at least 40")
    cuts = np.cumsum([int(round(f * len(idx))) for f in fractions[:3]])
    parts = np.split(idx, cuts)
    return Splits(*parts)
