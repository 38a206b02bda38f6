"""ReLU + L1 SAE (golden forward/loss, training), latent_acts of both architectures, load_sae dispatch, and CE/KL
loss recovered with the reconstruction spliced into a tiny GPT-2 (identity / zero-ablation / hand-run blocks)."""

import json

import pytest
import torch

from superalign.errors import SuperalignError
from superalign.interp.loss_recovered import find_blocks, loss_recovered, spliced_logits
from superalign.interp.relu_sae import ReLUSAE, ReLUSAEConfig
from superalign.interp.sae import SAEConfig, TopKSAE, l0, load_sae
from superalign.interp.train_sae import SAETrainConfig, evaluate_sae, train_sae

TEXTS = ["the food was good and the staff were kind", "a much longer sentence about the hotel and its staff",
         "ok", "the room was clean", "we will come back to this hotel", "bad food, slow service"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These matrices are tiny: extra intra-op threads only add synchronisation (10× slower on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _hand_relu(l1_coef=0.1) -> ReLUSAE:
    sae = ReLUSAE(ReLUSAEConfig(d_in=2, n_latents=3, l1_coef=l1_coef))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.0]))
        sae.W_dec.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))  # row norms 2, 1, 1
        sae.b_pre.copy_(torch.tensor([1.0, 1.0]))
    return sae


def test_relu_forward_and_loss_by_hand():
    sae = _hand_relu()
    x = torch.tensor([[3.0, 2.0], [1.0, 1.0]])
    # x − b_pre = [[2, 1], [0, 0]]; W_enc·(x − b_pre) + b_enc = [[2, .5, −2], [0, −.5, 0]] → z = [[2, .5, 0], [0, 0, 0]]
    assert sae.latent_acts(x).tolist() == [[2.0, 0.5, 0.0], [0.0, 0.0, 0.0]]
    out = sae(x, track_dead=False)
    assert out.x_hat.tolist() == [[5.0, 1.5], [1.0, 1.0]]  # 2·[2, 0] + .5·[0, 1] + [1, 1]; b_pre alone
    # FVU: errors [−2, .5] and [0, 0] → 4.25; Σ‖x − mean‖² with mean [2, 1.5] → 1.25 + 1.25 = 2.5
    assert out.fvu.item() == pytest.approx(1.7)
    # L1: input 0: 2·‖[2,0]‖ + .5·‖[0,1]‖ = 4.5; input 1: 0 → batch mean 2.25 (l1_scale = 1 before init_b_pre)
    assert out.aux_loss.item() == pytest.approx(2.25)
    assert out.loss.item() == pytest.approx(1.7 + 0.1 * 2.25)
    enc = sae.encode(x)  # a dense code lists every latent; only real non-zeros count
    assert enc.top_indices.tolist() == [[0, 1, 2], [0, 1, 2]] and l0(enc.top_acts) == 1.0
    assert sae.decode(enc.top_acts, enc.top_indices).tolist() == out.x_hat.tolist()
    assert sae.decode(torch.tensor([[0.5]]), torch.tensor([[1]])).tolist() == [[1.0, 1.5]]  # any listing


def test_relu_l1_scale_and_rescaling_invariance():
    sae = _hand_relu()
    sq = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    sae.init_b_pre(sq)  # geometric median [1, 1]; ‖x − x̄‖² = 2 for each → l1_scale = √(d_in · 2) = 2
    assert sae.b_pre.tolist() == pytest.approx([1.0, 1.0], abs=1e-4) and sae.l1_scale.item() == pytest.approx(2.0)
    x = torch.tensor([[3.0, 2.0], [1.0, 1.0]])
    assert sae(x, track_dead=False).aux_loss.item() == pytest.approx(2.25 / 2, rel=1e-4)
    # the decoder-norm-weighted L1 is invariant to z_j → c·z_j, W_dec,j → W_dec,j / c: the loss does not change
    before = sae(x, track_dead=False).loss.item()
    with torch.no_grad():
        sae.W_enc[0] *= 4
        sae.b_enc[0] *= 4
        sae.W_dec[0] /= 4
    assert sae(x, track_dead=False).loss.item() == pytest.approx(before, rel=1e-5)
    w = sae.W_dec.detach().clone()
    sae.W_dec.grad = torch.ones_like(w)
    sae.remove_parallel_grad()
    sae.normalize_decoder()  # both no-ops: the rows are unconstrained
    assert torch.equal(sae.W_dec.grad, torch.ones_like(w)) and torch.equal(sae.W_dec, w)


