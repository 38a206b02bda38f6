"""Judge oracles: the judge's logits for sets of revealed pixels of one image, cached per set.

:class:`JudgeOracle` evaluates uncached states in one batched forward pass; the faster
:class:`~superalign.oversight.incremental.IncrementalJudgeOracle` builds on it. Debaters and consultancy only see
the :class:`Oracle` protocol (``superalign.oversight.debate.make_oracle`` picks the implementation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from .judge import Judge, encode, judge_forward_flops, judge_logits


class Oracle(Protocol):
    """Judge logits (n, n_classes) for states given as sets of revealed pixel indices (row-major, of one image)."""

    def logits(self, states: Sequence[frozenset]) -> np.ndarray: ...


class JudgeOracle:
    """A judge on one image: logits per set of revealed pixels, cached by the frozenset; the uncached states of a
    call are evaluated in one batch (this is what makes MCTS affordable), on the judge's device in ``precision``
    (fp32, or bf16/fp16 autocast), and come back to the host once per call: the search needs the numbers there."""

    def __init__(self, judge: Judge, image: torch.Tensor, precision: str = "fp32"):
        self.judge, self.flat = judge, image.reshape(-1).float()
        self.shape = tuple(image.shape)
        self.precision = precision
        self.cache: dict[frozenset, np.ndarray] = {}
        self.forward_calls = 0  # batched judge forward passes
        self.evaluations = 0    # states evaluated (cache misses)
        self.flops = 0          # judge FLOPs spent so far (2 per multiply-add), for the run's compute ledger

    def logits(self, states: Sequence[frozenset]) -> np.ndarray:
        missing = list(dict.fromkeys(s for s in states if s not in self.cache))
        if missing:
            self.cache.update(zip(missing, self._evaluate(missing)))
            self.forward_calls += 1
            self.evaluations += len(missing)
        return np.stack([self.cache[s] for s in states])

    def _evaluate(self, states: list[frozenset]) -> np.ndarray:
        """Logits of uncached states, one full forward pass (subclasses evaluate them faster)."""
        mask = torch.zeros(len(states), self.flat.numel())
        for i, s in enumerate(states):
            mask[i, list(s)] = 1.0
        x = encode(self.flat.expand(len(states), -1).reshape(len(states), *self.shape),
                   mask.reshape(len(states), *self.shape))
        self.flops += judge_forward_flops(self.judge) * len(states)
        return judge_logits(self.judge, x, precision=self.precision, record_flops=False).numpy()
