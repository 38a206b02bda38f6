"""The training loop: minibatch Adam(W) with a cosine schedule, early stopping on a validation set.

Reads top to bottom; the knobs are the :class:`TrainConfig` fields."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import SuperalignError
from .metrics import auroc
from .students import predict_proba, take


@dataclass
class TrainConfig:
    """How one model is trained."""

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.01
    eval_every: int = 1
    """Evaluate the validation set every this many epochs (early stopping picks the best evaluation)."""


class FitResult:
    """What :func:`fit` returns: the chosen state and how it was chosen."""

    def __init__(self):
        self.history: list[dict] = []
        self.best_epoch = -1
        self.best_score = -np.inf
        self.best_state: dict | None = None
        self.diag_best_epoch = -1
        self.diag_best_score = -np.inf
        self.diag_state: dict | None = None
        self.wall_s = 0.0
        self.device_s = 0.0
        self.examples_seen = 0


def _trainable_state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _score(y_soft: np.ndarray, p1: np.ndarray) -> float:
    """Early-stopping score: AUROC against the (hardened) labels; accuracy when they are single-class."""
    y = (y_soft > 0.5).astype(int)
    a = auroc(y, p1)
    return a if not np.isnan(a) else float(((p1 > 0.5) == y).mean())


def fit(model: nn.Module, inputs, targets: np.ndarray, loss_fn: Callable, cfg: TrainConfig, seed: int,
        val_inputs=None, val_targets: np.ndarray | None = None, diag_val_labels: np.ndarray | None = None,
        desc: str = "train", progress: bool = False) -> FitResult:
    """Train ``model`` on (inputs, soft targets = P(class 1)) with ``loss_fn(logits, targets, step_frac)``.

    Early stopping: after each evaluation the state with the best score on (val_inputs, val_targets) is kept —
    for a weak-to-strong student those targets are *weak* labels. ``diag_val_labels`` (ground truth) selects a
    second state only as a labelled diagnostic; it never influences the returned best state."""
    targets = np.asarray(targets, dtype=np.float64)
    if np.isnan(targets).any():
        raise SuperalignError(f"{desc}: training targets contain NaN", "check the weak supervisor's outputs")
    n = len(targets)
    if n == 0:
        raise SuperalignError(f"{desc}: no training examples")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, total) / total)))
    res = FitResult()
    t0, c0 = time.perf_counter(), time.process_time()
    tgt = torch.as_tensor(targets, dtype=torch.float32)
    step = 0
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    model.train()
    for epoch in range(cfg.epochs):
        for idx in _batches(inputs, rng.permutation(n), cfg.batch_size, rng):
            logits = model(take(inputs, idx))
            loss = loss_fn(logits, tgt[idx].to(logits.device), step / total)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            res.examples_seen += len(idx)
            bar.update(1)
        if val_inputs is None or ((epoch + 1) % cfg.eval_every and epoch + 1 != cfg.epochs):
            continue
        p_val = predict_proba(model, val_inputs)
        rec = {"epoch": epoch + 1, "loss": float(loss.detach()), "val_score": _score(val_targets, p_val)}
        if rec["val_score"] > res.best_score:
            res.best_score, res.best_epoch, res.best_state = rec["val_score"], epoch + 1, _trainable_state(model)
        if diag_val_labels is not None:
            rec["val_gt_score"] = _score(diag_val_labels, p_val)
            if rec["val_gt_score"] > res.diag_best_score:
                res.diag_best_score, res.diag_best_epoch = rec["val_gt_score"], epoch + 1
                res.diag_state = _trainable_state(model)
        res.history.append(rec)
    bar.close()
    res.wall_s = time.perf_counter() - t0
    res.device_s = time.process_time() - c0
    if res.best_state is None:
        res.best_state = _trainable_state(model)
        res.best_epoch = cfg.epochs
    return res


def _batches(inputs, perm: np.ndarray, bs: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Minibatches of a shuffled order. For texts, batch by length: within windows of 50 batches, sort by length
    and cut, then shuffle the batch order — padding drops several-fold while batches stay random across windows."""
    if isinstance(inputs, torch.Tensor):
        return [perm[i:i + bs] for i in range(0, len(perm), bs)]
    out = []
    win = 50 * bs
    for w in range(0, len(perm), win):
        chunk = perm[w:w + win]
        chunk = chunk[np.argsort([len(inputs[i]) for i in chunk], kind="stable")]
        out += [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def load_state(model: nn.Module, state: dict | None) -> nn.Module:
    if state is not None:
        model.load_state_dict(copy.deepcopy(state))
    model.eval()
    return model
