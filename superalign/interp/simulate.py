"""Simulators: (explanation, token sequence) → predicted activation of the unit on each token, on the 0..scale scale.

- :class:`AllAtOnceSimulator` — Bills et al.'s "all at once" method. One prompt lists every token followed by a tab
  and the placeholder ``unknown``; one forward pass (teacher forcing) gives, right after each tab, the model's
  distribution over the next token, and the prediction is the expected value over the digit tokens
  ``"0" … str(scale)``, renormalised over those candidates. Needs echo logprobs (a local Hugging Face model, or a
  completions endpoint that echoes logprobs). This is the simulator that broke in openai/automated-interpretability
  when the API stopped returning prompt logprobs; here it runs offline on SmolLM2.
- :class:`PerTokenSimulator` — the same expected value, one question per token ("what is the activation of token
  i?"), from next-token logprobs: what chat endpoints with ``top_logprobs`` still give.
- :class:`GenerationSimulator` — the logprob-free fallback: the model writes ``token<tab>activation`` lines and the
  integers are parsed (missing or unparseable lines count as 0).
- :class:`TokenLookupSimulator` — no language model: a token-lookup explanation (``the tokens "a", "b"``) predicts
  ``scale`` on those tokens and 0 elsewhere; the reference score of a pure token list.

The scale is 0..10 as in the paper when "10" is one token of the simulator's vocabulary; with tokenizers that split
numbers into digits (SmolLM2, Llama) the prompt and the candidates use 0..9 instead. Pearson-correlation scores do
not depend on the scale.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

import numpy as np

from ..errors import SuperalignError
from .explain import EXAMPLE_EXPLANATION, EXAMPLE_RECORDS, LEAD, clean_token, lookup_tokens

SIM_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in a short document. "
    "Look at an explanation of what the neuron does, and try to predict its activations on each token.\n\n"
    "The activation format is token<tab>activation, activations go from 0 to {scale}, \"unknown\" indicates an "
    "unknown activation. Most activations will be 0.")
PLACEHOLDER = "unknown"


def expected_value(logprobs: np.ndarray) -> np.ndarray:
    """Expected level Σ_i i·p_i with p renormalised over the candidates "0".."scale" (last axis); 0 where every
    candidate has probability 0 (e.g. none was in a remote API's top logprobs)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    m = np.max(lp, axis=-1, keepdims=True)
    ok = np.isfinite(m)
    p = np.exp(lp - np.where(ok, m, 0.0))
    p = np.where(ok, p, 0.0)
    z = p.sum(-1)
    levels = np.arange(lp.shape[-1])
    return np.where(z > 0, (p * levels).sum(-1) / np.where(z > 0, z, 1.0), 0.0)


def _example_block(scale: int, with_levels: bool) -> str:
    lines = []
    for r in EXAMPLE_RECORDS:
        lines.append("<start>\n" + "".join(
            f"{clean_token(t)}\t{min(scale, int(a)) if with_levels else PLACEHOLDER}\n"
            for t, a in zip(r.tokens, r.acts)) + "<end>")
    return "\n".join(lines)


def simulation_messages(explanation: str, scale: int) -> list[dict]:
    """System prompt and one worked example; the caller appends the sequence to simulate."""
    return [
        {"role": "system", "content": SIM_SYSTEM.format(scale=scale)},
        {"role": "user", "content": f"Neuron 1\nExplanation of neuron 1 behavior: {LEAD} {EXAMPLE_EXPLANATION}.\n"
                                    f"Activations:\n{_example_block(scale, False)}"},
        {"role": "assistant", "content": f"Activations:\n{_example_block(scale, True)}"},
        {"role": "user", "content": f"Neuron 2\nExplanation of neuron 2 behavior: {LEAD} {explanation}.\n"
                                    "Activations:\n"},
    ]


def choose_scale(llm, preferred: int = 10) -> int:
    """10 when "10" is a single token of the LLM's vocabulary (or the backend cannot tell), else 9."""
    single = getattr(llm, "is_single_token", None)
    if preferred == 10 and single is not None and not single("10"):
        return 9
    return preferred


class Simulator(ABC):
    name: str
    scale: int = 10

    @abstractmethod
    def simulate(self, explanation: str, seqs: list[list[str]]) -> list[np.ndarray]:
        """Predicted activation level (0..scale, float) of every token of every sequence."""


class AllAtOnceSimulator(Simulator):
    def __init__(self, llm, scale: int | None = None):
        if not getattr(llm, "supports_echo_logprobs", False):
            raise SuperalignError(f"{llm.name} cannot return prompt (echo) logprobs, which all-at-once simulation "
                                  "needs", "use --simulator per-token or generate, or a local model (hf:, smollm2)")
        self.llm, self.scale = llm, scale if scale is not None else choose_scale(llm)
        self.name = f"all-at-once:{llm.name}"

    def prompt(self, explanation: str, tokens: list[str]) -> tuple[str, list[int]]:
        """The echo prompt and the character offsets right after each token's tab."""
        text = self.llm.format_chat(simulation_messages(explanation, self.scale), add_generation_prompt=True)
        text += "Activations:\n<start>\n"
        offsets = []
        for t in tokens:
            text += f"{clean_token(t)}\t"
            offsets.append(len(text))
            text += f"{PLACEHOLDER}\n"
        return text + "<end>\n", offsets

    def simulate(self, explanation: str, seqs: list[list[str]]) -> list[np.ndarray]:
        cands = [str(i) for i in range(self.scale + 1)]
        out = []
        for tokens in seqs:
            if not tokens:
                out.append(np.zeros(0))
                continue
            text, offsets = self.prompt(explanation, tokens)
            out.append(expected_value(self.llm.echo_logprobs(text, offsets, cands)))
        return out


class PerTokenSimulator(Simulator):
    def __init__(self, llm, scale: int | None = None):
        if not getattr(llm, "supports_next_token_logprobs", False):
            raise SuperalignError(f"{llm.name} returns no logprobs", "use --simulator generate (logprob-free)")
        self.llm, self.scale = llm, scale if scale is not None else choose_scale(llm)
        self.name = f"per-token:{llm.name}"

    def simulate(self, explanation: str, seqs: list[list[str]]) -> list[np.ndarray]:
        cands = [str(i) for i in range(self.scale + 1)]
        prompts, lengths = [], []
        for tokens in seqs:
            listing = "".join(f"{clean_token(t)}\t{PLACEHOLDER}\n" for t in tokens)
            base = simulation_messages(explanation, self.scale)
            for i, t in enumerate(tokens):
                msgs = [*base[:-1], {"role": "user", "content": base[-1]["content"] + f"<start>\n{listing}<end>\n\n"
                                     f"What is the activation of token {i + 1} ({clean_token(t)!r})? "
                                     f"Answer with a single number from 0 to {self.scale}."}]
                prompts.append(msgs)
            lengths.append(len(tokens))
        ev = expected_value(self.llm.next_token_logprobs(prompts, cands)) if prompts else np.zeros(0)
        return list(np.split(ev, np.cumsum(lengths)[:-1])) if seqs else []


def parse_levels(text: str, n: int, scale: int) -> np.ndarray:
    """Integers from ``token<tab>activation`` lines, in order; lines without a number (or beyond n) are skipped,
    missing tokens count as 0, values are clipped to 0..scale."""
    levels = []
    for line in text.splitlines():
        if line.strip() in ("<start>", "<end>", "Activations:") or "\t" not in line:
            continue
        m = re.search(r"(-?\d+(?:\.\d+)?)\s*$", line.split("\t")[-1])
        levels.append(float(np.clip(float(m.group(1)), 0, scale)) if m else 0.0)
    levels = (levels + [0.0] * n)[:n]
    return np.asarray(levels)


class GenerationSimulator(Simulator):
    def __init__(self, llm, scale: int = 10, max_new_tokens_per_token: int = 6):
        self.llm, self.scale, self.per_token = llm, scale, max_new_tokens_per_token
        self.name = f"generate:{llm.name}"

    def simulate(self, explanation: str, seqs: list[list[str]]) -> list[np.ndarray]:
        prompts = []
        for tokens in seqs:
            msgs = simulation_messages(explanation, self.scale)
            listing = "".join(f"{clean_token(t)}\t{PLACEHOLDER}\n" for t in tokens)
            msgs[-1] = {"role": "user", "content": msgs[-1]["content"] + f"<start>\n{listing}<end>\n\nReplace every "
                        f"\"{PLACEHOLDER}\" by the predicted activation (0 to {self.scale}), one token per line."}
            prompts.append(msgs)
        n_max = max((len(s) for s in seqs), default=0)
        outs = self.llm.generate(prompts, max_new_tokens=self.per_token * n_max + 8, temperature=0.0,
                                 stop=["<end>"]) if prompts else []
        return [parse_levels(o, len(s), self.scale) for o, s in zip(outs, seqs)]


class TokenLookupSimulator(Simulator):
    name = "token-lookup"

    def __init__(self, scale: int = 10):
        self.scale = scale

    def simulate(self, explanation: str, seqs: list[list[str]]) -> list[np.ndarray]:
        keys = {t.strip().lower() for t in lookup_tokens(explanation)}
        return [np.array([float(self.scale) if t.strip().lower() in keys else 0.0 for t in s]) for s in seqs]


def make_simulator(kind: str, llm=None, scale: int | None = None) -> Simulator:
    """``all-at-once`` | ``per-token`` | ``generate`` (need an LLM) or ``token-lookup``."""
    if kind == "token-lookup":
        return TokenLookupSimulator(scale or 10)
    if llm is None:
        raise SuperalignError(f"simulator {kind!r} needs a language model", "pass --simulator-llm (e.g. smollm2)")
    if kind == "all-at-once":
        return AllAtOnceSimulator(llm, scale)
    if kind == "per-token":
        return PerTokenSimulator(llm, scale)
    if kind == "generate":
        return GenerationSimulator(llm, scale if scale is not None else choose_scale(llm))
    raise SuperalignError(f"unknown simulator {kind!r}", "use all-at-once, per-token, generate or token-lookup")
