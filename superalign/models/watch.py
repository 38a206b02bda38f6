"""Activation monitors that score text while a model generates it.

A :class:`LinearMonitor` is a direction in one layer's hidden states (from a probe: CCS, mass-mean, logistic
regression, a defection direction…), a bias, a per-sample pooling rule and a threshold. Passed as ``watch=`` to
:func:`superalign.models.lm.sample` (and so to PPO rollouts, best-of-n sampling and the local LLM backend), it reads the
hidden state the model already computes for every generated token — the state at the position that emits the token —
so monitoring costs one dot product per token and no extra forward pass.

Scores: token score = (h − center) · direction + bias; a sample's score pools its tokens' scores (``mean`` or ``max``
over the tokens up to and including EOS). A sample is flagged when its score is strictly above the threshold, which
:meth:`LinearMonitor.calibrate` sets from clean samples for a target false-positive rate.

It lives in the shared model layer (not in the monitoring pillar) because every pillar's generation code uses it;
the pillar fits, calibrates and evaluates monitors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import SuperalignError

POOLS = ("mean", "max")


def threshold_at_fpr(clean_scores, fpr: float) -> float:
    """The smallest threshold t (among the clean scores) such that the share of clean scores strictly above t is at
    most ``fpr``: flagging ``score > t`` then has an empirical false-positive rate ≤ fpr on these clean samples."""
    s = np.sort(np.asarray(clean_scores, dtype=np.float64))
    if s.size == 0 or not np.isfinite(s).all():
        raise SuperalignError("threshold calibration needs finite scores of at least one clean sample",
                              "score some clean (negative) samples first")
    if not 0 <= fpr < 1:
        raise SuperalignError(f"target false-positive rate {fpr} is not in [0, 1)", "pass e.g. 0.01 or 0.05")
    allowed = int(np.floor(fpr * s.size + 1e-9))  # clean samples that may lie above the threshold
    return float(s[s.size - 1 - allowed])


class RateAtFPR(NamedTuple):
    fpr_target: float
    threshold: float
    fpr: float
    """the realised false-positive rate on the negatives"""
    tpr: float


def tpr_at_fpr(scores, labels, fpr: float) -> RateAtFPR:
    """Threshold set on the negatives (label 0) for ``fpr`` (:func:`threshold_at_fpr`), then the share of positives
    (label 1) strictly above it (TPR) and the negatives' realised FPR."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape or not np.isin(labels, (0, 1)).all():
        raise SuperalignError("scores and labels must be two equal-length arrays, labels 0/1",
                              "pass one 0/1 label (1 = should be flagged) per score")
    if not (labels == 1).any() or not (labels == 0).any():
        raise SuperalignError("TPR at a fixed FPR needs both flagged (1) and clean (0) samples",
                              "add samples of the missing class")
    t = threshold_at_fpr(scores[labels == 0], fpr)
    return RateAtFPR(fpr_target=fpr, threshold=t, fpr=float((scores[labels == 0] > t).mean()),
                     tpr=float((scores[labels == 1] > t).mean()))


