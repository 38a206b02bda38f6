"""Sparse encoder/decoder kernels for TopK SAEs: the same maths as the dense formulas, with sparse backward passes.

A TopK SAE touches only k of its n latents per input, but the textbook autograd graph is dense: the backward of
``relu(xc @ W_encᵀ + b_enc)`` is two more [B, n] × [n, d] matmuls (for W_enc and for the input), and the gather
decoder ``einsum("bk,bkd->bd", a, W_dec[idx])`` materialises a [B, k, d] copy of decoder rows and scatters a second
one back. Here a k-sparse code is Z [B, n] (row b holds the k active latents of input b), and

- encoder, forward: the dense pre-activations once, without a graph (``topk_encode``); the k values per input are
  gathered from them by ``_GatherEncode``, whose backward with G = the k-sparse gradient (masked by ReLU') is
      ∂W_enc = Gᵀ @ xc,   ∂b_enc = Σ_b G,   ∂xc = G @ W_enc           (sparse × dense: O(B·k·d), not O(B·n·d));
- decoder (``_SparseDecode``): x̂ = Z @ W_dec, and backward
      ∂W_dec = Zᵀ @ ∂x̂,   ∂a_bj = ⟨∂x̂_b, W_dec[idx_bj]⟩ = sampled_addmm(pattern of Z, ∂x̂, W_decᵀ).

Kernels: Z @ W and G @ W are ``F.embedding_bag`` with per-sample weights; Gᵀ @ xc and Zᵀ @ ∂x̂ multiply a CSR
matrix of the transpose [n, B] (built with one stable argsort of the indices) with a dense one; the decoder's
∂a is torch's sampled dense-dense matmul on the CSR pattern of Z (columns strictly increasing per row, which is
why ``topk_encode`` returns indices in ascending order).

EleutherAI's sparsify computes ∂W_enc with ``index_add_`` over a materialised [B, k, d] tensor of outer products
and ∂a / ∂W_dec with embedding_bag's autograd; on CPU the CSR kernels are several times faster (see
benchmarks/sae_vs_sparsify.py). Unlike sparsify's fused encoder (whose backward drops the gradient of the dense
pre-activations), gradients of every gathered subset reach the encoder: AuxK and Multi-TopK gather their own
latents through ``gather_encode`` and train the encoder exactly as the dense graph would.

Only float32/float64 weights take the sparse path; other dtypes (and decoder calls whose indices repeat within a
row) use the dense reference, which gives the same values. Under autocast (bf16/fp16 training with fp32 master
weights) only the dense pre-activation matmul — the one O(B·n·d) product — runs in the low precision; the k gathered
values are cast back to the weights' dtype and every sparse kernel (forward and backward) runs in fp32 with autocast
off, so CSR products never see a dtype cuSPARSE lacks. Every kernel here runs on CUDA as on the CPU: indices are
int64 throughout (topk's own dtype, and what torch's CSR tensors, ``embedding_bag`` and ``index_add_`` take).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_SPARSE_DTYPES = (torch.float32, torch.float64)


def _csr(idx: torch.Tensor, vals: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] CSR matrix with vals[b, j] at column idx[b, j] (idx strictly increasing along each row)."""
    b, k = idx.shape
    crow = torch.arange(0, b * k + 1, k, device=idx.device, dtype=torch.long)
    with warnings.catch_warnings():  # "CSR support is in beta" (once per process); invariants hold by construction
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, idx.reshape(-1), vals.reshape(-1), (b, n), check_invariants=False)


