"""Training loop for TopK SAEs on cached activations (top to bottom, every knob visible)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..errors import SuperalignError
from ..validate import check_int, check_positive, check_seed, help_field
from .sae import TopKSAE, fvu, l0, lr_default


@dataclass
class SAETrainConfig:
    """Optimisation of a TopK SAE."""

    batch_size: int = help_field(4096, "activation vectors per step")
    epochs: int = help_field(1, "passes over the activations")
    lr: float | None = help_field(None, "Adam learning rate (default: Gao et al.'s 2e-4 / sqrt(n_latents / 2^14))")
    eps: float = help_field(6.25e-10, "Adam epsilon (the paper's value; the default 1e-8 is too large for small "
                                      "gradients)")
    max_grad_norm: float = help_field(1.0, "gradient clipping")
    median_sample: int = help_field(4096, "inputs used to initialise b_pre at their geometric median")
    seed: int = help_field(0, "seed for initialisation and batch order")

    def __post_init__(self):
        check_int("batch_size", self.batch_size, example=4096)
        check_int("epochs", self.epochs)
        check_positive("lr", self.lr, example=2e-4, none_ok=True)
        check_positive("eps", self.eps, example=6.25e-10)
        check_positive("max_grad_norm", self.max_grad_norm, example=1.0)
        check_int("median_sample", self.median_sample, example=4096)
        check_seed("seed", self.seed)


class SAEFit(NamedTuple):
    fvu: list[float]
    """training FVU per step (of the global batch, under data parallelism)"""
    aux: list[float]
    """AuxK loss per step"""
    tokens: int
    """activation vectors processed (the global batches')"""
    wall_s: float
    """training wall time"""


def sae_train_flops_per_token(sae, extra_k: int = 0) -> float:
    """FLOPs of one training step per input, counting what is really multiplied.

    TopK: the dense encoder forward 2·d·n (the pre-activations; computed without a graph), then only k-sparse work
    (``sparse_ops``): the encoder backward ∂W_enc and ∂x (2·k·d each), the decoder forward (2·k·d) and backward ∂W_dec
    and ∂a (2·k·d each): 2·d·n + 10·k·d; each latent gathered beyond the k (AuxK, Multi-TopK: ``extra_k``) adds
    10·d. The dense encoder has no backward matmul, so 6·d·n would overstate the work 3× and the MFU with it.
    ReLU (dense code): encoder and decoder forward 2·d·n each, and twice that each backward: 12·d·n."""
    d, n = sae.cfg.d_in, sae.cfg.n_latents
    if getattr(sae, "architecture", "") == "relu":
        return 12.0 * d * n
    return 2.0 * d * n + 10.0 * (sae.cfg.k + extra_k) * d


def sae_eval_flops_per_token(sae) -> float:
    """FLOPs of encoding and decoding one input (no backward): TopK 2·d·n + 2·k·d, ReLU 4·d·n."""
    d, n = sae.cfg.d_in, sae.cfg.n_latents
    if getattr(sae, "architecture", "") == "relu":
        return 4.0 * d * n
    return 2.0 * d * n + 2.0 * sae.cfg.k * d


def _place(acts: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The training activations where the steps read them: on a GPU, the whole set when it takes at most half the
    free memory (no copy per step), else pinned host memory for asynchronous per-batch copies."""
    if device.type != "cuda":
        return acts
    free, _ = torch.cuda.mem_get_info(device)
    return acts.to(device, non_blocking=True) if acts.numel() * acts.element_size() <= free // 2 else acts.pin_memory()


def train_sae(sae: TopKSAE, acts: torch.Tensor, cfg: SAETrainConfig, progress: bool = True, rt=None) -> SAEFit:
    """Train ``sae`` on ``acts`` [N, d] (on the host). ``rt``: the :class:`superalign.train.distributed.Runtime` to
    train under (device, bf16/fp16 autocast with fp32 master weights, data-parallel processes); default one process
    where the SAE's parameters are, in fp32.

    Data parallelism: every process draws the same global batches (same seed) and computes its rows of each
    (``rt.shard``); the losses are split with :class:`~superalign.interp.sae_base.GlobalBatch` so the gradient is
    one process's for the global batch, firing counts are summed so dead latents (AuxK) agree everywhere, and
    b_pre's geometric median is computed from the same sample on every process. The decoder's unit-norm projection
    then acts on the same averaged gradient and the same weights on every process."""
    from tqdm.auto import tqdm

    from ..runs.ledger import add_flops
    from ..train.distributed import Runtime
    from .sae_base import GlobalBatch, centred_sq

    if acts.ndim != 2 or acts.shape[0] == 0:
        raise SuperalignError(f"activations must be a non-empty [N, d] matrix, got shape {tuple(acts.shape)}",
                              "cache activations first (superalign interp cache)")
    if acts.shape[1] != sae.cfg.d_in:
        raise SuperalignError(f"activations have width {acts.shape[1]} but the SAE expects {sae.cfg.d_in}",
                              "set d_in to the hook point's hidden size")
    if not torch.isfinite(acts).all():
        raise SuperalignError("activations contain NaN/inf", "check the cached activations")
    if rt is None:
        rt = Runtime(device=next(sae.parameters()).device, precision="fp32")
    gen = torch.Generator().manual_seed(cfg.seed)
    # the same sample, hence the same b_pre, on every process (DDP also broadcasts rank 0's weights at wrapping)
    sae.init_b_pre(acts[torch.randperm(len(acts), generator=gen)[:cfg.median_sample]])
    sae.to(rt.device)
    # fused: the same Adam update in one kernel per parameter (on CPU ~20× faster than the per-op loop)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in sae.parameters())
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr or lr_default(sae.cfg.n_latents), eps=cfg.eps, fused=fused)
    model, opt = rt.prepare(sae, opt)
    inner = rt.unwrap(model)
    data = _place(acts, rt.device)
    all_sum = rt.all_sum_tensor if rt.world_size > 1 else None
    steps = cfg.epochs * math.ceil(len(acts) / cfg.batch_size)
    model.train()
    fvus, auxs, t0 = [], [], time.perf_counter()
    bar = tqdm(total=steps, desc="SAE", disable=not progress)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(acts), generator=gen).to(data.device)  # one copy per epoch, none per step
        for b in range(0, len(acts), cfg.batch_size):
            rows = order[b:b + cfg.batch_size]
            xg = data[rows].to(rt.device, torch.float32, non_blocking=True)  # the global batch
            part = rt.shard(range(len(rows)))
            # rt.shard's rows (every world_size-th from rank, or a placeholder) as a view: no index copy to the device
            x = xg if rt.world_size == 1 else xg[rt.rank::rt.world_size] if part.weight else xg[:1]
            # FVU's denominator from the whole global batch, which every process holds: no communication
            batch = GlobalBatch(centred_sq(xg), len(rows), rt.world_size * part.weight, part.weight, all_sum)
            with rt.autocast():
                out = model(x, batch=batch)
            rt.backward(out.loss)
            inner.remove_parallel_grad()
            rt.step(opt, cfg.max_grad_norm)
            inner.normalize_decoder()
            # each process counts the rows it really computed (a placeholder row counts 0)
            add_flops(sae_train_flops_per_token(inner, inner.extra_k) * len(x) * part.weight,
                      tokens=int(len(x) * part.weight), stage="sae-train")
            fvus.append(out.fvu.detach().float())  # no per-step host sync; converted once at the end
            auxs.append(out.aux_loss.detach().float())
            bar.update()
            if progress and len(fvus) % 20 == 1:
                bar.set_postfix(fvu=f"{fvus[-1].item():.3f}", dead=f"{inner.dead_fraction():.2f}")
    bar.close()
    fvus, auxs = torch.stack(fvus).tolist(), torch.stack(auxs).tolist()
    inner.eval()
    return SAEFit(fvus, auxs, len(acts) * cfg.epochs, time.perf_counter() - t0)


@torch.no_grad()
def evaluate_sae(sae: TopKSAE, acts: torch.Tensor, batch_size: int = 8192) -> dict:
    """FVU, L0 and the dense fraction (latents active on > 10% of inputs) on held-out activations (run where the
    SAE's parameters are, in fp32)."""
    from ..runs.ledger import add_flops

    sae.eval()
    device = next(sae.parameters()).device
    x_all, xh_all, l0s = [], [], []
    counts = torch.zeros(sae.cfg.n_latents, device=device)
    for b in range(0, len(acts), batch_size):
        x = acts[b:b + batch_size].to(device, torch.float32)
        enc = sae.encode(x)
        x_all.append(x)
        xh_all.append(sae.decode(enc.top_acts, enc.top_indices))
        l0s.append(l0(enc.top_acts) * len(x))
        counts.scatter_add_(0, enc.top_indices.reshape(-1), (enc.top_acts > 0).reshape(-1).float())
    add_flops(sae_eval_flops_per_token(sae) * len(acts), tokens=len(acts), stage="sae-eval")
    x, xh = torch.cat(x_all), torch.cat(xh_all)
    density = counts / len(x)
    return {"fvu": float(fvu(x, xh)), "l0": float(sum(l0s)) / len(x),
            "dead_fraction_eval": float((density == 0).float().mean()),
            "dense_fraction": float((density > 0.1).float().mean()), "dead_fraction_train": sae.dead_fraction()}
