"""Probes on cached hidden states: logistic regression, difference-of-means (mass-mean) and CCS.

Inputs are contrast pairs: for each statement, the hidden state with the positive answer filled in (``x_pos`` [N, d])
and with the negative one (``x_neg`` [N, d]), from any layer. Every method returns a :class:`Probe` whose
``predict(x_pos, x_neg)`` is P(the statement is true) per pair.

- **Logistic regression** (supervised ceiling): scikit-learn on the difference ``x_pos − x_neg`` of the normalised
  sides.
- **Mass-mean** (Marks & Tegmark 2023): the direction θ = mean(true) − mean(false) of the differences, scored as
  σ(θᵀx) (their out-of-distribution form; ``iid=True`` adds the Σ⁻¹ of the class-centred differences).
- **CCS** (Burns et al. 2022): each side normalised separately (so the probe cannot read which answer was filled in),
  p = σ(wᵀx + b), loss = mean (p⁺ − (1 − p⁻))² + mean min(p⁺, p⁻)²; several random restarts, the lowest loss kept;
  unsupervised, so its sign is arbitrary: :meth:`Probe.fix_sign` orients it on a few labelled pairs, for reporting only.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SuperalignError


def _check_pairs(x_pos, x_neg, y=None) -> tuple[np.ndarray, np.ndarray]:
    x_pos, x_neg = np.asarray(x_pos, dtype=np.float64), np.asarray(x_neg, dtype=np.float64)
    if x_pos.ndim != 2 or x_pos.shape != x_neg.shape:
        raise SuperalignError(f"contrast pairs must be two [N, d] arrays of one shape, got {x_pos.shape} and "
                              f"{x_neg.shape}", "pass the hidden states of each pair's two answers, row by row")
    if len(x_pos) == 0:
        raise SuperalignError("no contrast pairs", "check that the dataset has rows")
    if not (np.isfinite(x_pos).all() and np.isfinite(x_neg).all()):
        raise SuperalignError("hidden states contain NaN or inf", "recompute the activation cache (try --dtype fp32)")
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x_pos) or not np.isin(y, (0, 1)).all():
            raise SuperalignError("labels must be one 0/1 per pair", "map the labels to 0 (false) and 1 (true)")
    return x_pos, x_neg


@dataclass
class Normalizer:
    """Per-side standardisation (Burns et al. 2022, §2.2): each side's mean removed and each dimension divided by
    that side's standard deviation, with statistics from the fitting data only."""

    mean_pos: np.ndarray
    mean_neg: np.ndarray
    std_pos: np.ndarray
    std_neg: np.ndarray

    @classmethod
    def fit(cls, x_pos: np.ndarray, x_neg: np.ndarray, eps: float = 1e-8) -> Normalizer:
        return cls(x_pos.mean(0), x_neg.mean(0), x_pos.std(0) + eps, x_neg.std(0) + eps)

    def __call__(self, x_pos: np.ndarray, x_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x_pos - self.mean_pos) / self.std_pos, (x_neg - self.mean_neg) / self.std_neg


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
    """Burns et al. 2022, eq. 1–2: consistency (p⁺ − (1 − p⁻))² plus confidence min(p⁺, p⁻)², averaged over pairs."""
    consistency = (p_pos - (1 - p_neg)) ** 2
    confidence = torch.minimum(p_pos, p_neg) ** 2
    return (consistency + confidence).mean()


@dataclass
class Probe:
    """A fitted probe: P(true) of a pair = score(x⁺) for the linear probes on differences, or ½(p(x⁺) + 1 − p(x⁻))
    for CCS."""

    method: str
    """'logreg', 'mass_mean' or 'ccs'"""
    weight: np.ndarray
    bias: float
    norm: Normalizer
    loss: float | None = None
    """CCS: the kept restart's loss"""
    sign: int = 1
    """+1, or −1 when :meth:`fix_sign` flipped an unsupervised probe"""

    def predict(self, x_pos, x_neg) -> np.ndarray:
        x_pos, x_neg = self.norm(*_check_pairs(x_pos, x_neg))
        if self.method == "ccs":
            p_pos = 1 / (1 + np.exp(-(x_pos @ self.weight + self.bias)))
            p_neg = 1 / (1 + np.exp(-(x_neg @ self.weight + self.bias)))
            p = 0.5 * (p_pos + 1 - p_neg)
        else:
            p = 1 / (1 + np.exp(-((x_pos - x_neg) @ self.weight + self.bias)))
        return p if self.sign > 0 else 1 - p

    def fix_sign(self, x_pos, x_neg, y) -> Probe:
        """Orient an unsupervised probe so that it agrees with the labels of a few pairs more often than not (the
        labels choose the sign only; the direction stays the unsupervised one)."""
        _check_pairs(x_pos, x_neg, y)
        self.sign = 1
        acc = float(((self.predict(x_pos, x_neg) > 0.5) == np.asarray(y)).mean())
        self.sign = 1 if acc >= 0.5 else -1
        return self


