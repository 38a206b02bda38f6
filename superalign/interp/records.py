"""Activation records of neurons or SAE latents: the evidence an explainer reads and a simulator is scored on.

As in Bills et al. 2023 (openai/automated-interpretability), a record is a short window of tokens with the unit's
real activation on each token, and activations are shown to language models discretised to integers 0..10:
``floor(10 · relu(a) / max_a)`` where ``max_a`` is the unit's largest activation over the whole corpus.

For each unit the top-activating texts (ranked by their maximum activation) are split by rank parity: even ranks
(0, 2, 4, …) are shown to the explainer, odd ranks (1, 3, 5, …) are held out for scoring, so that both sets are
equally strong and no explanation is scored on the examples it was written from. Random windows (uniform over
texts, then over positions) complete the scoring set, as in the paper's "top and random" scoring.

Special tokens ([CLS], [SEP], <s>, …) are dropped before anything is ranked: they carry position-like outliers
that dominate SAE latents and mean nothing to an explainer (delphi drops BOS for the same reason).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ..errors import SuperalignError


class ActivationRecord(NamedTuple):
    tokens: list[str]
    """token strings of the window"""
    acts: list[float]
    """the unit's real activation on each token"""
    doc: int
    """index of the text in the corpus"""
    start: int
    """position of the window's first token in its text"""


class UnitRecords(NamedTuple):
    unit: int
    """neuron index or SAE latent index"""
    max_act: float
    """largest activation over the corpus (the discretisation scale)"""
    density: float
    """fraction of (non-special) tokens on which the unit is active"""
    explain: list[ActivationRecord]
    """top-activating windows shown to the explainer (even ranks)"""
    score_top: list[ActivationRecord]
    """held-out top-activating windows (odd ranks)"""
    score_random: list[ActivationRecord]
    """random windows"""


def discretize(acts, max_act: float, scale: int = 10) -> list[int]:
    """``floor(scale · relu(a) / max_act)`` capped at ``scale``; all zeros when ``max_act`` ≤ 0 (as in the paper)."""
    if not max_act > 0:
        return [0] * len(acts)
    return [min(scale, math.floor(scale * max(0.0, float(a)) / max_act)) for a in acts]


def token_strings(tok, ids) -> list[str]:
    """Display string of each token id (decoded one by one, so byte-level BPE shows its leading spaces)."""
    cache: dict[int, str] = {}
    out = []
    for i in (int(x) for x in ids):
        if i not in cache:
            cache[i] = tok.decode([i])
        out.append(cache[i])
    return out


def unit_activations(acts: torch.Tensor, units: list[int], sae=None, batch_size: int = 8192) -> torch.Tensor:
    """[N, len(units)]: each unit's activation on every cached token; neurons (``sae=None``) or SAE latents."""
    idx = torch.as_tensor(units, dtype=torch.long)
    if sae is None:
        if len(units) and (idx.min() < 0 or idx.max() >= acts.shape[1]):
            raise SuperalignError(f"neuron index out of range 0..{acts.shape[1] - 1}",
                                  "pick neurons of this hook point")
        return acts[:, idx].float()
    n = sae.cfg.n_latents
    if len(units) and (idx.min() < 0 or idx.max() >= n):
        raise SuperalignError(f"latent index out of range 0..{n - 1}", "pick latents of this SAE")
    out = []
    with torch.no_grad():
        for b in range(0, len(acts), batch_size):
            out.append(sae.latent_acts(acts[b:b + batch_size].float(), idx))
    return torch.cat(out) if out else torch.zeros(0, len(units))