def test_relu_config_validation():
    with pytest.raises(SuperalignError, match="l1_coef must be ≥ 0"):
        ReLUSAEConfig(d_in=4, n_latents=8, l1_coef=-1)
    with pytest.raises(SuperalignError, match="d_in and n_latents"):
        ReLUSAEConfig(d_in=0, n_latents=8)


def test_latent_acts_by_hand_both_architectures():
    topk = TopKSAE(SAEConfig(d_in=2, n_latents=3, k=1))
    with torch.no_grad():
        topk.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        topk.b_pre.copy_(torch.tensor([1.0, 1.0]))
    x = torch.tensor([[3.0, 2.0], [0.0, 3.0]])  # x − b_pre = [[2, 1], [−1, 2]]; pre = [[2, 1, 0], [0, 2, 1]]
    assert topk.latent_acts(x).tolist() == [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]  # only each input's top-1 is non-zero
    assert topk.latent_acts(x, torch.tensor([1, 2])).tolist() == [[0.0, 0.0], [2.0, 0.0]]
    assert topk.latent_acts(x, [0]).tolist() == [[2.0], [0.0]]
    topk.cfg.k = 2  # [[2, 1, 0], [0, 2, 1]] top-2 → both paths (match for 1 latent, dense for 2) agree
    assert topk.latent_acts(x).tolist() == [[2.0, 1.0, 0.0], [0.0, 2.0, 1.0]]
    assert topk.latent_acts(x, [2]).tolist() == [[0.0], [1.0]]
    assert topk.latent_acts(x, [2, 0]).tolist() == [[0.0, 2.0], [1.0, 0.0]]
    relu = _hand_relu()
    x = torch.tensor([[3.0, 2.0], [0.0, 3.0]])  # x − b_pre = [[2, 1], [−1, 2]]; z = [[2, .5, 0], [0, 1.5, 1]]
    assert relu.latent_acts(x).tolist() == [[2.0, 0.5, 0.0], [0.0, 1.5, 1.0]]
    assert relu.latent_acts(x, torch.tensor([2, 0])).tolist() == [[0.0, 2.0], [1.0, 0.0]]


def _sparse_data(n=2000, d=16, n_dirs=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_dirs, d, generator=g), dim=1)
    codes = torch.zeros(n, n_dirs).scatter_(1, torch.randint(0, n_dirs, (n, 4), generator=g),
                                            torch.rand(n, 4, generator=g) * 3)
    return codes @ dirs + 0.05 * torch.randn(n, d, generator=g) + 2.0


def test_relu_sae_trains_and_sparsity_follows_l1():
    acts = _sparse_data()
    evs = []
    for l1 in (0.5, 2.0):
        sae = ReLUSAE(ReLUSAEConfig(d_in=16, n_latents=128, l1_coef=l1, dead_tokens=2000), seed=0)
        fit = train_sae(sae, acts[:1800], SAETrainConfig(batch_size=128, epochs=6, lr=1e-2), progress=False)
        ev = evaluate_sae(sae, acts[1800:])
        real_l0 = float((sae.latent_acts(acts[1800:]) > 0).sum(1).float().mean())
        assert ev["l0"] == pytest.approx(real_l0)  # L0 counts the real non-zeros of the dense code
        assert fit.fvu[-1] < 0.5 * fit.fvu[0] and ev["fvu"] < 0.4
        evs.append(ev)
    assert evs[1]["l0"] < evs[0]["l0"] and evs[1]["fvu"] > evs[0]["fvu"]  # more L1: sparser, worse reconstruction