def _csr_t(idx: torch.Tensor, vals: torch.Tensor, n: int) -> torch.Tensor:
    """[n, B] CSR matrix of the transpose of ``_csr(idx, vals, n)``, built directly: a stable sort of the flat
    indices groups the entries by latent with batch rows ascending (cheaper than converting ``_csr(...).t()``)."""
    b, k = idx.shape
    flat = idx.reshape(-1)
    # sorted as one row of a 2-D tensor: torch sorts a long 1-D integer tensor with a parallel radix sort whose
    # barriers stall for whole scheduler slices when another process holds a core (0.5 ms → up to 0.5 s here)
    order = flat.view(1, -1).argsort(dim=-1, stable=True).view(-1)
    crow = torch.zeros(n + 1, dtype=torch.long, device=idx.device)
    torch.cumsum(torch.bincount(flat, minlength=n), 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, order // k, vals.reshape(-1)[order], (n, b), check_invariants=False)


def _sparse_ok(*ts: torch.Tensor) -> bool:
    return all(t.dtype in _SPARSE_DTYPES and t.device.type in ("cpu", "cuda") for t in ts)


def _no_autocast(t: torch.Tensor):
    """Autocast off for the sparse kernels (they run in the weights' fp32; see the module docstring)."""
    return torch.autocast(t.device.type, enabled=False)


def strictly_increasing(idx: torch.Tensor) -> bool:
    """True when each row's indices are sorted and distinct (what a CSR row needs)."""
    return idx.shape[-1] < 2 or bool((idx[..., 1:] > idx[..., :-1]).all())


class _GatherEncode(torch.autograd.Function):
    """relu(pre)[b, idx[b, j]] where pre = xc @ Wᵀ + b was computed without a graph; sparse backward."""

    @staticmethod
    def forward(ctx, xc, W, b, pre, idx):
        # pre may be bf16/fp16 (the autocast matmul): the gathered values continue in the weights' dtype
        vals = pre.gather(1, idx).to(W.dtype).clamp_(min=0)
        ctx.save_for_backward(xc, W, idx, vals)
        return vals

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        xc, W, idx, vals = ctx.saved_tensors
        g = g.to(W.dtype).masked_fill(vals <= 0, 0.0)  # ReLU'(0) = 0, as torch's relu
        gx = gW = gb = None
        with _no_autocast(W):
            if ctx.needs_input_grad[0]:
                gx = F.embedding_bag(idx, W, per_sample_weights=g, mode="sum")  # G @ W
            if ctx.needs_input_grad[1]:
                gW = _csr_t(idx, g, W.shape[0]) @ xc
            if ctx.needs_input_grad[2]:
                gb = torch.zeros(W.shape[0], dtype=g.dtype, device=g.device).index_add_(0, idx.reshape(-1),
                                                                                       g.reshape(-1))
        return gx, gW, gb, None, None


class _SparseDecode(torch.autograd.Function):
    """Σ_j acts[b, j] · W[idx[b, j]] (idx strictly increasing along each row); sparse backward."""

    @staticmethod
    def forward(ctx, acts, idx, W):
        acts = acts.to(W.dtype)
        ctx.save_for_backward(acts, idx, W)
        with _no_autocast(W):
            return F.embedding_bag(idx, W, per_sample_weights=acts, mode="sum")  # Z @ W

    @staticmethod
    @once_differentiable
    def backward(ctx, go):
        acts, idx, W = ctx.saved_tensors
        go = go.to(W.dtype).contiguous()
        ga = gW = None
        with _no_autocast(W):
            if ctx.needs_input_grad[0]:
                pattern = _csr(idx, torch.zeros_like(acts), W.shape[0])
                ga = torch.sparse.sampled_addmm(pattern, go, W.T, beta=0.0).values().view_as(acts)
            if ctx.needs_input_grad[2]:
                gW = _csr_t(idx, acts, W.shape[0]) @ go
        return ga, None, gW


def gather_encode(xc: torch.Tensor, W: torch.Tensor, b: torch.Tensor, pre: torch.Tensor,
                  idx: torch.Tensor) -> torch.Tensor:
    """relu(xc @ Wᵀ + b) at columns idx [B, m] (strictly increasing per row), differentiable in xc, W and b.

    ``pre`` holds xc @ Wᵀ + b (with or without the ReLU) computed without a graph, in any float dtype (bf16 under
    autocast); only the gathered entries are differentiated, with a sparse backward."""
    if not (_sparse_ok(xc, W, b) and pre.is_floating_point()):
        return F.relu(xc @ W.T + b).gather(1, idx)
    return _GatherEncode.apply(xc, W, b, pre, idx)


def topk_encode(xc: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int,
                dense_relu: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TopK(ReLU(xc @ Wᵀ + b)) for xc [B, d]: (values [B, k], indices [B, k] ascending, pre-activations [B, n]).

    The dense pre-activations are computed once, without a graph; ``values`` carry the gradient (sparse backward).
    ``dense_relu=False`` skips the ReLU of the [B, n] matrix (``pre`` is then returned before the ReLU): the top-k
    of ``pre`` and of ``relu(pre)`` differ only among entries ≤ 0, whose values (0) and gradients (0) are the same."""
    with torch.no_grad():
        pre = torch.addmm(b, xc, W.T)
        if dense_relu:
            pre.clamp_(min=0)
        idx = pre.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
    return gather_encode(xc, W, b, pre, idx), idx, pre


def sparse_decode(acts: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Σ_j acts[b, j] · W[idx[b, j]] for acts, idx [B, k] and W [n, d], differentiable in acts and W.

    With ``check`` (the default) indices in any order are accepted and rows with repeated indices fall back to the
    dense reference; ``check=False`` trusts that each row is strictly increasing (as ``topk_encode`` returns)."""
    if not (_sparse_ok(W) and acts.is_floating_point()):
        return torch.einsum("bk,bkd->bd", acts, W[idx])
    if check and not strictly_increasing(idx):
        idx, order = idx.sort(dim=-1)
        acts = acts.gather(-1, order)
        if not strictly_increasing(idx):
            return F.embedding_bag(idx, W, per_sample_weights=acts, mode="sum")
    return _SparseDecode.apply(acts, idx, W)
