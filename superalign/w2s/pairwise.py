"""Weak-to-strong reward models (Burns et al. 2023, the reward-modelling setting) on pairwise tasks.

A task marked pairwise (``Task.meta["pairwise"]``; every group one preferred row labelled 1 and one rejected row
labelled 0) switches the pipeline to reward-model mode. Its unit is then the *pair*, not the row:

- pairs are oriented (A, B) once per task by a fixed seeded coin, independent of which text is preferred, and labelled
  y = 1 when A is preferred: a model can never learn "the first text wins";
- every model (weak, strong student, ceiling) scores a text with a scalar reward r and returns, for a pair, the
  logits [r_B, r_A], so P(A ≻ B) = softmax[1] = σ(r_A − r_B) (Bradley–Terry); the weak reward model's soft label
  for a pair is that probability;
- the losses are the pairwise ones of superalign/train/losses.py (soft Bradley–Terry, the pairwise auxiliary
  confidence loss, the product loss), on Δ = r_A − r_B;
- the metric is held-out pairwise accuracy: the share of test pairs whose preferred text gets the higher reward,
  ½ credit on an exact tie (see :func:`superalign.w2s.pgr.pairwise_accuracy`); PGR, its bootstrap CIs (resampling
  pairs) and its guards are the classification pipeline's, with chance = ½.

Splits are the task's group-aware row splits (a pair is one group, so both its rows always land in one split);
:func:`pair_splits` maps them to pair ids and checks that invariant.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.splits import SPLITS, Splits
from ..data.tasks import Task, pair_rows
from ..errors import SuperalignError

ORIENT_SEED = 20231214  # fixed: the orientation of a pair is part of the task, not of the experiment seed


class PairTable:
    """The pairs of a pairwise task: ``ab[k]`` = row indices (A, B) of pair k, ``y[k]`` = 1 when A is preferred,
    ``pair_of_row[i]`` = the pair row i belongs to."""

    def __init__(self, task: Task):
        chosen_rejected = pair_rows(task)  # validates: one preferred + one rejected row per group
        flip = np.random.default_rng(ORIENT_SEED).random(len(chosen_rejected)) < 0.5
        self.ab = np.where(flip[:, None], chosen_rejected[:, ::-1], chosen_rejected)
        self.y = (~flip).astype(np.int64)
        self.pair_of_row = np.full(len(task), -1, dtype=np.int64)
        self.pair_of_row[self.ab.ravel()] = np.repeat(np.arange(len(self.ab)), 2)

    def __len__(self) -> int:
        return len(self.ab)

    def rows(self, pair_idx: np.ndarray) -> np.ndarray:
        """The rows of pairs ``pair_idx``, A then B per pair: [2 · len(pair_idx)]."""
        return self.ab[np.asarray(pair_idx, dtype=np.int64)].ravel()


def pair_splits(row_splits: Splits, table: PairTable) -> Splits:
    """The row splits as pair ids (each split's pairs in the order of their first row there). Raises when a pair's
    two rows are in different splits or only one is used — group-aware splitting rules that out."""
    out = {}
    seen = np.zeros(len(table), dtype=np.int64)
    for name in SPLITS:
        rows = getattr(row_splits, name)
        pairs = table.pair_of_row[rows]
        _, first = np.unique(pairs, return_index=True)
        ids = pairs[np.sort(first)]
        counts = np.bincount(pairs, minlength=len(table))[ids]
        if (counts != 2).any():
            raise SuperalignError(f"split {name} holds one row of pair(s) {ids[counts != 2][:5].tolist()}",
                                  "report this: group-aware splits never separate a pair")
        seen[ids] += 1
        out[name] = ids
    if (seen > 1).any():
        raise SuperalignError(f"pair(s) {np.flatnonzero(seen > 1)[:5].tolist()} in two splits",
                              "report this: group-aware splits never separate a pair")
    return Splits(**out, n_dropped_balance=row_splits.n_dropped_balance // 2,
                  n_dropped_cap=row_splits.n_dropped_cap // 2)


class PairRewardModel(nn.Module):
    """A reward model built on any of the pipeline's 2-logit models (``scorer``: a linear probe on cached features or
    a transformer classifier): r(text) = z₁ − z₀, the difference of its two logits — a linear scalar head on the same
    features, the function class of a 1-output head — so every student mode of superalign/train/students.py works
    unchanged. For pairs (features [B, 2, d], or a list of (text A, text B)) it returns the logits [r_B, r_A]."""

    def __init__(self, scorer: nn.Module):
        super().__init__()
        self.scorer = scorer

    def reward(self, inputs) -> torch.Tensor:
        """r for each text (features [n, d] or a list of n texts): [n]."""
        z = self.scorer(inputs).float()
        return z[:, 1] - z[:, 0]

    def forward(self, pairs) -> torch.Tensor:
        if isinstance(pairs, torch.Tensor):
            r = self.reward(pairs.reshape(-1, pairs.shape[-1])).view(-1, 2)
        else:
            r = self.reward([t for pair in pairs for t in pair]).view(-1, 2)
        return torch.stack([r[:, 1], r[:, 0]], dim=-1)

    def flops_per_example(self, train: bool) -> float:
        return 2 * self.scorer.flops_per_example(train)  # two texts per pair


def bow_pair_rm(texts: list[str], table: PairTable, train_idx: np.ndarray, predict: dict[str, np.ndarray],
                seed: int) -> tuple[dict[str, np.ndarray], float]:
    """The bag-of-words weak reward model: r(text) = w · tfidf(text), fitted by Bradley–Terry maximum likelihood on
    the true preferences of pairs ``train_idx`` — logistic regression of y on tfidf(A) − tfidf(B) without an
    intercept, each pair given in both orientations, so P(B ≻ A) = 1 − P(A ≻ B) exactly. Returns ({name: P(A ≻ B)
    on predict[name]}, FLOPs estimate)."""
    from scipy.sparse import vstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    vec.fit([texts[i] for i in table.rows(train_idx)])

    def diff(idx):
        return vec.transform([texts[i] for i in table.ab[idx, 0]]) - vec.transform([texts[i] for i in table.ab[idx, 1]])

    d = diff(train_idx)
    y = table.y[train_idx]
    clf = LogisticRegression(C=1.0, fit_intercept=False, max_iter=2000, random_state=seed)
    clf.fit(vstack([d, -d]), np.r_[y, 1 - y])
    return {k: clf.predict_proba(diff(v))[:, 1] for k, v in predict.items()}, 6.0 * 2 * d.nnz * 100