@dataclass
class LinearMonitor:
    layer: int
    """hidden-state index read (0 = embeddings, as in ``output_hidden_states``)"""
    direction: np.ndarray
    """[d]: the probe direction"""
    bias: float = 0.0
    center: np.ndarray | None = None
    """[d] subtracted before the projection (e.g. the clean mean), or None"""
    pool: str = "mean"
    """how a sample's token scores become one score: mean or max"""
    threshold: float | None = None
    """flag a sample when its score is strictly above this (set by :meth:`calibrate`)"""
    meta: dict = field(default_factory=dict)
    """free-form provenance (probe method, model, data fingerprint, target FPR)"""

    def __post_init__(self):
        self.direction = np.asarray(self.direction, dtype=np.float32).reshape(-1)
        if self.center is not None:
            self.center = np.asarray(self.center, dtype=np.float32).reshape(-1)
            if self.center.shape != self.direction.shape:
                raise SuperalignError(f"monitor center has shape {self.center.shape}, direction {self.direction.shape}",
                                      "pass a center of the hidden size")
        if self.pool not in POOLS:
            raise SuperalignError(f"unknown monitor pooling {self.pool!r}", f"use one of {', '.join(POOLS)}")
        if not np.isfinite(self.direction).all() or self.direction.size == 0:
            raise SuperalignError("monitor direction is empty or not finite", "refit the probe")
        self._reset()

    # ---- scoring
    def token_scores(self, h: torch.Tensor) -> torch.Tensor:
        """[..., d] hidden states → [...] token scores (float32, on h's device)."""
        if h.shape[-1] != self.direction.size:
            raise SuperalignError(f"the monitor reads hidden size {self.direction.size}, the model has {h.shape[-1]}",
                                  "use a monitor fitted on this model")
        w = torch.as_tensor(self.direction, device=h.device)
        h = h.float()
        if self.center is not None:
            h = h - torch.as_tensor(self.center, device=h.device)
        return h @ w + self.bias

    def pool_scores(self, tok_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T] token scores and a [B, T] 0/1 mask → [B] sample scores (a row with no token scores −inf for max,
        0 for mean… neither happens in generation, where the first token is always scored)."""
        m = mask.bool()
        if self.pool == "max":
            return tok_scores.masked_fill(~m, float("-inf")).max(1).values
        return (tok_scores * m).sum(1) / m.sum(1).clamp(min=1)

    def flags(self, scores) -> np.ndarray:
        if self.threshold is None:
            raise SuperalignError("the monitor has no threshold", "calibrate it on clean samples (target FPR) first")
        return np.asarray(scores) > self.threshold

    def calibrate(self, clean_scores, fpr: float) -> float:
        """Set the threshold for a target false-positive rate on clean sample scores; returns it."""
        self.threshold = threshold_at_fpr(clean_scores, fpr)
        self.meta["fpr_target"] = fpr
        return self.threshold

    # ---- streaming, called by models.lm.sample once per generated token
    def _reset(self):
        self._sum = self._n = self._max = None

    def begin(self, batch: int, device) -> None:
        self._sum = torch.zeros(batch, device=device)
        self._n = torch.zeros(batch, device=device)
        self._max = torch.full((batch,), float("-inf"), device=device)

    def observe(self, h: torch.Tensor, alive: torch.Tensor) -> None:
        """``h`` [B, d]: the hidden state at ``layer`` of the position that emits this step's token; ``alive`` [B]:
        rows whose token is real (not padding after EOS). Stays on the device (no host sync)."""
        s = self.token_scores(h)
        a = alive.float()
        self._sum += s * a
        self._n += a
        self._max = torch.where(alive, torch.maximum(self._max, s), self._max)

    def end(self) -> torch.Tensor:
        """[B] sample scores of the generation since :meth:`begin` (float32, on the CPU)."""
        if self._sum is None:
            raise SuperalignError("monitor.end() before begin()", "pass the monitor as watch= to sample()")
        out = self._max if self.pool == "max" else self._sum / self._n.clamp(min=1)
        out = out.float().cpu()
        self._reset()
        return out

    # ---- files: safetensors + cfg.json, like every checkpoint here
    def save(self, out_dir: str | Path) -> Path:
        from safetensors.numpy import save_file

        from ..runs.files import write_json_atomic

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"direction": self.direction}
        if self.center is not None:
            tensors["center"] = self.center
        save_file(tensors, str(out / "monitor.safetensors"))
        write_json_atomic(out / "cfg.json", {"layer": self.layer, "bias": self.bias, "pool": self.pool,
                                             "threshold": self.threshold, "meta": self.meta})
        return out

    @classmethod
    def load(cls, path: str | Path) -> LinearMonitor:
        from safetensors.numpy import load_file

        p = Path(path)
        if not (p / "cfg.json").is_file() or not (p / "monitor.safetensors").is_file():
            raise SuperalignError(f"{p} is not a saved monitor (needs cfg.json and monitor.safetensors)",
                                  "pass the folder a monitor was saved to (LinearMonitor.save / superalign monitor)")
        cfg = json.loads((p / "cfg.json").read_text())
        t = load_file(str(p / "monitor.safetensors"))
        return cls(layer=int(cfg["layer"]), direction=t["direction"], bias=float(cfg.get("bias", 0.0)),
                   center=t.get("center"), pool=cfg.get("pool", "mean"), threshold=cfg.get("threshold"),
                   meta=cfg.get("meta") or {})
