"""Performance gap recovered, its bootstrap CIs, and student–supervisor agreement.

PGR = (student − weak) / (ceiling − weak)   (Burns et al. 2023, eq. 1)

CIs resample seeds and, within each seed, test examples (a two-level bootstrap), so they reflect both the
test-set noise and the run-to-run variation. When |ceiling − weak| < ``min_gap`` the ratio is meaningless and
PGR is reported as NaN with a note instead of a huge number; so is a ceiling below the weak supervisor
(gap < ``min_gap``), where the ratio's sign is meaningless.

PGR is also NaN, with a note, when the weak supervisor or the ceiling is not above chance: a model at chance has
no "performance" whose gap could be recovered, and such runs gave PGR 1.9–2.4 on leaky multiple-choice splits.
Chance is the majority-class rate of the test split for accuracy and 0.5 for AUROC. "Above" means above chance
by a one-sided 95% margin (z = 1.645) of the metric's standard error *under the chance hypothesis*: the binomial
sqrt(c(1 − c)/n) for accuracy at chance rate c, and the Mann–Whitney null sqrt((n₀ + n₁ + 1)/(12 n₀ n₁)) for
AUROC. Pooled over seeds the level is the mean of the seeds' chance levels and the margin
sqrt(Σ marginᵢ²)/S (the standard error of a mean of independent seeds).

Reward-model runs (pairwise tasks) use the metric ``pair_acc``: pairwise accuracy over test *pairs* (``y`` = 1 when
the pair's text A is preferred, ``p`` = P(A ≻ B) = σ(r_A − r_B)), an exact tie (p = ½) scoring ½. Its chance level
is ½ whatever the orientation mix, since a reward model scores each text alone and cannot prefer a position; the
margin is the binomial one at ½, and the bootstrap resamples pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata

from ..train.metrics import percentile_ci

Z_ONE_SIDED = 1.645


def chance_level(y: np.ndarray, metric: str) -> tuple[float, float]:
    """(chance level, one-sided 95% margin) of ``metric`` on labels ``y`` (see the module docstring)."""
    y = np.asarray(y).astype(int)
    n, n1 = len(y), int(y.sum())
    n0 = n - n1
    if metric == "pair_acc":
        return 0.5, Z_ONE_SIDED * float(np.sqrt(0.25 / n)) if n else float("nan")
    if metric == "acc":
        c = max(n1, n0) / n if n else float("nan")
        return c, Z_ONE_SIDED * float(np.sqrt(c * (1 - c) / n)) if n else float("nan")
    if n0 == 0 or n1 == 0:
        return 0.5, float("nan")
    return 0.5, Z_ONE_SIDED * float(np.sqrt((n0 + n1 + 1) / (12 * n0 * n1)))


def pooled_chance(levels: list[tuple[float, float]]) -> tuple[float, float]:
    c = np.array([lv[0] for lv in levels], dtype=float)
    m = np.array([lv[1] for lv in levels], dtype=float)
    return float(c.mean()), float(np.sqrt((m ** 2).sum()) / len(m))


def not_above_chance(weak: float, ceiling: float, level: tuple[float, float], metric: str) -> str:
    """'' when both the weak supervisor and the ceiling beat chance by the margin, else the note saying which not."""
    c, margin = level
    bad = [f"{who} {metric} {v:.3f}" for who, v in (("weak", weak), ("ceiling", ceiling))
           if not (np.isfinite(v) and np.isfinite(margin) and v > c + margin)]
    if not bad:
        return ""
    return f"{' and '.join(bad)} not above chance {c:.3f} + margin {margin:.3f}: PGR undefined"


def pgr_checked(y: np.ndarray, weak: float, student: float, ceiling: float, metric: str,
                min_gap: float = 0.0) -> tuple[float, str]:
    """PGR of one seed with its note: NaN when weak or ceiling is not above chance on ``y``, or the gap is small."""
    note = not_above_chance(weak, ceiling, chance_level(y, metric), metric)
    if note:
        return float("nan"), note
    value = pgr(weak, student, ceiling, min_gap)
    return value, "" if np.isfinite(value) else f"ceiling−weak gap {ceiling - weak:+.3f} below {min_gap}: PGR undefined"


def multiple_choice_accuracy(y: np.ndarray, p: np.ndarray, questions: np.ndarray) -> tuple[float, int]:
    """(accuracy, number of questions) of picking, per question, the candidate with the highest P(correct).

    Only questions with exactly one correct candidate and at least one wrong one in the set count; a tie at the
    top gives 1/(number tied) credit when the correct candidate is among them."""
    y, p, q = np.asarray(y).astype(int), np.asarray(p, dtype=float), np.asarray(questions)
    scores = []
    for g in np.unique(q):
        m = q == g
        yg, pg = y[m], p[m]
        if yg.sum() != 1 or len(yg) < 2:
            continue
        top = pg == pg.max()
        scores.append(top[yg == 1][0] / top.sum())
    return (float(np.mean(scores)) if scores else float("nan")), len(scores)


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


def pair_credit(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per pair: 1 when the preferred text has the higher reward, 0 when the lower, ½ on a tie (p = P(A ≻ B))."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    return np.where(p == 0.5, 0.5, ((p > 0.5).astype(int) == y).astype(float))


def pairwise_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """Share of pairs whose preferred text gets the higher reward (a tie counts ½: a reward model that cannot tell
    two texts apart is at chance on them, as in :func:`multiple_choice_accuracy`)."""
    c = pair_credit(y, p)
    return float(c.mean()) if len(c) else float("nan")


def _boot_pair_acc(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return pair_credit(y, p)[idx].mean(1)


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
    """``seeds``: one dict per seed with arrays ``y``, ``p_weak``, ``p_student``, ``p_ceiling`` on its test set (test
    pairs for ``metric="pair_acc"``: resamples are of pairs)."""
    from ..train.metrics import accuracy, auroc

    f = {"acc": accuracy, "pair_acc": pairwise_accuracy}.get(metric, auroc)
    bf = {"acc": _boot_acc, "pair_acc": _boot_pair_acc}.get(metric, _boot_auroc)
    pts = np.array([[f(s["y"], s[k]) for k in ("p_weak", "p_student", "p_ceiling")] for s in seeds])  # [S, 3]
    per_seed = [pgr_checked(s["y"], *row, metric=metric, min_gap=min_gap)[0] for s, row in zip(seeds, pts)]
    w, st, c = pts.mean(0)
    chance_note = not_above_chance(w, c, pooled_chance([chance_level(s["y"], metric) for s in seeds]), metric)
    value = float("nan") if chance_note else pgr(w, st, c, min_gap=min_gap)
    gap_note = f"ceiling−weak gap {c - w:+.3f} below {min_gap}: PGR undefined"
    note = chance_note or ("" if np.isfinite(value) else gap_note)
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
    if chance_note or np.isnan(samples).mean() > 0.1:
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
