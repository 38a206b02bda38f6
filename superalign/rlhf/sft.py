"""Supervised finetuning on prompt/completion demonstrations, loss on completion tokens only (InstructGPT's SFT)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..models.lm import completion_batch, completion_logps
from ..runs.ledger import count_training
from ..train.batches import epoch_batches
from ..train.distributed import Runtime
from ..validate import check_int, check_positive, check_seed, help_field
from .lm import encode_pairs


@dataclass
class SFTConfig:
    """Supervised finetuning."""

    epochs: int = help_field(2, "passes over the demonstrations")
    batch_size: int = help_field(32, "demonstrations per step")
    lr: float = help_field(1e-4, "AdamW peak learning rate (cosine decay)")
    max_len: int = help_field(512, "context limit in tokens (prompt + completion + EOS)")
    seed: int = help_field(0, "seed for batch order")
    group_by_length: bool = help_field(True, "batch demonstrations of similar length together (less padding)")

    def __post_init__(self):
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size, example=32)
        check_positive("lr", self.lr, example=1e-4)
        check_int("max_len", self.max_len, minimum=2, example=512)
        check_seed("seed", self.seed)


class SFTFit(NamedTuple):
    losses: list[float]
    """mean completion-token NLL per step"""
    tokens: int
    """tokens processed"""
    wall_s: float
    """training wall time"""


def train_sft(model, tok, rows: list[dict], cfg: SFTConfig, progress: bool = True, rt=None) -> SFTFit:
    """Finetune ``model`` in place. ``rt`` (:class:`~superalign.train.distributed.Runtime`): device, precision and
    data parallelism — every process draws the same global batches and computes its share; the loss is the global
    completion-token mean (default: one process on the model's device, fp32). Returns global numbers."""
    from tqdm.auto import tqdm

    rt = rt or Runtime.for_model(model)
    torch.manual_seed(cfg.seed)
    data = encode_pairs(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows], cfg.max_len)
    steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    model, opt = rt.prepare(model, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, tokens = [], 0
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc="SFT", disable=not progress or not rt.is_main)
    for _ in range(cfg.epochs):
        for idx in epoch_batches(len(data), cfg.batch_size, gen, [len(s) for s, _ in data], cfg.group_by_length):
            part = rt.shard(idx)
            ids, mask, lmask = (t.to(rt.device) for t in completion_batch([data[i] for i in part.idx],
                                                                          tok.pad_token_id))
            with rt.autocast():
                lp, n = completion_logps(model, ids, mask, lmask)
                nll_sum, n_tok = -lp.sum(), n.sum()
                loss = rt.global_mean(nll_sum, n_tok, part.weight)
            rt.backward(loss)
            rt.step(opt, 1.0)
            sched.step()
            local_tokens = int(mask.sum()) if part.weight else 0
            count_training(rt.unwrap(model), local_tokens)
            losses.append(loss.item() if rt.world_size == 1 else rt.global_ratio(nll_sum.item(), n_tok, part.weight))
            tokens += local_tokens if rt.world_size == 1 else int(rt.all_sum(local_tokens))
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return SFTFit(losses, tokens, time.perf_counter() - t0)