def test_load_sae_dispatch_old_checkpoints_and_errors(tmp_path):
    relu = ReLUSAE(ReLUSAEConfig(d_in=16, n_latents=32, l1_coef=3.0), seed=1)
    relu.init_b_pre(_sparse_data(200))
    relu.save(tmp_path / "relu", meta={"hook": "layers.3"})
    cfg = json.loads((tmp_path / "relu" / "cfg.json").read_text())
    assert cfg["architecture"] == "relu" and cfg["l1_coef"] == 3.0 and cfg["meta"] == {"hook": "layers.3"}
    back = load_sae(tmp_path / "relu", expect_d_in=16)
    x = _sparse_data(10, seed=2)
    assert isinstance(back, ReLUSAE) and back.l1_scale.item() == relu.l1_scale.item()
    assert torch.equal(back(x, track_dead=False).loss, relu(x, track_dead=False).loss)

    topk = TopKSAE(SAEConfig(d_in=16, n_latents=32, k=4), seed=1)
    topk.save(tmp_path / "topk")
    assert json.loads((tmp_path / "topk" / "cfg.json").read_text())["architecture"] == "topk"
    assert isinstance(load_sae(tmp_path / "topk"), TopKSAE)
    # a checkpoint written before the architecture field existed is a TopK SAE
    cfg = json.loads((tmp_path / "topk" / "cfg.json").read_text())
    del cfg["architecture"]
    (tmp_path / "topk" / "cfg.json").write_text(json.dumps(cfg))
    for old in (load_sae(tmp_path / "topk", expect_d_in=16), TopKSAE.load(tmp_path / "topk")):
        assert isinstance(old, TopKSAE) and torch.equal(old.latent_acts(x), topk.latent_acts(x))

    with pytest.raises(SuperalignError, match="expects inputs of width 16, the activations have 384.*trained on this"):
        load_sae(tmp_path / "relu", expect_d_in=384)
    with pytest.raises(SuperalignError, match="expects inputs of width 16, the activations have 384"):
        load_sae(tmp_path / "topk", expect_d_in=384)
    with pytest.raises(SuperalignError, match="not an SAE checkpoint"):
        load_sae(tmp_path)
    with pytest.raises(SuperalignError, match="is a relu SAE, not topk.*load_sae"):
        TopKSAE.load(tmp_path / "relu")
    cfg["architecture"] = "gated"
    (tmp_path / "topk" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SuperalignError, match="unknown architecture 'gated'"):
        load_sae(tmp_path / "topk")


# ----------------------------------------------------------------------------- loss recovered


class Identity(torch.nn.Module):
    """Test-only stub: a 'reconstruction' equal to the input."""

    def forward(self, x):
        return x


class Zeros(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny GPT-2 from scratch, trained for a few steps so that its predictions beat uniform (and zero-ablation)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from superalign.models.registry import minilm_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        model(**enc, labels=labels).loss.backward()
        opt.step()
    model.eval()
    d = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return model, tok, str(d)


@pytest.mark.parametrize("hook", ["embeddings", "layers.0", "layers.1"])
def test_identity_recovers_everything_and_zeros_nothing(lm, hook):
    model, tok, _ = lm
    ident = loss_recovered(model, tok, Identity(), TEXTS, hook, batch_size=4)
    assert ident.ce_sae == ident.ce_clean and ident.kl_sae == 0.0
    assert ident.ce_loss_recovered == 1.0 and ident.kl_recovered == 1.0
    assert ident.ce_zero > ident.ce_clean + 0.5 and ident.kl_zero > 0.1  # zero-ablation really hurts this model
    zero = loss_recovered(model, tok, Zeros(), TEXTS, hook, batch_size=4)
    assert zero.ce_sae == zero.ce_zero and zero.ce_loss_recovered == 0.0 and zero.kl_recovered == 0.0
    n_pred = sum(len(tok(t)["input_ids"]) - 1 for t in TEXTS)
    assert ident.tokens == n_pred and ident.texts == len(TEXTS)
    # padding changes nothing: one text per batch gives the same numbers as padded batches
    alone = loss_recovered(model, tok, Zeros(), TEXTS, hook, batch_size=1)
    assert alone.ce_zero == pytest.approx(zero.ce_zero, rel=1e-5)
    assert alone.kl_zero == pytest.approx(zero.kl_zero, rel=1e-4)


def _manual_logits(model, ids, hook, fn):
    """Run GPT-2 block by block and apply fn where hook says: the hand reference for the splice."""
    t = model.transformer
    h = t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))[None]
    n = len(t.h)
    if hook == "embeddings":
        h = fn(h)
    for i, block in enumerate(t.h):
        out = block(h)
        h = out[0] if isinstance(out, tuple) else out
        if hook == f"layers.{i}" and i < n - 1:
            h = fn(h)
    h = t.ln_f(h)
    if hook == f"layers.{n - 1}":  # the last hidden state HF reports is after the final norm
        h = fn(h)
    return model.lm_head(h)


