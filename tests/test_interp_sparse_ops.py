"""Sparse SAE kernels: values and gradients equal the dense reference formulas (gradcheck in float64, and
comparison with autograd on the dense graph), the TopK SAE's forward/backward equals its dense definition, and the
fallbacks (other dtypes, repeated indices, unsorted indices)."""

import torch
import torch.nn.functional as F

from superalign.interp.sae import SAEConfig, TopKSAE, fvu
from superalign.interp.sparse_ops import gather_encode, sparse_decode, strictly_increasing, topk_encode


def _sorted_topk(pre, k):
    return pre.topk(k, dim=-1).indices.sort(dim=-1).values


def test_gather_encode_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    xc = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    with torch.no_grad():
        pre = xc @ W.T + b
    idx = _sorted_topk(pre, 3)
    # keep the sampled entries away from the ReLU kink so that finite differences are well defined
    assert (pre.gather(1, idx).abs() > 1e-3).all()

    def f(xc, W, b):  # pre recomputed from the perturbed inputs, indices fixed: the function gather_encode defines
        with torch.no_grad():
            p = xc @ W.T + b
        return gather_encode(xc, W, b, p, idx)

    assert torch.autograd.gradcheck(f, (xc, W, b))


def test_sparse_decode_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    idx = torch.stack([torch.randperm(9, generator=g)[:3] for _ in range(5)]).sort(dim=-1).values
    assert torch.autograd.gradcheck(lambda a, w: sparse_decode(a, idx, w, check=False), (acts, W))


def test_gather_encode_and_decode_match_dense_autograd_float32():
    g = torch.Generator().manual_seed(2)
    B, n, d, k = 64, 96, 12, 5
    x = torch.randn(B, d, generator=g)
    params = [torch.randn(n, d, generator=g), torch.randn(n, generator=g) * 0.1, torch.randn(d, generator=g),
              torch.randn(n, d, generator=g)]
    outs = []
    for sparse in (True, False):
        W_enc, b_enc, b_pre, W_dec = (p.clone().requires_grad_() for p in params)
        xc = x - b_pre
        if sparse:
            acts, idx, _ = topk_encode(xc, W_enc, b_enc, k)
            x_hat = sparse_decode(acts, idx, W_dec) + b_pre
        else:
            pre = F.relu(xc @ W_enc.T + b_enc)
            acts, idx = pre.topk(k, dim=-1)
            x_hat = torch.einsum("bk,bkd->bd", acts, W_dec[idx]) + b_pre
        loss = fvu(x, x_hat)
        loss.backward()
        outs.append((loss.detach(), x_hat.detach(), [p.grad for p in (W_enc, b_enc, b_pre, W_dec)]))
    (l_s, xh_s, g_s), (l_d, xh_d, g_d) = outs
    assert torch.allclose(l_s, l_d, atol=1e-6) and torch.allclose(xh_s, xh_d, atol=1e-5)
    for a, b in zip(g_s, g_d):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_topk_encode_without_dense_relu_gives_the_same_values():
    g = torch.Generator().manual_seed(3)
    xc, W, b = torch.randn(32, 8, generator=g), torch.randn(40, 8, generator=g), torch.randn(40, generator=g) - 4
    a1, i1, p1 = topk_encode(xc, W, b, 6)
    a2, i2, p2 = topk_encode(xc, W, b, 6, dense_relu=False)
    assert (p1 >= 0).all() and (p2 < 0).any()  # strongly negative bias: many rows have < 6 positive entries
    assert torch.equal(p1, p2.clamp(min=0))
    # same multiset of values per row; indices agree wherever the value is positive
    assert torch.equal(a1.sort(-1).values, a2.sort(-1).values)
    assert torch.equal(torch.where(a1 > 0, i1, -1).sort(-1).values, torch.where(a2 > 0, i2, -1).sort(-1).values)
    assert strictly_increasing(i1) and strictly_increasing(i2)


def test_sparse_decode_fallbacks():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(10, 3, generator=g)
    acts = torch.randn(4, 3, generator=g)
    idx = torch.tensor([[7, 2, 5], [0, 1, 9], [3, 3, 4], [9, 8, 7]])  # unsorted rows and a repeated index
    ref = torch.einsum("bk,bkd->bd", acts, W[idx])
    assert torch.allclose(sparse_decode(acts, idx, W), ref, atol=1e-6)
    # float16 (no sparse kernels): dense reference
    assert torch.allclose(sparse_decode(acts.half(), idx, W.half()).float(), ref, atol=1e-2)
    assert not strictly_increasing(idx) and strictly_increasing(idx[1:2])


