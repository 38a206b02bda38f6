"""Classification metrics: accuracy, AUROC (rank-based, ties averaged), bootstrap percentile CIs."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def accuracy(y: np.ndarray, p1: np.ndarray) -> float:
    """Share of examples where P(class 1) > 0.5 matches the 0/1 label."""
    y, p1 = np.asarray(y), np.asarray(p1)
    return float(((p1 > 0.5).astype(int) == y).mean())


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + ½·P(tie) (Mann–Whitney U / (n_pos·n_neg)).

    NaN when only one class is present."""
    y, score = np.asarray(y), np.asarray(score, dtype=float)
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    s = np.asarray(samples, dtype=float)
    s = s[~np.isnan(s)]
    if len(s) == 0:
        return float("nan"), float("nan")
    lo = (1 - level) / 2
    return float(np.quantile(s, lo)), float(np.quantile(s, 1 - lo))


def auroc_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """:func:`auroc` of every row of [B, N] labels and scores at once (NaN for a row with one class only)."""
    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=float)
    ranks = rankdata(score, axis=1)
    n_pos = y.sum(1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        aucs = ((ranks * y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), aucs, np.nan)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] row indices of the percentile bootstrap's resamples (with replacement), from ``seed``."""
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def bootstrap_auroc(y: np.ndarray, score: np.ndarray, seed: int = 0,
                    n_boot: int = 1000) -> tuple[float, tuple[float, float]]:
    """(AUROC, its percentile-bootstrap 95% CI over examples); resamples with one class are skipped."""
    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=float)
    idx = bootstrap_indices(len(y), n_boot, seed)
    return auroc(y, score), percentile_ci(auroc_rows(y[idx], score[idx]))
