"""Scores of an explanation.

Simulation scores (Bills et al. 2023), over the held-out top-activating and random records of a unit:

- ``ev_correlation`` — Pearson correlation between the real activations and the simulator's expected values, pooled
  over every token of every record (the paper's headline "score"); also on the top or random records alone.
  A constant prediction explains nothing and scores 0 (the correlation is otherwise undefined).
- ``rsquared`` — 1 − Σ(a − p)² / Σ(a − ā)² with the real activations a put on the simulator's scale
  (scale · relu(act) / max_act, not floored) and p the predictions: unlike the correlation it also punishes
  predictions of the wrong size.

Classification scores (EleutherAI/delphi), which ask the language model yes/no questions and need no simulation:

- ``detection`` — does this text contain what the explanation describes? Positives are windows on which the unit
  fires, negatives windows on which it does not; balanced accuracy, and AUROC from P("1") when the backend gives
  logprobs.
- ``embedding`` — no language model at all: a sentence encoder (MiniLM by default) embeds the explanation and each
  held-out window; the score is the AUROC with which cosine similarity to the explanation separates windows where
  the unit fires from windows where it does not (delphi's embedding scorer).
- ``fuzzing`` — in a window on which the unit fires, are the tokens marked ``<<like this>>`` the ones the
  explanation describes? Half the windows mark the tokens the unit really fires on, half mark as many random
  other tokens; balanced accuracy (and AUROC).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

from .records import ActivationRecord, UnitRecords, discretize


def correlation_score(real: list, predicted: list) -> float:
    """Pearson correlation of all tokens pooled; 0 when the prediction is constant, NaN when the truth is."""
    a = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in real]) if real else np.zeros(0)
    p = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in predicted]) if predicted else np.zeros(0)
    if len(a) != len(p):
        raise ValueError(f"{len(a)} real activations but {len(p)} predictions")
    if len(a) < 2 or np.ptp(a) == 0:
        return math.nan
    if np.ptp(p) == 0:
        return 0.0
    return float(np.corrcoef(a, p)[0, 1])


def rsquared_score(real: list, predicted: list, max_act: float, scale: int = 10) -> float:
    a = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in real])
    p = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in predicted])
    a = scale * np.maximum(a, 0) / max_act if max_act > 0 else np.zeros_like(a)
    ss_tot = ((a - a.mean()) ** 2).sum()
    return float(1 - ((a - p) ** 2).sum() / ss_tot) if ss_tot > 0 else math.nan


def auroc(labels, scores) -> float:
    """Mann–Whitney AUROC with ties counted ½; NaN with one class."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))


def balanced_accuracy(labels, preds) -> float:
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(preds, dtype=bool)
    parts = [float((p[y == c] == c).mean()) for c in (True, False) if (y == c).any()]
    return float(np.mean(parts)) if parts else math.nan


class SimulationScores(NamedTuple):
    ev_correlation: float
    """pooled Pearson correlation over the held-out top and random records"""
    ev_correlation_top: float
    """the same on the top-activating records only"""
    ev_correlation_random: float
    """the same on the random records only"""
    rsquared: float
    """R² of the predictions against the activations on the simulator's scale"""
    predictions: list[list[float]]
    """the simulator's expected values, per record (top records first)"""


def score_simulation(simulator, explanation: str, rec: UnitRecords) -> SimulationScores:
    records = rec.score_top + rec.score_random
    preds = simulator.simulate(explanation, [r.tokens for r in records])
    real = [r.acts for r in records]
    nt = len(rec.score_top)
    return SimulationScores(
        correlation_score(real, preds), correlation_score(real[:nt], preds[:nt]),
        correlation_score(real[nt:], preds[nt:]), rsquared_score(real, preds, rec.max_act, simulator.scale),
        [[float(v) for v in p] for p in preds])


# --------------------------------------------------------------------------------------------- detection / fuzzing

def join_tokens(tokens: list[str]) -> str:
    """Tokens back to text: WordPiece pieces (``##ing``) glue to the previous token, other tokens are joined as
    they are when they carry their own spaces (byte-level BPE), else with spaces."""
    if any(t.startswith("##") for t in tokens) or not any(t[:1].isspace() for t in tokens[1:]):
        return re.sub(r" ##", "", " ".join(tokens)).strip()
    return "".join(tokens).strip()


def _yes_no_messages(question: str) -> list[dict]:
    return [{"role": "system", "content": "You are a careful assistant. Answer with a single digit: 1 for yes, "
                                         "0 for no."},
            {"role": "user", "content": question}]