def test_topk_sae_forward_backward_equals_dense_definition_with_auxk_and_multi_topk():
    """The whole TopKSAE loss (FVU + AuxK on dead latents + Multi-TopK) and every parameter gradient, against the
    dense formulas written out with plain autograd."""
    torch.manual_seed(5)
    cfg = SAEConfig(d_in=12, n_latents=64, k=4, aux_k=6, aux_coef=1 / 32, dead_tokens=1, multi_topk=2)
    sae = TopKSAE(cfg, seed=5)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_pre.normal_()
        sae.W_enc.add_(0.1 * torch.randn_like(sae.W_enc))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64)[:20]] = True
    sae.since_fired.copy_(dead.long() * 5)
    sae.train()
    x = torch.randn(50, 12)
    out = sae(x, track_dead=False)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}

    ps = {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}
    pre = F.relu((x - ps["b_pre"]) @ ps["W_enc"].T + ps["b_enc"])
    a, i = pre.topk(4, dim=-1)
    x_hat = torch.einsum("bk,bkd->bd", a, ps["W_dec"][i]) + ps["b_pre"]
    l_fvu = fvu(x, x_hat)
    aa, ai = pre.masked_fill(~dead, 0.0).topk(6, dim=-1)
    e = (x - x_hat).detach()
    e_hat = torch.einsum("bk,bkd->bd", aa, ps["W_dec"][ai])
    aux = (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    ma, mi = pre.topk(8, dim=-1)
    multi = fvu(x, torch.einsum("bk,bkd->bd", ma, ps["W_dec"][mi]) + ps["b_pre"])
    loss = l_fvu + aux / 32 + multi / 8
    loss.backward()
    assert out.aux_loss.item() > 0 and out.multi_topk_fvu.item() > 0
    assert torch.allclose(out.fvu, l_fvu, atol=1e-6) and torch.allclose(out.aux_loss, aux, atol=1e-5)
    assert torch.allclose(out.multi_topk_fvu, multi, atol=1e-6) and torch.allclose(out.loss, loss, atol=1e-6)
    assert torch.allclose(out.x_hat, x_hat, atol=1e-5)
    for n, p in ps.items():
        assert torch.allclose(grads[n], p.grad, atol=1e-6, rtol=1e-4), n


def test_encode_and_decode_match_dense_formulas():
    torch.manual_seed(6)
    sae = TopKSAE(SAEConfig(d_in=8, n_latents=48, k=5), seed=6)
    x = torch.randn(20, 8)
    enc = sae.encode(x)
    pre = F.relu((x - sae.b_pre) @ sae.W_enc.T + sae.b_enc)
    assert torch.allclose(enc.pre_acts, pre.detach(), atol=1e-6) and torch.allclose(sae.pre_acts(x), pre)
    ref_a, ref_i = pre.topk(5, dim=-1)
    assert torch.equal(enc.top_indices, ref_i.sort(-1).values)
    assert torch.allclose(enc.top_acts, ref_a.gather(1, ref_i.sort(-1).indices), atol=1e-6)
    ref_xh = torch.einsum("bk,bkd->bd", enc.top_acts, sae.W_dec[enc.top_indices]) + sae.b_pre
    assert torch.allclose(sae.decode(enc.top_acts, enc.top_indices), ref_xh, atol=1e-5)
    # k override and leading batch dimensions
    assert sae.encode(x, k=7).top_indices.shape == (20, 7)
    assert sae.encode(x.view(4, 5, 8)).top_acts.shape == (4, 5, 5)


def test_csr_matrices_by_hand():
    from superalign.interp.sparse_ops import _csr, _csr_t

    idx = torch.tensor([[0, 2], [1, 2], [0, 3]])
    vals = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    dense = torch.tensor([[1.0, 0, 2, 0], [0, 3, 4, 0], [5, 0, 0, 6]])
    assert torch.equal(_csr(idx, vals, 4).to_dense(), dense)
    t = _csr_t(idx, vals, 4)
    assert torch.equal(t.to_dense(), dense.T)
    assert t.crow_indices().tolist() == [0, 2, 3, 5, 6] and t.col_indices().tolist() == [0, 2, 1, 0, 1, 2]
    x = torch.randn(3, 5)
    assert torch.allclose(t @ x, dense.T @ x)
