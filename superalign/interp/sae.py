"""TopK sparse autoencoders with the recipe of Gao et al. 2024 ("Scaling and evaluating sparse autoencoders").

    z  = TopK(ReLU(W_enc (x − b_pre) + b_enc))          k active latents per input
    x̂  = W_dec z + b_pre

- tied initialisation: W_enc = W_decᵀ at the start, decoder rows (one per latent) of unit norm;
- b_pre initialised at the geometric median of a sample of inputs (Weiszfeld iterations);
- decoder rows kept at unit norm: before each step the gradient component parallel to each row is projected out,
  after the step the rows are renormalised;
- AuxK: latents that have not fired for ``dead_tokens`` inputs are "dead"; the top ``k_aux`` of their
  pre-activations reconstruct the residual x − x̂, and that normalised MSE, times ``aux_coef`` (1/32), is added;
- optional Multi-TopK (the paper's 4k term): the same latents' top-(mult·k) reconstruction adds a loss weighted
  ``multi_topk_coef`` (1/8 in the paper) so that the SAE also works at larger k.

Loss and the headline metric are the fraction of variance unexplained, FVU = ‖x − x̂‖² / ‖x − mean(x)‖².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SuperalignError
from ..validate import check_int, check_nonnegative, help_field
from .sae_base import (  # noqa: F401  (re-exported: superalign.interp.sae is the public home of these)
    EncoderOutput,
    ForwardOutput,
    GlobalBatch,
    SparseAutoencoder,
    fvu,
    geometric_median,
    load_sae,
    load_sae_state,
    random_rows,
    read_checkpoint_cfg,
    register_architecture,
)
from .sparse_ops import gather_encode, sparse_decode, topk_encode


@dataclass
class SAEConfig:
    """Architecture and loss of a TopK sparse autoencoder."""

    d_in: int = help_field(384, "input width (the hook point's hidden size)")
    n_latents: int = help_field(4096, "number of latents (dictionary size)")
    k: int = help_field(32, "active latents per input")
    aux_k: int | None = help_field(None, "latents used by the AuxK loss (default: d_in // 2, as in the paper)")
    aux_coef: float = help_field(1 / 32, "weight of the AuxK loss (0 turns it off)")
    dead_tokens: int = help_field(10_000_000, "a latent that has not fired for this many inputs counts as dead")
    multi_topk: int = help_field(0, "Multi-TopK multiplier (0: off; the paper uses 4)")
    multi_topk_coef: float = help_field(1 / 8, "weight of the Multi-TopK term")

    def __post_init__(self):
        if self.d_in < 1 or self.n_latents < 1:
            raise SuperalignError("d_in and n_latents must be ≥ 1", "fix the SAE config")
        if not 1 <= self.k <= self.n_latents:
            raise SuperalignError(f"k must be in 1..n_latents ({self.n_latents}), got {self.k}", "pass a smaller --k")
        check_int("aux_k", self.aux_k, example=192, none_ok=True)
        check_nonnegative("aux_coef", self.aux_coef, example=1 / 32)
        check_int("dead_tokens", self.dead_tokens, example=10_000_000)
        check_int("multi_topk", self.multi_topk, minimum=0, example=4)
        check_nonnegative("multi_topk_coef", self.multi_topk_coef, example=1 / 8)
        if self.multi_topk and self.multi_topk * self.k > self.n_latents:
            raise SuperalignError("multi_topk · k exceeds n_latents", "lower --multi-topk or --k")


@register_architecture
class TopKSAE(SparseAutoencoder):
    architecture = "topk"
    """written to cfg.json so that :func:`load_sae` rebuilds the right class"""
    config_class = SAEConfig

    def __init__(self, cfg: SAEConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        w_dec = random_rows(cfg.n_latents, cfg.d_in, seed, norm=1.0)
        self.W_dec = torch.nn.Parameter(w_dec)                 # [n_latents, d_in], unit-norm rows
        self.W_enc = torch.nn.Parameter(w_dec.clone())         # tied initialisation (used as W_enc = this ᵀ)
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_pre = torch.nn.Parameter(torch.zeros(cfg.d_in))
        # inputs since each latent last fired (for AuxK and the dead fraction)
        self.register_buffer("since_fired", torch.zeros(cfg.n_latents, dtype=torch.long))

    @torch.no_grad()
    def init_b_pre(self, sample: torch.Tensor) -> None:
        self.b_pre.copy_(geometric_median(sample.float()))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU pre-activations of every latent, [..., n_latents] (the dense reference, differentiable)."""
        return F.relu((x - self.b_pre) @ self.W_enc.T + self.b_enc)

    def encode(self, x: torch.Tensor, k: int | None = None) -> EncoderOutput:
        """The k active latents of each input, indices ascending. ``top_acts`` carry the gradient (sparse backward,
        see ``sparse_ops``); ``pre_acts`` (ReLU'd, every latent) are computed once and returned without a graph."""
        lead = x.shape[:-1]
        xc = (x - self.b_pre).reshape(-1, x.shape[-1])
        acts, idx, pre = topk_encode(xc, self.W_enc, self.b_enc, k or self.cfg.k)
        return EncoderOutput(acts.reshape(*lead, -1), idx.reshape(*lead, -1), pre.reshape(*lead, -1))

    def decode(self, top_acts: torch.Tensor, top_indices: torch.Tensor) -> torch.Tensor:
        """x̂ = Σ_j a_j · W_dec[i_j] + b_pre, computed sparsely (embedding_bag forward, sparse backward; any order)."""
        return sparse_decode(top_acts, top_indices, self.W_dec) + self.b_pre

    def forward(self, x: torch.Tensor, track_dead: bool = True, batch: GlobalBatch | None = None) -> ForwardOutput:
        """Reconstruction and losses of a batch. ``batch`` (see :class:`GlobalBatch`): ``x`` is this process's share
        of a data-parallel global batch; the returned ``fvu``/``aux_loss``/``multi_topk_fvu`` are then the global
        batch's (detached), ``loss`` this process's share for DDP, and dead-latent tracking counts every process's
        firings, so all processes agree on which latents are dead."""
        cfg = self.cfg
        batch = batch if batch is not None else GlobalBatch.local(x)
        xc = x - self.b_pre
        # the [B, n] pre-activations once, without a graph and without the dense ReLU (top-k values are ReLU'd)
        top_acts, top_idx, pre = topk_encode(xc, self.W_enc, self.b_enc, cfg.k, dense_relu=False)
        x_hat = sparse_decode(top_acts, top_idx, self.W_dec, check=False) + self.b_pre
        loss_fvu, loss = batch.share((x - x_hat).pow(2).sum() / batch.x_var)
        zero = x.new_zeros(())
        aux = zero
        self.extra_k = 0  # latents gathered beyond the k (AuxK, Multi-TopK) in this pass: the trainer's FLOP count
        if track_dead and self.training:
            with torch.no_grad():  # scatter, not boolean indexing: no host sync
                fired = torch.zeros_like(self.since_fired).scatter_add_(0, top_idx.reshape(-1),
                                                                        (top_acts > 0).reshape(-1).long())
                fired = batch.sum(fired) > 0
                self.since_fired.copy_(torch.where(fired, 0, self.since_fired + batch.rows))
        dead = self.since_fired >= cfg.dead_tokens
        if cfg.aux_coef > 0 and self.training and bool(dead.any()):
            dead_idx = dead.nonzero().squeeze(1)  # only dead latents may explain the residual
            k_aux = min(cfg.aux_k or cfg.d_in // 2, len(dead_idx))
            self.extra_k += k_aux
            with torch.no_grad():
                j = pre.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False).indices.sort(dim=-1).values
            idx = dead_idx[j]  # ascending: dead_idx and j both are
            acts = gather_encode(xc, self.W_enc, self.b_enc, pre, idx)
            residual = (x - x_hat).detach()
            e_hat = sparse_decode(acts, idx, self.W_dec, check=False)
            aux, aux_part = batch.share((e_hat - residual).pow(2).sum() / batch.centred_sq(residual))
            aux, aux_part = torch.nan_to_num(aux, nan=0.0), torch.nan_to_num(aux_part, nan=0.0)
            loss = loss + cfg.aux_coef * aux_part
        multi = zero
        if cfg.multi_topk:
            self.extra_k += cfg.multi_topk * cfg.k
            with torch.no_grad():
                idx = pre.topk(cfg.multi_topk * cfg.k, dim=-1, sorted=False).indices.sort(dim=-1).values
            acts = gather_encode(xc, self.W_enc, self.b_enc, pre, idx)
            x_multi = sparse_decode(acts, idx, self.W_dec, check=False) + self.b_pre
            multi, multi_part = batch.share((x - x_multi).pow(2).sum() / batch.x_var)
            loss = loss + cfg.multi_topk_coef * multi_part
        return ForwardOutput(x_hat, loss_fvu, aux, multi, loss, top_idx, top_acts)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the gradient component parallel to each (unit-norm) decoder row."""
        if self.W_dec.grad is None:
            return
        dot = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad -= dot * self.W_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def dead_fraction(self) -> float:
        return float((self.since_fired >= self.cfg.dead_tokens).float().mean())

    def latent_acts(self, x: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Activation of each requested latent on each input, [B, len(latents)] (all latents: [B, n_latents]):
        its value when the latent is among that input's k active ones (the ones ``decode`` uses), else 0."""
        enc = self.encode(x)
        if latents is None or len(latents) * enc.top_indices.shape[1] > self.cfg.n_latents:
            dense = enc.top_acts.new_zeros(x.shape[0], self.cfg.n_latents).scatter_(1, enc.top_indices, enc.top_acts)
            return dense if latents is None else dense[:, torch.as_tensor(latents, dtype=torch.long, device=x.device)]
        # few latents: match them against the k active indices instead of materialising [B, n_latents]
        latents = torch.as_tensor(latents, dtype=torch.long, device=x.device)
        hit = enc.top_indices.unsqueeze(-1) == latents  # [B, k, L]
        return (enc.top_acts.unsqueeze(-1) * hit).sum(1)

def l0(top_acts: torch.Tensor) -> float:
    """Mean number of non-zero latents per input."""
    return float((top_acts > 0).sum(-1).float().mean())


def latent_density(top_indices: torch.Tensor, top_acts: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Fraction of inputs on which each latent is active."""
    counts = torch.zeros(n_latents)
    counts.index_add_(0, top_indices[top_acts > 0].flatten(), torch.ones(int((top_acts > 0).sum())))
    return counts / top_acts.shape[0]


def auxk_default(d_in: int) -> int:
    return max(1, d_in // 2)


def lr_default(n_latents: int) -> float:
    """Gao et al.'s scaling for the learning rate: 2e-4 / sqrt(n_latents / 2**14)."""
    return 2e-4 / math.sqrt(n_latents / 2 ** 14)