def _supervised_inputs(x_pos, x_neg, y, what: str):
    """(normalised positive side, normalised negative side, 0/1 labels, the normaliser) of labelled pairs that hold
    both classes."""
    x_pos, x_neg = _check_pairs(x_pos, x_neg, y)
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        raise SuperalignError(f"{what} needs both true and false pairs", "add pairs of the other label")
    norm = Normalizer.fit(x_pos, x_neg)
    return (*norm(x_pos, x_neg), y, norm)


def fit_logreg(x_pos, x_neg, y, c: float = 1.0, seed: int = 0) -> Probe:
    """The supervised ceiling: L2-regularised logistic regression on normalised differences."""
    from sklearn.linear_model import LogisticRegression

    a, b, y, norm = _supervised_inputs(x_pos, x_neg, y, "logistic regression")
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(a - b, y)
    return Probe("logreg", clf.coef_[0].astype(np.float64), float(clf.intercept_[0]), norm)


def fit_mass_mean(x_pos, x_neg, y, iid: bool = False, ridge: float = 1e-3) -> Probe:
    """Marks & Tegmark 2023: θ = mean of true pairs' differences − mean of false pairs', the threshold halfway between
    the class means along θ; with ``iid`` the direction is Σ⁻¹θ (Σ = covariance of the class-centred differences,
    ``ridge``·mean variance added for stability)."""
    a, b, y, norm = _supervised_inputs(x_pos, x_neg, y, "a mass-mean probe")
    d = a - b
    mu1, mu0 = d[y == 1].mean(0), d[y == 0].mean(0)
    theta = mu1 - mu0
    if iid:
        centred = np.concatenate([d[y == 1] - mu1, d[y == 0] - mu0])
        cov = np.cov(centred, rowvar=False) if len(centred) > 1 else np.eye(d.shape[1])
        cov = np.atleast_2d(cov) + ridge * max(float(np.trace(np.atleast_2d(cov))) / d.shape[1], 1e-12) * \
            np.eye(d.shape[1])
        theta = np.linalg.solve(cov, theta)
    bias = -float(theta @ (mu1 + mu0) / 2)
    return Probe("mass_mean", theta, bias, norm)


@contextmanager
def _one_thread():
    """Run small tensor work on one intra-op thread: CCS's steps are ~[100, d] products, too small to share, and
    on a busy machine torch's threads spin-waiting for each other made them 20–70× slower (measured on 2 shared
    cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_ccs(x_pos, x_neg, restarts: int = 10, epochs: int = 1000, lr: float = 1e-2, weight_decay: float = 0.01,
            seed: int = 0) -> Probe:
    """CCS without labels: ``restarts`` random initialisations trained full-batch with AdamW for ``epochs`` steps,
    keeping the one with the lowest CCS loss (Burns et al. 2022). Deterministic given ``seed``.

    The restarts train side by side as the columns of one [d, restarts] weight matrix: AdamW and weight decay act
    element-wise and the summed loss gives each column its own restart's gradient, so this is the same optimisation
    as one restart after another, at two matrix products per step instead of 2 × ``restarts``."""
    x_pos, x_neg = _check_pairs(x_pos, x_neg)
    if restarts < 1 or epochs < 1:
        raise SuperalignError("CCS needs at least one restart and one epoch", "pass restarts ≥ 1 and epochs ≥ 1")
    norm = Normalizer.fit(x_pos, x_neg)
    a, b = (torch.as_tensor(v, dtype=torch.float32) for v in norm(x_pos, x_neg))
    gen = torch.Generator().manual_seed(seed)
    d = a.shape[1]
    # drawn one restart after another, so restart r starts where it would in a sequential loop
    w = torch.stack([torch.randn(d, generator=gen) / d ** 0.5 for _ in range(restarts)], 1).requires_grad_()
    bias = torch.zeros(restarts, requires_grad=True)
    opt = torch.optim.AdamW([w, bias], lr=lr, weight_decay=weight_decay)

    def losses() -> torch.Tensor:  # [restarts]: each column's CCS loss
        p_pos, p_neg = torch.sigmoid(a @ w + bias), torch.sigmoid(b @ w + bias)
        return ((p_pos - (1 - p_neg)) ** 2 + torch.minimum(p_pos, p_neg) ** 2).mean(0)

    with _one_thread():
        for _ in range(epochs):
            loss = losses().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            final = losses()
    best = int(torch.argmin(final))
    from ..runs.ledger import add_flops

    add_flops(6.0 * 2 * len(a) * d * restarts * epochs, stage="ccs")  # two [N, d] @ [d, R] per step, fwd + bwd
    return Probe("ccs", w[:, best].detach().double().numpy().copy(), float(bias[best].detach()), norm,
                 loss=float(final[best]))
