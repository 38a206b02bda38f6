"""TopK SAE: golden tests for FVU, TopK encoding, decoding, the decoder-gradient projection, the geometric median
and AuxK, plus training, checkpoints and bad input."""

import math

import pytest
import torch

from superalign.errors import SuperalignError
from superalign.interp.sae import SAEConfig, TopKSAE, fvu, geometric_median, l0, latent_density, lr_default
from superalign.interp.train_sae import SAETrainConfig, evaluate_sae, train_sae


def test_fvu_by_hand():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean [2, 1]; total variance 1+1+1+1 = 4
    x_hat = torch.tensor([[1.0, 1.0], [2.0, 2.0]])  # squared errors 0+1+1+0 = 2
    assert fvu(x, x_hat).item() == pytest.approx(0.5)
    assert fvu(x, x).item() == 0.0
    assert fvu(x, x.mean(0, keepdim=True).expand_as(x)).item() == pytest.approx(1.0)


def test_topk_encode_decode_by_hand():
    sae = TopKSAE(SAEConfig(d_in=2, n_latents=3, k=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        sae.b_pre.copy_(torch.tensor([1.0, 1.0]))
    x = torch.tensor([[3.0, 2.0]])  # x − b_pre = [2, 1]; pre = relu([2, 1, −2]) = [2, 1, 0]
    enc = sae.encode(x)
    assert enc.pre_acts.tolist() == [[2.0, 1.0, 0.0]]
    assert enc.top_indices.tolist() == [[0]] and enc.top_acts.tolist() == [[2.0]]
    assert sae.decode(enc.top_acts, enc.top_indices).tolist() == [[3.0, 1.0]]  # 2·[1,0] + [1,1]
    out = sae(x, track_dead=False)
    assert out.x_hat.tolist() == [[3.0, 1.0]]
    enc2 = sae.encode(x, k=2)
    assert sorted(enc2.top_indices.tolist()[0]) == [0, 1]
    assert l0(enc.top_acts) == 1.0


def test_tied_init_and_unit_norm_decoder():
    sae = TopKSAE(SAEConfig(d_in=8, n_latents=16, k=2))
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(16))
    assert torch.equal(sae.W_enc, sae.W_dec)


def test_parallel_gradient_is_projected_out():
    sae = TopKSAE(SAEConfig(d_in=2, n_latents=1, k=1))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0]]))
    sae.W_dec.grad = torch.tensor([[3.0, 4.0]])
    sae.remove_parallel_grad()
    assert sae.W_dec.grad.tolist() == [[0.0, 4.0]]  # the component along the row [1, 0] is gone
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[3.0, 4.0]]))
    sae.normalize_decoder()
    assert sae.W_dec.tolist()[0] == pytest.approx([0.6, 0.8])


def test_geometric_median_by_hand():
    # three collinear points: the geometric median is the middle one (the mean would be pulled by the outlier)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [100.0, 0.0]])
    assert geometric_median(x).tolist() == pytest.approx([1.0, 0.0], abs=1e-3)
    # a square's corners: the centre
    sq = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    assert geometric_median(sq).tolist() == pytest.approx([1.0, 1.0], abs=1e-4)


def test_auxk_uses_only_dead_latents_by_hand():
    cfg = SAEConfig(d_in=2, n_latents=3, k=1, aux_k=1, aux_coef=1 / 32, dead_tokens=1)
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
        sae.since_fired.copy_(torch.tensor([0, 5, 0]))  # latent 1 is dead, latent 2 alive
    sae.train()
    x = torch.tensor([[2.0, 1.0], [4.0, 3.0]])  # pre = [[2,1,1],[4,3,3]]; top-1 = latent 0
    out = sae(x, track_dead=False)
    # x̂ = [[2,0],[4,0]]; residual e = [[0,1],[0,3]]; the dead latent 1 reconstructs ê = [[0,1],[0,3]] exactly
    assert out.x_hat.tolist() == [[2.0, 0.0], [4.0, 0.0]]
    assert out.aux_loss.item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        sae.W_enc[1] = torch.tensor([0.0, 0.5])  # now ê = [[0, .5·1·1], [0, .5·3]] → error [[0,.5],[0,1.5]]
    out = sae(x, track_dead=False)
    # Σ‖ê − e‖² = .25 + 2.25 = 2.5; Σ‖e − mean(e)‖² = 1 + 1 = 2 → 1.25
    assert out.aux_loss.item() == pytest.approx(1.25)
    assert out.loss.item() == pytest.approx(out.fvu.item() + 1.25 / 32)


def test_dead_tracking():
    sae = TopKSAE(SAEConfig(d_in=4, n_latents=8, k=1, dead_tokens=3))
    sae.train()
    x = torch.randn(2, 4)
    sae(x)
    sae(x)
    assert (sae.since_fired == 0).sum() >= 1 and sae.since_fired.max() == 4
    assert 0 < sae.dead_fraction() < 1


def test_latent_density_by_hand():
    idx = torch.tensor([[0, 1], [0, 2]])
    acts = torch.tensor([[1.0, 0.5], [2.0, 0.0]])  # latent 2 listed but not active
    assert latent_density(idx, acts, 4).tolist() == [1.0, 0.5, 0.0, 0.0]


def test_lr_scaling():
    assert lr_default(2 ** 14) == pytest.approx(2e-4)
    assert lr_default(2 ** 16) == pytest.approx(1e-4)


def test_training_reduces_fvu_and_round_trips(tmp_path):
    torch.manual_seed(0)
    # activations with sparse structure: 4 of 64 directions active per vector, plus noise
    dirs = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    codes = torch.zeros(4000, 64)
    idx = torch.randint(0, 64, (4000, 4))
    codes.scatter_(1, idx, torch.rand(4000, 4) * 3)
    acts = codes @ dirs + 0.05 * torch.randn(4000, 16) + 2.0
    sae = TopKSAE(SAEConfig(d_in=16, n_latents=128, k=4, dead_tokens=2000), seed=0)
    fit = train_sae(sae, acts[:3500], SAETrainConfig(batch_size=256, epochs=8, lr=3e-3), progress=False)
    ev = evaluate_sae(sae, acts[3500:])
    assert fit.fvu[-1] < 0.5 * fit.fvu[0] and ev["fvu"] < 0.3 and ev["l0"] <= 4
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)
    sae.save(tmp_path / "sae")
    back = TopKSAE.load(tmp_path / "sae", expect_d_in=16)
    assert torch.allclose(back(acts[:10], track_dead=False).x_hat, sae(acts[:10], track_dead=False).x_hat)
    with pytest.raises(SuperalignError, match="expects inputs of width 16"):
        TopKSAE.load(tmp_path / "sae", expect_d_in=384)
    with pytest.raises(SuperalignError, match="not an SAE checkpoint"):
        TopKSAE.load(tmp_path)


def test_bad_input():
    sae = TopKSAE(SAEConfig(d_in=4, n_latents=8, k=2))
    with pytest.raises(SuperalignError, match="width 3"):
        train_sae(sae, torch.randn(10, 3), SAETrainConfig(), progress=False)
    with pytest.raises(SuperalignError, match="non-empty"):
        train_sae(sae, torch.zeros(0, 4), SAETrainConfig(), progress=False)
    with pytest.raises(SuperalignError, match="NaN"):
        train_sae(sae, torch.full((4, 4), math.nan), SAETrainConfig(), progress=False)
    with pytest.raises(SuperalignError, match="k must be"):
        SAEConfig(d_in=4, n_latents=8, k=9)