@pytest.mark.parametrize("hook", ["embeddings", "layers.0", "layers.1"])
def test_splice_replaces_the_right_layer_by_hand(lm, hook):
    model, tok, _ = lm
    ids = tok(TEXTS[:1], return_tensors="pt")["input_ids"]
    att = torch.ones_like(ids)

    def n_hooks():  # transformers may keep hooks of its own (output recording); ours must all be gone
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    before = n_hooks()

    def fn(h):
        return 2 * h.flip(-1) + 0.3

    with torch.no_grad():
        want = _manual_logits(model, ids, hook, fn)
        clean = _manual_logits(model, ids, hook, lambda h: h)
        assert torch.allclose(spliced_logits(model, ids, att, hook, fn), want, atol=1e-4)
        assert torch.allclose(spliced_logits(model, ids, att, hook, None), clean, atol=1e-4)
        assert not torch.allclose(want, clean, atol=1e-2)
        # replacing only position 3 leaves the earlier positions' predictions alone (causal), changes the later ones
        only3 = torch.zeros_like(ids, dtype=torch.bool)
        only3[:, 3] = True
        part = spliced_logits(model, ids, att, hook, fn, positions=only3)
        assert torch.allclose(part[:, :3], clean[:, :3], atol=1e-5)
        assert not torch.allclose(part[:, 3:], clean[:, 3:], atol=1e-3)
    assert n_hooks() == before


def test_skip_first_keeps_position_zero_clean(lm):
    model, tok, _ = lm
    every = loss_recovered(model, tok, Zeros(), TEXTS, "layers.0")
    keep0 = loss_recovered(model, tok, Zeros(), TEXTS, "layers.0", skip_first=True)
    assert keep0.ce_clean == every.ce_clean and keep0.kl_zero < every.kl_zero and keep0.tokens == every.tokens


def test_loss_recovered_errors(lm, tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    model, tok, _ = lm
    with pytest.raises(SuperalignError, match="unknown hook point 'layers.2'"):
        loss_recovered(model, tok, Identity(), TEXTS, "layers.2")
    with pytest.raises(SuperalignError, match="no texts"):
        loss_recovered(model, tok, Identity(), ["", " "], "layers.0")
    enc = AutoModel.from_pretrained(tiny_bert)
    with pytest.raises(SuperalignError, match="not a causal language model.*FVU"):
        loss_recovered(enc, AutoTokenizer.from_pretrained(tiny_bert), Identity(), TEXTS, "layers.0")
    assert len(find_blocks(model)) == 2


def test_cli_relu_sae_with_loss_recovered(lm, tmp_path, capsys):
    from superalign.cli import main

    _, _, path = lm
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"body": t + f" number {i}"}) + "\n" for i in range(4) for t in TEXTS))
    home = ["--home", str(tmp_path / "h"), "--progress", "false"]
    assert main(["interp", "cache", *home, "--model", f"hf:{path}", "--texts", str(corpus), "--text-col", "body",
                 "--hook", "layers.0"]) == 0
    cache = capsys.readouterr().out.split("cache: ")[1].split()[0]
    assert json.loads((__import__("pathlib").Path(cache) / "meta.json").read_text())["texts_spec"]["text_col"] == "body"
    assert main(["interp", "sae", *home, "--cache", cache, "--architecture", "relu", "--n-latents", "64",
                 "--l1-coef", "1", "--epochs", "2", "--batch-size", "32", "--loss-recovered-texts", "6"]) == 0
    out = capsys.readouterr().out
    for key in ("ce_loss_recovered", "kl_recovered", "ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero", "l0"):
        assert f"\n{key} " in out
    sae_dir = out.split("sae: ")[1].split()[0]
    assert isinstance(load_sae(sae_dir), ReLUSAE)
    with pytest.raises(SystemExit) as exit_:  # argparse enforces the choices listed in --help
        main(["interp", "sae", *home, "--cache", cache, "--architecture", "gated"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'gated'" in err and "topk" in err and "relu" in err
