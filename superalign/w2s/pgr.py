"""Performance gap recovered, its bootstrap CIs, and student–supervisor agreement.

PGR = (student − weak) / (ceiling − weak)   (Burns et al. 2023, eq. 1)

CIs resample seeds and, within each seed, test examples (a two-level bootstrap), so they reflect both the
test-set noise and the run-to-run variation. When |ceiling − weak| < ``min_gap`` the ratio is meaningless and
PGR is reported as NaN with a note instead of a huge number; so is a ceiling below the weak supervisor
(gap < ``min_gap``), where the ratio's sign is meaningless.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata

from ..train.metrics import percentile_ci


class PGREstimate(NamedTuple):
    value: float
    """PGR of the seed-averaged metrics."""
    ci_low: float
    ci_high: float
    per_seed: list[float]
    metric: str
    note: str = ""


def pgr(weak: float, student: float, ceiling: float, min_gap: float = 0.0) -> float:
    gap = ceiling - weak
    # a ceiling at or below the weak supervisor leaves no gap to recover: the ratio would be sign-flipped noise
    if not np.isfinite(gap) or gap < max(min_gap, 1e-12):
        return float("nan")
    return float((student - weak) / gap)


def _boot_acc(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    correct = ((p > 0.5).astype(int) == y).astype(float)
    return correct[idx].mean(1)


def _boot_auroc(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    ys, ps = y[idx], p[idx]  # [B, n]
    r = rankdata(ps, axis=1)
    npos = ys.sum(1)
    nneg = ys.shape[1] - npos
    u = (r * ys).sum(1) - npos * (npos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((npos > 0) & (nneg > 0), u / (npos * nneg), np.nan)


def bootstrap_pgr(seeds: list[dict], metric: str = "acc", n_boot: int = 1000, min_gap: float = 0.02,
                  rng_seed: int = 0, level: float = 0.95) -> PGREstimate:
    """``seeds``: one dict per seed with arrays ``y``, ``p_weak``, ``p_student``, ``p_ceiling`` on its test set."""
    from ..train.metrics import accuracy, auroc

    f = accuracy if metric == "acc" else auroc
    bf = _boot_acc if metric == "acc" else _boot_auroc
    pts = np.array([[f(s["y"], s[k]) for k in ("p_weak", "p_student", "p_ceiling")] for s in seeds])  # [S, 3]
    per_seed = [pgr(*row, min_gap=min_gap) for row in pts]
    w, st, c = pts.mean(0)
    value = pgr(w, st, c, min_gap=min_gap)
    note = "" if np.isfinite(value) else f"ceiling−weak gap {c - w:+.3f} below {min_gap}: PGR undefined"
    rng = np.random.default_rng(rng_seed)
    S = len(seeds)
    boot = np.empty((S, 3, n_boot))
    for si, s in enumerate(seeds):
        y = np.asarray(s["y"]).astype(int)
        idx = rng.integers(0, len(y), size=(n_boot, len(y)))
        for k, key in enumerate(("p_weak", "p_student", "p_ceiling")):
            boot[si, k] = bf(y, np.asarray(s[key], dtype=float), idx)
    pick = rng.integers(0, S, size=(n_boot, S)) if S > 1 else np.zeros((n_boot, 1), dtype=int)
    means = boot[pick, :, np.arange(n_boot)[:, None]].mean(1)  # [B, 3]
    gap = means[:, 2] - means[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = np.where(gap >= max(min_gap, 1e-12), (means[:, 1] - means[:, 0]) / gap, np.nan)
    lo, hi = percentile_ci(samples, level)
    if np.isnan(samples).mean() > 0.1:
        lo = hi = float("nan")
        note = note or f"ceiling−weak gap below {min_gap} in {np.isnan(samples).mean():.0%} of resamples: CI undefined"
    return PGREstimate(value, lo, hi, per_seed, metric, note)


def agreement(y: np.ndarray, p_weak: np.ndarray, p_student: np.ndarray) -> dict:
    """How often the student's hard prediction equals the supervisor's, overall and split by whether the
    supervisor was right. High agreement on weak-wrong examples = the student imitates the supervisor's errors."""
    y = np.asarray(y).astype(int)
    w = (np.asarray(p_weak) > 0.5).astype(int)
    s = (np.asarray(p_student) > 0.5).astype(int)
    agree = w == s
    right = w == y
    return {
        "agree_all": float(agree.mean()),
        "agree_weak_correct": float(agree[right].mean()) if right.any() else float("nan"),
        "agree_weak_wrong": float(agree[~right].mean()) if (~right).any() else float("nan"),
        "n_weak_wrong": int((~right).sum()),
    }
