"""ReLU + L1 sparse autoencoder: the classic baseline (Bricken et al. 2023, "Towards Monosemanticity", with the
decoder-norm-weighted penalty of Anthropic's April 2024 "Circuits Updates").

    z  = ReLU(W_enc (x − b_pre) + b_enc)                 every latent may fire; sparsity comes from the penalty
    x̂  = W_dec z + b_pre
    loss = FVU(x, x̂) + l1_coef · mean_batch Σ_j z_j · ‖W_dec,j‖ / l1_scale
    l1_scale = √(d_in · mean ‖x − x̄‖²)                  fixed once, from a sample of the training inputs

Choices, and why:
- the reconstruction term is the same FVU as :class:`~superalign.interp.sae.TopKSAE` (``sae.fvu``), so the two
  architectures' numbers are directly comparable;
- the L1 term weights each latent by its decoder row's norm and leaves the rows unconstrained (the April 2024
  update), instead of the 2023 recipe's unit-norm rows + plain L1: with the norm inside the penalty the loss is
  invariant to rescaling a latent (z_j → c·z_j, W_dec,j → W_dec,j / c), so the optimiser cannot shrink the penalty
  by growing the decoder, and no projection/renormalisation step is needed (``remove_parallel_grad`` and
  ``normalize_decoder`` are no-ops, so the TopK training loop runs unchanged);
- ``l1_scale`` (a buffer, 1 until ``init_b_pre`` sets it, so by hand the formula is the plain one) is measured
  once on the same sample that initialises b_pre. FVU does not change when the activations are scaled by c, but the
  raw L1 term scales by c; dividing by a fixed data scale makes the loss scale-free, so one ``l1_coef`` means the
  same sparsity pressure on every model and hook point. The √d_in puts ``l1_coef`` on the scale of Anthropic's λ:
  they normalise the data to E‖x‖² = d_in and minimise mean ‖x − x̂‖² + λ Σ_j z_j ‖W_dec,j‖; dividing that by
  d_in gives mean‖x − x̂‖² / mean‖x‖² + λ · L1 / √(d_in · mean‖x‖²), which is our loss with ‖x‖ measured from the
  mean instead of from 0 (FVU's denominator is centred), so their λ ≈ 5 is a sensible starting point for ``l1_coef``;
- initialisation as in the April 2024 update: decoder rows random directions of norm 0.1, W_enc = W_decᵀ, b_enc = 0.

For a dense code "the active latents" are all latents: ``encode`` lists every latent (``top_indices`` is
0..n_latents−1 for each input, ``top_acts`` = z), and L0 / density count the entries that are really > 0, exactly
as they do for TopK. Use :meth:`ReLUSAE.latent_acts` for per-input activations of chosen latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SuperalignError
from ..validate import check_nonnegative, help_field
from .sae_base import (
    EncoderOutput,
    ForwardOutput,
    GlobalBatch,
    SparseAutoencoder,
    geometric_median,
    random_rows,
    register_architecture,
)


@dataclass
class ReLUSAEConfig:
    """Architecture and loss of a ReLU + L1 sparse autoencoder."""

    d_in: int = help_field(384, "input width (the hook point's hidden size)")
    n_latents: int = help_field(4096, "number of latents (dictionary size)")
    l1_coef: float = help_field(5.0, "weight of the decoder-norm-weighted L1 penalty relative to FVU (higher: sparser, "
                                     "worse reconstruction)")
    dead_tokens: int = help_field(10_000_000, "a latent that has not fired for this many inputs counts as dead "
                                              "(reported only: ReLU SAEs have no AuxK)")

    def __post_init__(self):
        if self.d_in < 1 or self.n_latents < 1:
            raise SuperalignError("d_in and n_latents must be ≥ 1", "fix the SAE config")
        if not self.l1_coef >= 0:  # also rejects NaN
            raise SuperalignError(f"l1_coef must be ≥ 0, got {self.l1_coef}", "pass e.g. --l1-coef 5")
        check_nonnegative("l1_coef", self.l1_coef, example=5.0)  # and finite
        if self.dead_tokens < 1:
            raise SuperalignError("dead_tokens must be ≥ 1", "pass e.g. --dead-tokens 20000")


@register_architecture
class ReLUSAE(SparseAutoencoder):
    architecture = "relu"
    """written to cfg.json so that :func:`~superalign.interp.sae.load_sae` rebuilds the right class"""
    config_class = ReLUSAEConfig

    def __init__(self, cfg: ReLUSAEConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        w_dec = random_rows(cfg.n_latents, cfg.d_in, seed, norm=0.1)
        self.W_dec = torch.nn.Parameter(w_dec)                 # [n_latents, d_in], rows free to change norm
        self.W_enc = torch.nn.Parameter(w_dec.clone())         # tied initialisation (used as W_enc = this ᵀ)
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_pre = torch.nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("l1_scale", torch.ones(()))
        self.register_buffer("since_fired", torch.zeros(cfg.n_latents, dtype=torch.long))

    @torch.no_grad()
    def init_b_pre(self, sample: torch.Tensor) -> None:
        """b_pre at the geometric median of ``sample``; l1_scale = √(d_in · mean ‖x − x̄‖²) over it."""
        sample = sample.float()
        self.b_pre.copy_(geometric_median(sample))
        var = (sample - sample.mean(0)).pow(2).sum(1).mean()
        self.l1_scale.fill_(float((self.cfg.d_in * var).sqrt().clamp(min=1e-12)))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu((x - self.b_pre) @ self.W_enc.T + self.b_enc)

    def encode(self, x: torch.Tensor, k: int | None = None) -> EncoderOutput:
        """Every latent is listed (``k`` is ignored: the code is dense); inactive ones have activation 0."""
        z = self.pre_acts(x)
        idx = torch.arange(self.cfg.n_latents, device=x.device).expand(x.shape[0], -1)  # a view: no memory
        return EncoderOutput(z, idx, z)

    def decode(self, acts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x̂ = Σ_j a_j · W_dec[i_j] + b_pre for any listing (scattered into a dense code, then one matmul)."""
        z = acts.new_zeros(acts.shape[0], self.cfg.n_latents).scatter_add_(1, indices, acts)
        return z @ self.W_dec + self.b_pre

    def l1_penalty(self, z: torch.Tensor) -> torch.Tensor:
        """mean over the batch of Σ_j z_j · ‖W_dec,j‖, divided by l1_scale."""
        return (z @ self.W_dec.norm(dim=1)).mean() / self.l1_scale

    def forward(self, x: torch.Tensor, track_dead: bool = True, batch: GlobalBatch | None = None) -> ForwardOutput:
        """As :meth:`superalign.interp.sae.TopKSAE.forward` (``batch``: this process's share of a data-parallel
        global batch; the L1 term's batch mean is then over the global batch)."""
        batch = batch if batch is not None else GlobalBatch.local(x)
        z = self.pre_acts(x)
        x_hat = z @ self.W_dec + self.b_pre
        loss_fvu, fvu_part = batch.share((x - x_hat).pow(2).sum() / batch.x_var)
        l1, l1_part = batch.share((z @ self.W_dec.norm(dim=1).to(z.dtype)).sum() / (batch.rows * self.l1_scale))
        self.extra_k = 0
        if track_dead and self.training:
            with torch.no_grad():
                fired = batch.sum((z > 0).sum(0)) > 0
                self.since_fired.copy_(torch.where(fired, 0, self.since_fired + batch.rows))
        idx = torch.arange(self.cfg.n_latents, device=x.device).expand(x.shape[0], -1)
        # aux_loss carries the L1 term (detached: it is for logging; ``loss`` holds the differentiable one)
        return ForwardOutput(x_hat, loss_fvu, l1.detach(), x.new_zeros(()), fvu_part + self.cfg.l1_coef * l1_part,
                             idx, z)

    def latent_acts(self, x: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Activation of each requested latent on each input, [B, len(latents)] (all latents: [B, n_latents]).

        Only the requested encoder rows are computed, so asking for a few latents of a wide SAE is cheap."""
        if latents is None:
            return self.pre_acts(x)
        latents = torch.as_tensor(latents, dtype=torch.long, device=x.device)
        return F.relu((x - self.b_pre) @ self.W_enc[latents].T + self.b_enc[latents])

    # no decoder constraint: the norm is inside the penalty (see the module docstring)
    def remove_parallel_grad(self) -> None:
        pass

    def normalize_decoder(self) -> None:
        pass

    def dead_fraction(self) -> float:
        return float((self.since_fired >= self.cfg.dead_tokens).float().mean())

    # checkpoints: save/load inherited from SparseAutoencoder (the TopK format, architecture "relu")
