"""RLHF token sequences: prompt + completion + EOS, fitted to the reward model's context.

The general causal-LM utilities (loading by name, padding, sampling with a KV cache, token log-probs, saving) are
the shared model layer's, :mod:`superalign.models.lm`; index batches per epoch are :mod:`superalign.train.batches`.
"""

from __future__ import annotations

import torch

from ..models.lm import encode_prompts
from .reward import encode_completion


def encode_pairs(tok, prompts: list[str], completions: list[str], max_len: int) -> list[tuple[list[int], int]]:
    """(prompt + completion + EOS ids, prompt length) per row, with the context check of the reward model."""
    out = []
    for p, c in zip(encode_prompts(tok, prompts), completions):
        out.append((encode_completion(tok, p, c, max_len), len(p)))
    return out


# ----------------------------------------------------------------------------- device, data parallelism, compute


def default_runtime(model):
    """The runtime of a trainer called without one: one process on the model's device, fp32 (the library default)."""
    from ..models.lm import model_device
    from ..train.distributed import Runtime

    return Runtime(device=model_device(model), precision="fp32")


def n_params(model) -> int:
    """Parameters of a model (shared tensors such as tied embeddings once), for the FLOP estimates."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_forward(model, tokens: int, stage: str) -> None:
    """Add 2·params·tokens (a forward pass) to the run's compute ledger."""
    from ..runs.ledger import add_flops

    add_flops(2.0 * n_params(model) * tokens, tokens=tokens, stage=stage)


def count_training(model, tokens: int, stage: str = "train") -> None:
    """Add 6·params·tokens (forward + backward) to the run's compute ledger."""
    from ..runs.ledger import add_flops

    add_flops(6.0 * n_params(model) * tokens, tokens=tokens, stage=stage)


def mean_loss(rt, local_sum, local_count, weight: float = 1.0):
    """The loss of a global batch as (sum over its rows) / (count over its rows). One process keeps the plain division
    (bit for bit the single-device result); data-parallel processes go through :meth:`Runtime.global_mean`, so that
    their averaged gradient is the one-process gradient of the global batch."""
    if rt.world_size == 1:
        return local_sum / local_count
    return rt.global_mean(local_sum, local_count, weight)


def global_value(rt, local_sum, local_count, weight: float = 1.0) -> float:
    """A logged number over the global batch: all-summed sum / all-summed count (the local mean in one process)."""
    if rt.world_size == 1:
        return float(local_sum / local_count) if torch.is_tensor(local_sum) else local_sum / local_count
    return rt.all_sum(local_sum * weight) / max(rt.all_sum(float(local_count) * weight), 1e-12)


def all_sum_tensor(rt, x: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of a tensor over the processes (the tensor itself in one process): one collective for a whole
    vector of statistics."""
    if rt.world_size == 1:
        return x
    return rt.accelerator.reduce(x.detach().clone(), reduction="sum")


def all_max_int(rt):
    """``across`` for :func:`superalign.models.lm.sample`: the maximum of an integer over the processes."""
    if rt.world_size == 1:
        return None

    def across(v) -> int:
        t = torch.tensor([int(v)], dtype=torch.long, device=rt.device)
        return int(rt.accelerator.gather(t).max())
    return across