def ask_yes_no(llm, questions: list[str]) -> np.ndarray:
    """P(yes) per question: from next-token logprobs of "1" vs "0" when the backend has them, else 1.0/0.0 from
    the generated answer (anything but a leading 1/yes counts as no)."""
    prompts = [_yes_no_messages(q) for q in questions]
    if not prompts:
        return np.zeros(0)
    if getattr(llm, "supports_next_token_logprobs", False):
        lp = np.asarray(llm.next_token_logprobs(prompts, ["0", "1"]), dtype=np.float64)
        m = np.max(lp, axis=1, keepdims=True)
        p = np.exp(lp - np.where(np.isfinite(m), m, 0))
        z = p.sum(1)
        return np.where(z > 0, p[:, 1] / np.where(z > 0, z, 1), 0.5)
    outs = llm.generate(prompts, max_new_tokens=3, temperature=0.0)
    return np.array([1.0 if re.match(r"\s*(1|yes)", o, re.I) else 0.0 for o in outs])


class ClassificationScore(NamedTuple):
    balanced_accuracy: float
    """mean of the accuracies on positives and on negatives (threshold P(yes) = 0.5)"""
    auroc: float
    """AUROC of P(yes) (NaN for generation-only backends: it would only restate the accuracy)"""
    n: int
    """questions asked"""


def _classification(labels: list[bool], p_yes: np.ndarray, graded: bool) -> ClassificationScore:
    return ClassificationScore(balanced_accuracy(labels, p_yes > 0.5),
                               auroc(labels, p_yes) if graded else math.nan, len(labels))


def detection_examples(rec: UnitRecords) -> tuple[list[ActivationRecord], list[bool]]:
    records = rec.score_top + rec.score_random
    return records, [max(r.acts, default=0.0) > 0 for r in records]


def score_detection(llm, explanation: str, rec: UnitRecords) -> ClassificationScore:
    records, labels = detection_examples(rec)
    qs = [f"A neuron's behaviour is explained as: {explanation}.\n\nText: {join_tokens(r.tokens)}\n\n"
          "Does the neuron activate on this text? Answer 1 for yes or 0 for no." for r in records]
    return _classification(labels, ask_yes_no(llm, qs), getattr(llm, "supports_next_token_logprobs", False))


def mark(token: str) -> str:
    """``<<token>>``, keeping a byte-level leading space outside and a WordPiece ``##`` in front."""
    lead = token[:len(token) - len(token.lstrip())]
    core = token.strip()
    glue = "##" if core.startswith("##") else ""
    return f"{lead}{glue}<<{core[len(glue):]}>>"


def fuzz_examples(rec: UnitRecords, seed: int = 0, scale: int = 10) -> tuple[list[str], list[bool]]:
    """Each held-out top record twice: with its real active tokens marked (label True) and with as many random
    inactive tokens marked (label False)."""
    rng = np.random.default_rng(seed + rec.unit)
    texts, labels = [], []
    for r in rec.score_top:
        levels = discretize(r.acts, rec.max_act, scale)
        active = [i for i, v in enumerate(levels) if v > 0]
        inactive = [i for i, v in enumerate(levels) if v == 0]
        if not active or not inactive:
            continue
        wrong = set(rng.choice(inactive, size=min(len(active), len(inactive)), replace=False).tolist())
        for marked, label in ((set(active), True), (wrong, False)):
            texts.append(join_tokens([mark(t) if i in marked else t for i, t in enumerate(r.tokens)]))
            labels.append(label)
    return texts, labels


def score_fuzzing(llm, explanation: str, rec: UnitRecords, seed: int = 0) -> ClassificationScore:
    texts, labels = fuzz_examples(rec, seed)
    qs = [f"A neuron's behaviour is explained as: {explanation}.\n\nIn the text below, tokens on which the neuron "
          f"activates are supposed to be marked <<like this>>.\n\nText: {t}\n\nAre the marked tokens the ones the "
          "explanation describes? Answer 1 for yes or 0 for no." for t in texts]
    return _classification(labels, ask_yes_no(llm, qs), getattr(llm, "supports_next_token_logprobs", False))


class TextEmbedder:
    """L2-normalised sentence embeddings from any registered model (default: offline MiniLM-L6), pooled as the model
    layer pools: mean over tokens for encoders, the last real token for causal LMs."""

    def __init__(self, model: str = "minilm", batch_size: int = 64, trust_remote_code: bool = False):
        from ..models import load_hf, resolve_model

        self.tok, self.model, self.causal = load_hf(resolve_model(model), trust_remote_code)
        self.tok.padding_side = "right"  # pool() finds the last real token on either side; right is the scoring layout
        self.model.eval()
        self.batch_size, self.name = batch_size, model

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch

        from ..models.features import pool

        out = []
        with torch.inference_mode():
            for b in range(0, len(texts), self.batch_size):
                enc = self.tok(texts[b:b + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                               max_length=128)
                h = self.model(**enc).last_hidden_state
                e = pool(h, enc["attention_mask"], causal=self.causal)
                out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))


def score_embedding(embed, explanation: str, rec: UnitRecords) -> ClassificationScore:
    records, labels = detection_examples(rec)
    vecs = embed([explanation] + [join_tokens(r.tokens) for r in records])
    sims = vecs[1:] @ vecs[0]
    return ClassificationScore(math.nan, auroc(labels, sims), len(labels))
