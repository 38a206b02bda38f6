"""RLHF token sequences: prompt + completion + EOS, fitted to the reward model's context.

The general causal-LM utilities (loading by name, padding, sampling with a KV cache, token log-probs, saving) are
the shared model layer's, :mod:`superalign.models.lm`; index batches per epoch are :mod:`superalign.train.batches`.
"""

from __future__ import annotations

from ..models.lm import encode_prompts
from .reward import encode_completion


def encode_pairs(tok, prompts: list[str], completions: list[str], max_len: int) -> list[tuple[list[int], int]]:
    """(prompt + completion + EOS ids, prompt length) per row, with the context check of the reward model."""
    out = []
    for p, c in zip(encode_prompts(tok, prompts), completions):
        out.append((encode_completion(tok, p, c, max_len), len(p)))
    return out


