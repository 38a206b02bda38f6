"""Best-of-n sampling against a reward model, and the over-optimization curves of Gao, Schulman & Hilton 2022.

- KL of best-of-n to the base policy: KL_bon = log n − (n − 1)/n (Stiennon et al. 2020, appendix), d = sqrt(KL).
- Given N ≥ n samples per prompt, the expected gold reward of "sample n, keep the proxy's favourite" is computed
  exactly over all C(N, n) subsets (the unbiased estimator Gao et al. use): with the samples sorted by proxy score
  ascending, the i-th (1-based) is the argmax of a random n-subset with probability C(i−1, n−1)/C(N, n).
- Fits: R_bon(d) = d(α − βd) and R_rl(d) = d(α − β log d), least squares on the gold (or proxy) reward gain
  over the initial policy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import gammaln


def kl_bon(n: int | np.ndarray) -> np.ndarray:
    n = np.asarray(n, dtype=np.float64)
    return np.log(n) - (n - 1) / n


def bon_weights(N: int, n: int) -> np.ndarray:
    """P(the i-th smallest of N is the max of a uniformly random n-subset), i = 1..N."""
    if not 1 <= n <= N:
        raise ValueError(f"need 1 ≤ n ≤ N, got n={n}, N={N}")
    i = np.arange(1, N + 1)
    logc = lambda a, b: gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)  # noqa: E731
    w = np.zeros(N)
    ok = i >= n
    w[ok] = np.exp(logc(i[ok] - 1, n - 1) - logc(N, n))
    return w


def bon_expected(proxy: np.ndarray, values: np.ndarray, n: int) -> float:
    """E[values of the proxy-argmax of n samples], averaged over prompts.

    ``proxy`` and ``values`` are [prompts, N]; ties in proxy are broken by position (stable sort)."""
    proxy, values = np.atleast_2d(proxy), np.atleast_2d(values)
    N = proxy.shape[1]
    order = np.argsort(proxy, axis=1, kind="stable")
    sorted_vals = np.take_along_axis(values, order, axis=1)
    return float((sorted_vals @ bon_weights(N, n)).mean())


class BonCurve(NamedTuple):
    n: list[int]
    kl: list[float]
    d: list[float]
    proxy: list[float]
    gold: list[float]


def bon_curve(proxy: np.ndarray, gold: np.ndarray, ns: list[int] | None = None) -> BonCurve:
    N = proxy.shape[1]
    ns = ns or [2 ** k for k in range(int(math.log2(N)) + 1)]
    kls = [float(kl_bon(n)) for n in ns]
    return BonCurve(list(ns), kls, [math.sqrt(k) for k in kls], [bon_expected(proxy, proxy, n) for n in ns],
                    [bon_expected(proxy, gold, n) for n in ns])


def select_best(proxy: np.ndarray) -> np.ndarray:
    """Index of the best sample per prompt (best-of-n sampling proper)."""
    return np.argmax(np.atleast_2d(proxy), axis=1)


class FunctionalFit(NamedTuple):
    alpha: float
    beta: float
    r2: float


def _lstsq(X: np.ndarray, y: np.ndarray) -> FunctionalFit:
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ coef
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return FunctionalFit(float(coef[0]), float(-coef[1]), r2)


def fit_bon(d: np.ndarray, r: np.ndarray) -> FunctionalFit:
    """Least squares for R(d) = d(α − βd) = αd − βd² (no intercept: R(0) = 0)."""
    d, r = np.asarray(d, float), np.asarray(r, float)
    return _lstsq(np.stack([d, d ** 2], 1), r)


def fit_rl(d: np.ndarray, r: np.ndarray) -> FunctionalFit:
    """Least squares for R(d) = d(α − β log d) = αd − β d log d; points with d = 0 contribute R = 0."""
    d, r = np.asarray(d, float), np.asarray(r, float)
    dl = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    return _lstsq(np.stack([d, dl], 1), r)


def predict_bon(fit: FunctionalFit, d: np.ndarray) -> np.ndarray:
    return d * (fit.alpha - fit.beta * d)


def predict_rl(fit: FunctionalFit, d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, float)
    return d * (fit.alpha - fit.beta * np.log(np.where(d > 0, d, 1.0)))
