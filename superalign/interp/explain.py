"""Explainers: a unit's top-activating records → a one-sentence explanation.

- :class:`LLMExplainer` prompts a language model the way Bills et al. 2023 did: records as ``token<tab>activation``
  lines with activations discretised to 0..10, then the tokens with non-zero activations repeated on their own,
  one worked example (small models need it to keep the format), and the model completes "the main thing this
  neuron does is find …".
- :class:`TokenLookupExplainer` is the baseline every LLM explainer has to beat: it lists the tokens on which the
  unit fires hardest (mean discretised activation over the explainer's records, ties by count). It reads no
  context, so it shows how much of an explanation's score a token list alone earns.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import defaultdict

from .records import ActivationRecord, UnitRecords, discretize

EXPLAIN_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in a short document. "
    "Look at the parts of the document the neuron activates for and summarize in a single sentence what the neuron "
    "is looking for. Don't list examples of words.\n\n"
    "The activation format is token<tab>activation. Activation values range from 0 to {scale}. A neuron finding "
    "what it's looking for is represented by a non-zero activation value. The higher the activation value, the "
    "stronger the match.")

# One worked example, deliberately unlike text sentiment or topic words, so that a small model that copies it
# instead of reading the real records gets an explanation that scores badly rather than one that looks plausible.
EXAMPLE_RECORDS = [
    ActivationRecord(["the", " band", " formed", " in", " 1987", " and", " split", " in", " 1994"],
                     [0, 0, 0, 1, 10, 0, 0, 1, 9], 0, 0),
    ActivationRecord(["by", " march", " 2003", " the", " company", " had", " grown"], [0, 4, 8, 0, 0, 0, 0], 0, 0),
]
EXAMPLE_EXPLANATION = "years and dates"
LEAD = "the main thing this neuron does is find"


def clean_token(t: str) -> str:
    """One line per token: tabs and newlines inside a token would break the format."""
    return t.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def format_records(records: list[ActivationRecord], max_act: float, scale: int = 10,
                   discretized: bool = False) -> str:
    """The ``<start> token<tab>activation … <end>`` block, then the non-zero tokens again (as in the paper)."""
    blocks, nonzero = [], []
    for r in records:
        levels = [int(a) for a in r.acts] if discretized else discretize(r.acts, max_act, scale)
        blocks.append("<start>\n" + "".join(f"{clean_token(t)}\t{v}\n" for t, v in zip(r.tokens, levels)) + "<end>")
        nonzero.append("<start>\n" + "".join(f"{clean_token(t)}\t{v}\n" for t, v in zip(r.tokens, levels) if v)
                       + "<end>")
    return ("Activations:\n" + "\n".join(blocks) + "\n\nSame activations, but with all zeros filtered out:\n"
            + "\n".join(nonzero))


def explanation_messages(records: list[ActivationRecord], max_act: float, scale: int = 10) -> list[dict]:
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM.format(scale=scale)},
        {"role": "user", "content": "Neuron 1\n" + format_records(EXAMPLE_RECORDS, 10, scale, discretized=True)
         + f"\n\nExplanation of neuron 1 behavior: {LEAD}"},
        {"role": "assistant", "content": f" {EXAMPLE_EXPLANATION}."},
        {"role": "user", "content": "Neuron 2\n" + format_records(records, max_act, scale)
         + f"\n\nExplanation of neuron 2 behavior: {LEAD}"},
    ]


def parse_explanation(text: str) -> str:
    """First sentence of the completion, without the lead-in if the model repeated it."""
    text = text.strip()
    low = text.lower()
    for lead in (LEAD, "the main thing this neuron does is"):
        if low.startswith(lead):
            text = text[len(lead):].strip()
            break
    text = re.split(r"\n|(?<=[.!?])\s", text, maxsplit=1)[0].strip().rstrip(".").strip()
    return text or "nothing in particular"


class Explainer(ABC):
    name: str

    @abstractmethod
    def explain(self, recs: list[UnitRecords]) -> list[str]:
        """One explanation per unit."""


class LLMExplainer(Explainer):
    def __init__(self, llm, scale: int = 10, max_new_tokens: int = 40, temperature: float = 0.0):
        self.llm, self.scale, self.max_new_tokens, self.temperature = llm, scale, max_new_tokens, temperature
        self.name = f"llm:{llm.name}"

    def explain(self, recs: list[UnitRecords]) -> list[str]:
        prompts = [explanation_messages(r.explain, r.max_act, self.scale) for r in recs]
        outs = self.llm.generate(prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                 stop=["\n\n", "<start>", "Neuron 3"])
        return [parse_explanation(o) for o in outs]


class TokenLookupExplainer(Explainer):
    """Explanation = the tokens with the highest mean discretised activation (seen at least ``min_count`` times
    when enough such tokens exist)."""

    name = "token-lookup"

    def __init__(self, n_tokens: int = 5, scale: int = 10, min_count: int = 1):
        self.n_tokens, self.scale, self.min_count = n_tokens, scale, min_count

    def top_tokens(self, r: UnitRecords) -> list[str]:
        total: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        for rec in r.explain:
            for t, v in zip(rec.tokens, discretize(rec.acts, r.max_act, self.scale)):
                key = t.strip().lower()
                if key and v > 0:
                    total[key] += v
                if key:
                    count[key] += 1
        mean = {t: total[t] / count[t] for t in total}
        ranked = sorted(mean, key=lambda t: (-mean[t], -count[t], t))
        return ranked[:self.n_tokens]

    def explain(self, recs: list[UnitRecords]) -> list[str]:
        out = []
        for r in recs:
            toks = self.top_tokens(r)
            out.append("the tokens " + ", ".join(f'"{t}"' for t in toks) if toks else "nothing in particular")
        return out


def lookup_tokens(explanation: str) -> list[str]:
    """The quoted tokens of a token-lookup explanation."""
    return re.findall(r'"([^"]*)"', explanation)
