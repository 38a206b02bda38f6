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
