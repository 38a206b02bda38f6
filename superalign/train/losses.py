"""Weak-to-strong losses (Burns et al. 2023), on 2-class logits and soft weak labels.

All take ``logits`` [B, 2], ``weak`` = P(class 1) from the supervisor [B], and ``step_frac`` in [0, 1] (the share of
training done), and return the mean loss (``reduction="sum"``: the sum over the B rows).

Data-parallel training computes each process's rows of a global batch: a loss that looks at the batch as a whole
(aux_conf's threshold and class share) then gets the global batch's statistics as ``batch`` (a :class:`GlobalBatch`),
so that N processes compute exactly the loss one process computes on the whole batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import SuperalignError


class GlobalBatch(NamedTuple):
    """What a batch-level loss needs of the whole global batch when this process holds only some of its rows."""

    probs1: torch.Tensor
    """the student's detached P(class 1) on every row of the global batch"""
    weak: torch.Tensor
    """the supervisor's P(class 1) on every row of the global batch"""


def _reduce(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    # F.cross_entropy with probability targets: 'mean' divides the sum by B, so 'sum' / B is bit-identical to 'mean'
    return F.cross_entropy(logits.float(), target, reduction=reduction)


def _two_class(p1: torch.Tensor) -> torch.Tensor:
    return torch.stack([1 - p1, p1], dim=-1)


def xent_loss(logits: torch.Tensor, weak: torch.Tensor, step_frac: float = 0.0, reduction: str = "mean",
              batch: GlobalBatch | None = None) -> torch.Tensor:
    """Cross-entropy against the supervisor's soft labels: CE(f, f_w)."""
    return _reduce(logits, _two_class(weak.float()), reduction)


def warmup_coef(step_frac: float, max_coef: float, warmup_frac: float) -> float:
    """α ramps linearly from 0 to ``max_coef`` over the first ``warmup_frac`` of training, then stays.

    (openai/weak-to-strong uses ``step_frac`` itself during warm-up and then jumps to ``max_coef``; the paper's
    schedule is this linear ramp.)"""
    if warmup_frac <= 0:
        return max_coef
    return max_coef * min(1.0, step_frac / warmup_frac)


def hardened_predictions(probs1: torch.Tensor, pos_share: float) -> torch.Tensor:
    """Î(f > t) with t chosen so the share of predicted positives matches ``pos_share`` (the weak labels' class
    balance in this batch)."""
    # t = the (1 - pos_share) quantile of the student's P(class 1): exactly pos_share of the batch lies above it.
    return hardened_above(probs1, probs1, pos_share)


def hardened_above(probs1: torch.Tensor, batch_probs1: torch.Tensor, pos_share: float) -> torch.Tensor:
    """Î(f > t) for the rows ``probs1``, with t the (1 − ``pos_share``) quantile of ``batch_probs1`` (the whole
    batch's P(class 1), of which ``probs1`` may be a part)."""
    t = torch.quantile(batch_probs1, 1.0 - pos_share)
    return (probs1 > t).float() if pos_share < 1 else torch.ones_like(probs1)


def aux_conf_loss(logits: torch.Tensor, weak: torch.Tensor, step_frac: float, alpha: float = 0.75,
                  warmup_frac: float = 0.2, reduction: str = "mean", batch: GlobalBatch | None = None) -> torch.Tensor:
    """L = (1 − α)·CE(f, f_w) + α·CE(f, Î(f > t)), α on the linear warm-up schedule.

    The threshold t and the class share are the batch's: with ``batch`` (data parallelism) those of the global
    batch, so every process hardens its rows exactly as one process would. The hardened targets are treated as
    constants (no gradient through the threshold), as in the paper."""
    a = warmup_coef(step_frac, alpha, warmup_frac)
    probs1 = torch.softmax(logits.float().detach(), dim=-1)[:, 1]
    if batch is None:
        pos_share = float(weak.float().mean())
        hard = hardened_predictions(probs1, pos_share)
    else:
        pos_share = float(batch.weak.float().mean())
        hard = hardened_above(probs1, batch.probs1, pos_share)
    target = (1 - a) * weak.float() + a * hard
    # CE is linear in the target distribution, so one CE on the mixed target equals the weighted sum of the two.
    return _reduce(logits, _two_class(target), reduction)


def product_loss(logits: torch.Tensor, weak: torch.Tensor, step_frac: float, beta: float = 1.0,
                 warmup_frac: float = 0.2, reduction: str = "mean", batch: GlobalBatch | None = None) -> torch.Tensor:
    """CE against the normalised product p_student^β · p_weak (β warmed up linearly), targets detached."""
    b = warmup_coef(step_frac, beta, warmup_frac)
    p = torch.softmax(logits.float().detach(), dim=-1)
    target = p.pow(b) * _two_class(weak.float())
    target = target / target.sum(-1, keepdim=True).clamp(min=1e-12)
    return _reduce(logits, target, reduction)


LOSSES = {"xent": xent_loss, "aux_conf": aux_conf_loss, "product": product_loss}


def get_loss(name: str, **kw):
    if name not in LOSSES:
        raise SuperalignError(f"unknown loss {name!r}", f"use one of {', '.join(LOSSES)}")
    fn = LOSSES[name]
    if name == "xent":
        return fn
    return lambda logits, weak, step_frac, **batch_kw: fn(logits, weak, step_frac, **kw, **batch_kw)


# --------------------------------------------------------------------------------------------- pairwise (reward models)
# A reward model scores one text with a scalar r; for a pair (A, B) the pipeline's models return the logits
# [r_B, r_A], so column 1 is "A is preferred" and softmax(logits)[:, 1] = σ(r_A − r_B) = P(A ≻ B) (Bradley–Terry).
# ``weak`` is then the supervisor's P(A ≻ B) for the pair. Every pairwise loss reads only Δ = r_A − r_B.


def pair_margin(logits: torch.Tensor) -> torch.Tensor:
    """Δ = r_A − r_B of pair logits [r_B, r_A]."""
    logits = logits.float()
    return logits[:, 1] - logits[:, 0]


def soft_bt_loss(delta: torch.Tensor, p: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Bradley–Terry on soft targets: −[p log σ(Δ) + (1 − p) log σ(−Δ)] per pair (p = 1: the usual
    −log σ(r_chosen − r_rejected)). logsigmoid keeps it finite for any Δ."""
    p = p.float()
    per = -(p * F.logsigmoid(delta) + (1 - p) * F.logsigmoid(-delta))
    return per.sum() if reduction == "sum" else per.mean()


def pair_xent_loss(logits: torch.Tensor, weak: torch.Tensor, step_frac: float = 0.0, reduction: str = "mean",
                   batch: GlobalBatch | None = None) -> torch.Tensor:
    """The naive weak-to-strong reward-model loss: soft Bradley–Terry against the supervisor's P(A ≻ B)."""
    return soft_bt_loss(pair_margin(logits), weak, reduction)


def pair_hardened(delta: torch.Tensor) -> torch.Tensor:
    """The student's own hardened preference: 1 where it prefers A (Δ > 0), 0 where B, ½ on an exact tie.

    The threshold is Δ = 0, not the batch quantile of the classification loss: a pair's orientation (which text is
    A) is arbitrary, and only the zero threshold hardens a pair the same way in both orientations (1 − hard(−Δ) =
    hard(Δ)); the class balance the quantile protects is ½ by construction for randomly oriented pairs."""
    return (delta > 0).float() + 0.5 * (delta == 0).float()


def pair_aux_conf_loss(logits: torch.Tensor, weak: torch.Tensor, step_frac: float, alpha: float = 0.75,
                       warmup_frac: float = 0.2, reduction: str = "mean",
                       batch: GlobalBatch | None = None) -> torch.Tensor:
    """The auxiliary confidence loss on the pair's 2-way distribution (σ(Δ), σ(−Δ)):
    L = (1 − α)·BT(Δ, p_w) + α·BT(Δ, hard(Δ)) = BT(Δ, (1 − α)·p_w + α·hard(Δ)), α on the linear warm-up schedule,
    the hardened target a constant (no gradient through it), as in the classification loss. Needs no batch
    statistics, so data-parallel shards compute exactly the one-process loss."""
    a = warmup_coef(step_frac, alpha, warmup_frac)
    delta = pair_margin(logits)
    target = (1 - a) * weak.float() + a * pair_hardened(delta.detach())
    return soft_bt_loss(delta, target, reduction)


# product: the normalised (σ(Δ), σ(−Δ))^β · (p_w, 1 − p_w) is already orientation-symmetric; product_loss applies as is
PAIR_LOSSES = {"xent": pair_xent_loss, "aux_conf": pair_aux_conf_loss, "product": product_loss}


def get_pair_loss(name: str, **kw):
    """The pairwise (reward-model) version of :func:`get_loss`: same names, same parameters."""
    if name not in PAIR_LOSSES:
        raise SuperalignError(f"unknown loss {name!r}", f"use one of {', '.join(PAIR_LOSSES)}")
    fn = PAIR_LOSSES[name]
    if name == "xent":
        return fn
    return lambda logits, weak, step_frac, **batch_kw: fn(logits, weak, step_frac, **kw, **batch_kw)
