"""Judge accuracy with a bootstrap 95% CI and calibration (ECE, reliability bins), for any transcript file.

A transcript is JSON Lines, one judged question per line, with at least
``judge`` (the judge's answer), ``answer`` (the correct answer) and ``probability`` (the judge's probability for
its own answer, in [0, 1]); any other fields are ignored. ``superalign debate run`` writes such files, and so can
any other protocol (consultancy, human judges, LLM judges).

Calibration uses equal-width confidence bins [i/B, (i+1)/B) (the last one closed at 1):
ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b| (Guo et al. 2017).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import SuperalignError


class Estimate(NamedTuple):
    value: float
    lo: float     # bootstrap percentile interval
    hi: float
    n: int


class Bin(NamedTuple):
    lo: float
    hi: float
    count: int
    confidence: float  # mean confidence in the bin (nan when empty)
    accuracy: float    # fraction correct in the bin (nan when empty)


def accuracy_ci(correct: Sequence[bool], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Accuracy with a percentile bootstrap interval (resampling questions with replacement)."""
    c = np.asarray(correct, dtype=float)
    if c.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    boots = c[rng.integers(0, c.size, size=(n_boot, c.size))].mean(1)
    a = (1 - level) / 2
    return Estimate(float(c.mean()), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)), int(c.size))


def reliability(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> list[Bin]:
    conf, c = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if n_bins < 1:
        raise SuperalignError(f"n_bins must be ≥ 1, got {n_bins}", "pass e.g. --n-bins 10")
    idx = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        bins.append(Bin(b / n_bins, (b + 1) / n_bins, n, float(conf[sel].mean()) if n else float("nan"),
                        float(c[sel].mean()) if n else float("nan")))
    return bins


def ece(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> float:
    n = len(confidence)
    if n == 0:
        return float("nan")
    return float(sum(b.count / n * abs(b.accuracy - b.confidence) for b in reliability(confidence, correct, n_bins)
                     if b.count))


def read_transcript(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(correct, confidence) arrays from a JSONL transcript; one-line errors name the bad line."""
    from ..validate import read_text_utf8

    p = Path(path)
    if not p.is_file():
        raise SuperalignError(f"transcript not found: {p}" if not p.is_dir() else f"transcript {p} is a folder",
                              "pass a JSONL file written by `superalign debate run`")
    correct, conf = [], []
    for i, line in enumerate(read_text_utf8(p, "transcript").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            j, a, prob = r["judge"], r["answer"], float(r["probability"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise SuperalignError(f"{p}:{i}: not a transcript line ({type(e).__name__}: {e})",
                                  "each line needs judge, answer and probability") from None
        if not 0 <= prob <= 1:
            raise SuperalignError(f"{p}:{i}: probability {prob} is not in [0, 1]",
                                  "write the judge's probability for its own answer")
        correct.append(j == a)
        conf.append(prob)
    if not correct:
        raise SuperalignError(f"{p} has no transcript lines", "pass a non-empty JSONL file")
    return np.array(correct), np.array(conf)


class TranscriptMetrics(NamedTuple):
    accuracy: Estimate
    ece: float
    bins: list[Bin]

    def table(self) -> str:
        a = self.accuracy
        lines = [f"judge accuracy {100 * a.value:.1f}% (95% CI {100 * a.lo:.1f}–{100 * a.hi:.1f}%, n={a.n}); "
                 f"ECE {self.ece:.4f}", "confidence bin      n   mean conf  accuracy"]
        for b in self.bins:
            if b.count:
                lines.append(f"[{b.lo:.2f}, {b.hi:.2f})  {b.count:>6}   {b.confidence:.3f}      {b.accuracy:.3f}")
        return "\n".join(lines)


def transcript_metrics(path: str | Path, n_bins: int = 10, n_boot: int = 1000, seed: int = 0) -> TranscriptMetrics:
    from ..validate import check_int, check_seed

    check_int("n_bins", n_bins, example=10)
    check_int("n_boot", n_boot, example=1000)
    check_seed("seed", seed)
    correct, conf = read_transcript(path)
    return TranscriptMetrics(accuracy_ci(correct, n_boot, seed), ece(conf, correct, n_bins),
                             reliability(conf, correct, n_bins))