class _Corpus:
    """Cached token rows regrouped into texts (rows sorted by position), special tokens removed."""

    def __init__(self, tokens: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor, special_ids: set[int]):
        keep = ~torch.isin(tokens, torch.tensor(sorted(special_ids), dtype=tokens.dtype)) if special_ids \
            else torch.ones_like(tokens, dtype=torch.bool)
        self.rows = torch.nonzero(keep).squeeze(1)
        if len(self.rows) == 0:
            raise SuperalignError("the activation cache has no non-special tokens", "cache a non-empty corpus")
        d, p = doc[self.rows], pos[self.rows]
        order = torch.from_numpy(np.lexsort((p.numpy(), d.numpy())))
        self.rows = self.rows[order]                     # cache row of each kept token, grouped by text
        self.doc = d[order]
        self.docs, counts = torch.unique_consecutive(self.doc, return_counts=True)
        self.starts = torch.cumsum(counts, 0) - counts    # first kept token of each text, in self.rows
        self.counts = counts


def build_records(unit_acts: torch.Tensor, units: list[int], tokens: torch.Tensor, doc: torch.Tensor,
                  pos: torch.Tensor, tok, n_explain: int = 10, n_score_top: int = 5, n_random: int = 5,
                  window: int = 24, seed: int = 0, special_ids: set[int] | None = None) -> list[UnitRecords]:
    """Records for each unit from its activations on every cached token (``unit_acts`` [N, len(units)])."""
    if unit_acts.shape != (len(tokens), len(units)):
        raise SuperalignError(f"unit activations have shape {tuple(unit_acts.shape)}, expected "
                              f"({len(tokens)}, {len(units)})", "compute them on the same activation cache")
    if window < 1:
        raise SuperalignError("window must be ≥ 1 token", "pass --window 24")
    if special_ids is None:
        special_ids = set(getattr(tok, "all_special_ids", []) or [])
    corpus = _Corpus(tokens, doc, pos, special_ids)
    a = unit_acts[corpus.rows].float()                   # [M, U], grouped by text
    n_docs = len(corpus.docs)
    doc_idx = torch.repeat_interleave(torch.arange(n_docs), corpus.counts)
    strings = token_strings(tok, tokens[corpus.rows])
    rng = np.random.default_rng(seed)
    # random windows are shared by every unit (one draw per seed), so scores of different units are comparable
    rand_docs = rng.choice(n_docs, size=min(n_random, n_docs), replace=False)
    rand_starts = [int(rng.integers(0, max(1, int(corpus.counts[d]) - window + 1))) for d in rand_docs]

    def record(u: int, d: int, start_in_doc: int) -> ActivationRecord:
        s0 = int(corpus.starts[d])
        n = int(corpus.counts[d])
        s = max(0, min(start_in_doc, n - window))
        e = min(n, s + window)
        return ActivationRecord(strings[s0 + s:s0 + e], [float(v) for v in a[s0 + s:s0 + e, u]],
                                int(corpus.docs[d]), s)

    out = []
    for u, unit in enumerate(units):
        col = a[:, u]
        doc_max = torch.full((n_docs,), -math.inf).scatter_reduce(0, doc_idx, col, reduce="amax")
        n_top = 2 * max(n_explain, n_score_top)
        ranked = [int(d) for d in torch.argsort(doc_max, descending=True, stable=True)[:n_top]
                  if doc_max[d] > 0]
        top = []
        for d in ranked:
            s0, n = int(corpus.starts[d]), int(corpus.counts[d])
            peak = int(torch.argmax(col[s0:s0 + n]))
            top.append(record(u, d, peak - (3 * window) // 4))  # mostly left context: what led up to the peak
        out.append(UnitRecords(
            unit=int(unit), max_act=float(col.max()) if len(col) else 0.0,
            density=float((col > 0).float().mean()),
            explain=top[0::2][:n_explain], score_top=top[1::2][:n_score_top],
            score_random=[record(u, int(d), s) for d, s in zip(rand_docs, rand_starts)]))
    return out


def records_to_json(recs: list[UnitRecords]) -> list[dict]:
    return [{**r._asdict(), **{k: [x._asdict() for x in getattr(r, k)] for k in ("explain", "score_top",
                                                                                   "score_random")}} for r in recs]


def records_from_json(rows: list[dict]) -> list[UnitRecords]:
    return [UnitRecords(**{**r, **{k: [ActivationRecord(**x) for x in r[k]] for k in ("explain", "score_top",
                                                                                      "score_random")}})
            for r in rows]
