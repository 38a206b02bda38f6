"""Index batches for one training epoch: plain shuffled, or grouped by length (less padding)."""

from __future__ import annotations

import torch


def length_grouped_order(lengths: list[int], batch_size: int, generator: torch.Generator,
                         mega: int = 64) -> list[list[int]]:
    """Batches of similar length (less padding): shuffle, cut into mega-batches of ``mega`` batches, sort each by
    length, cut into batches, shuffle the batch order. Every example appears once per epoch."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    for m in range(0, len(order), batch_size * mega):
        chunk = sorted(order[m:m + batch_size * mega], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, lengths: list[int] | None = None,
                  group_by_length: bool = False) -> list[list[int]]:
    """One epoch of index batches: plain shuffled, or length-grouped."""
    if group_by_length and lengths is not None:
        return length_grouped_order(lengths, batch_size, generator)
    order = torch.randperm(n, generator=generator).tolist()
    return [order[b:b + batch_size] for b in range(0, n, batch_size)]
