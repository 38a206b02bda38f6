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
from .distributed import Runtime
from .losses import GlobalBatch
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
        self.cpu_s = 0.0
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
        desc: str = "train", progress: bool = False, rt: Runtime | None = None) -> FitResult:
    """Train ``model`` on (inputs, soft targets = P(class 1)) with ``loss_fn(logits, targets, step_frac)``.

    Early stopping: after each evaluation the state with the best score on (val_inputs, val_targets) is kept —
    for a weak-to-strong student those targets are *weak* labels. ``diag_val_labels`` (ground truth) selects a
    second state only as a labelled diagnostic; it never influences the returned best state.

    ``rt`` says where and how: its device, its autocast precision (weights and AdamW state stay fp32) and, under
    ``accelerate launch``, the data-parallel group (default: one process, fp32, on the model's device). Every process
    draws the same global batches (same seed) and computes its shard of each; the loss is the global batch's mean
    (:meth:`Runtime.global_mean`), so N processes take the steps one process takes with the same batches. The loss
    functions' batch statistics (aux_conf's threshold) are those of the global batch. Evaluation runs on every
    process over the whole validation set and rank 0's decision is broadcast, so all keep the same state."""
    targets = np.asarray(targets, dtype=np.float64)
    if np.isnan(targets).any():
        raise SuperalignError(f"{desc}: training targets contain NaN", "check the weak supervisor's outputs")
    n = len(targets)
    if n == 0:
        raise SuperalignError(f"{desc}: no training examples")
    rt = rt if rt is not None else Runtime(device=_device_of(model), precision="fp32")
    # dropout differs per process (as it would per row in one process); rank 0 draws exactly what one process does
    torch.manual_seed(seed + 1_000_003 * rt.rank)
    rng = np.random.default_rng(seed)  # the same on every process: the global batches are drawn alike
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, total) / total)))
    wrapped, opt = rt.prepare(model, opt)
    plain = rt.unwrap(wrapped)
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.to(rt.device)
    if isinstance(val_inputs, torch.Tensor):
        val_inputs = val_inputs.to(rt.device)
    res = FitResult()
    t0, c0 = time.perf_counter(), time.process_time()
    tgt = torch.as_tensor(targets, dtype=torch.float32)
    step = 0
    last_loss = float("nan")
    bar = tqdm(total=total, desc=desc, disable=not progress or not rt.is_main, leave=False)
    wrapped.train()
    for epoch in range(cfg.epochs):
        for idx in _batches(inputs, rng.permutation(n), cfg.batch_size, rng):
            if rt.world_size == 1:
                with rt.autocast():
                    logits = wrapped(take(inputs, idx))
                # the loss functions' own mean: one process computes exactly what it always has
                loss = loss_fn(logits, tgt[idx].to(logits.device), step / total)
                last_loss = float(loss.detach())
                res.examples_seen += len(idx)
            else:
                part = rt.shard(idx)
                with rt.autocast():
                    logits = wrapped(take(inputs, part.idx))
                local = tgt[part.idx].to(logits.device)
                batch = GlobalBatch(_gather_probs1(rt, logits, part, len(idx)), tgt[idx].to(logits.device))
                loss_sum = loss_fn(logits, local, step / total, reduction="sum", batch=batch)
                loss = rt.global_mean(loss_sum, len(part.idx), part.weight)
                last_loss = rt.all_sum(loss_sum.detach() * part.weight) / len(idx)
                res.examples_seen += len(part.idx) if part.weight else 0  # this process's share (FLOPs add up)
            rt.backward(loss)
            rt.step(opt)
            sched.step()
            step += 1
            bar.update(1)
        if val_inputs is None or ((epoch + 1) % cfg.eval_every and epoch + 1 != cfg.epochs):
            continue
        p_val = predict_proba(plain, val_inputs, autocast=rt.autocast)
        rec = {"epoch": epoch + 1, "loss": last_loss, "val_score": _score(val_targets, p_val)}
        if diag_val_labels is not None:
            rec["val_gt_score"] = _score(diag_val_labels, p_val)
        rec = rt.broadcast(rec)  # every process keeps the same state, whatever its last bits of arithmetic
        if rec["val_score"] > res.best_score:
            res.best_score, res.best_epoch, res.best_state = rec["val_score"], epoch + 1, _trainable_state(plain)
        if diag_val_labels is not None and rec["val_gt_score"] > res.diag_best_score:
            res.diag_best_score, res.diag_best_epoch = rec["val_gt_score"], epoch + 1
            res.diag_state = _trainable_state(plain)
        res.history.append(rec)
    bar.close()
    res.wall_s = time.perf_counter() - t0
    res.device_s = (time.perf_counter() - t0) * rt.world_size  # the ledger's definition: wall × devices
    res.cpu_s = time.process_time() - c0
    if res.best_state is None:
        res.best_state = _trainable_state(plain)
        res.best_epoch = cfg.epochs
    return res


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _gather_probs1(rt: Runtime, logits: torch.Tensor, part, n_global: int) -> torch.Tensor:
    """The student's detached P(class 1) on the whole global batch, in its order, on every process: process r holds
    rows r, r + N, r + 2N, … (see :meth:`Runtime.shard`); a process holding no real rows contributes none."""
    p1 = torch.softmax(logits.detach().float(), dim=-1)[:, 1]
    size = (n_global + rt.world_size - 1) // rt.world_size
    buf = torch.zeros(size, dtype=torch.float32, device=p1.device)
    if part.weight:
        buf[:len(p1)] = p1
    from accelerate.utils import gather

    every = gather(buf).reshape(rt.world_size, size)  # row r = process r's rows, padded
    out = torch.empty(n_global, dtype=torch.float32, device=p1.device)
    for r in range(rt.world_size):
        mine = len(range(r, n_global, rt.world_size))
        out[r::rt.world_size] = every[r, :mine]
    return out


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
