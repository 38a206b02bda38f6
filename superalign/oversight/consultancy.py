"""Consultancy baseline (Michael et al. 2023 style) on the sparse-pixel judge: one advocate, no opponent.

Each image gets two candidate answers, its true label and a wrong label drawn uniformly. A single consultant is
assigned one of the two at random (50/50) and reveals all ``k`` pixels itself, one at a time, each the nonzero pixel
that most increases its label's judge margin over the other candidate (greedy: with nobody to answer, one-step
greed is the natural baseline; a searching consultant is left for later). The judge then picks between the two
candidates (argmax of its two logits; ties to the wrong label, as in debate). Compare with debate at the same k:
consultancy's accuracy is what a judge gets from an advocate who may be lying and is never contradicted.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch

from ..errors import SuperalignError
from ..runs.ledger import add_flops
from .debate import Game, Oracle, make_oracle, nonzero_pixels, pair_probability
from .judge import Judge


def consult(pixels: list[int], label: int, wrong: int, argue_true: bool, k: int, oracle: Oracle) -> dict:
    """One consultancy: the advocate's k greedy reveals and the judge's verdict between ``label`` and ``wrong``."""
    game = Game(pixels, k, label, wrong)
    sign = 1.0 if argue_true else -1.0
    state: tuple[int, ...] = ()
    while len(state) < k:
        moves = game.legal(state)
        m = game.margins(oracle.logits([frozenset(state + (p,)) for p in moves]))
        state = state + (moves[int(np.argmax(sign * m))],)
    logits = oracle.logits([frozenset(state)])[0]
    right = bool(logits[label] > logits[wrong])
    verdict = label if right else wrong
    return {"answer": int(label), "judge": int(verdict),
            "probability": pair_probability(logits, verdict, wrong if right else label),
            "argued": int(label if argue_true else wrong), "honest_consultant": bool(argue_true), "moves": list(state)}


class ConsultancyRun(NamedTuple):
    records: list[dict]
    accuracy: float            # judge right, all images
    accuracy_honest: float     # when the consultant argued the true label
    accuracy_dishonest: float  # when it argued the wrong one
    wall_s: float


def run_consultancy(judge: Judge, images: torch.Tensor, labels: torch.Tensor, k: int, seed: int = 0,
                    precision: str = "fp32") -> ConsultancyRun:
    """Consultancy on every image, the judge where its weights are, in ``precision`` (fp32, or bf16/fp16 autocast);
    its FLOPs go to the run's compute ledger."""
    if k < 1:
        raise SuperalignError(f"k must be ≥ 1, got {k}", "pass e.g. --k 6")
    t0 = time.perf_counter()
    records = []
    for i in range(len(images)):
        rng = np.random.default_rng([seed, i])  # per image: the same draws whatever the other images are
        label = int(labels[i])
        wrong = int(rng.choice([c for c in range(judge.n_classes) if c != label]))
        argue_true = bool(rng.random() < 0.5)
        px = nonzero_pixels(images[i])
        oracle = make_oracle(judge, images[i], precision=precision)
        rec = consult(px, label, wrong, argue_true, k, oracle)
        add_flops(oracle.flops, tokens=oracle.evaluations, stage="consultancy")
        records.append({"image": i, **rec})

    def acc(rs):
        return float(np.mean([r["judge"] == r["answer"] for r in rs])) if rs else float("nan")
    return ConsultancyRun(records, acc(records), acc([r for r in records if r["honest_consultant"]]),
                          acc([r for r in records if not r["honest_consultant"]]), time.perf_counter() - t0)
