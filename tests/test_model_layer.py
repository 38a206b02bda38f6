"""The one model layer (superalign.models): causal-vs-encoder decided once, one name grammar for every pillar,
causal-LM loading with device/dtype, and the shared layer never importing a pillar."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from superalign.errors import SuperalignError
from superalign.models import encode_texts, is_causal_config, load_hf, resolve_model
from superalign.models.lm import (
    completion_batch,
    left_pad,
    load_lm,
    load_tokenizer,
    resolve_lm_path,
    right_pad,
    save_lm,
)
from superalign.models.registry import list_models, lookup_model_name, model_names, register_model_name

PACKAGE = Path(__file__).resolve().parents[1] / "superalign"
PILLARS = ("w2s", "rlhf", "interp", "oversight")


@pytest.fixture(scope="module")
def gpt2_with_eos(tiny_gpt2, tmp_path_factory) -> str:
    """The tiny GPT-2 with an EOS token (generation needs one): [SEP] of its BERT vocabulary."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("gpt2_eos")
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    tok.eos_token = "[SEP]"
    tok.save_pretrained(d)
    GPT2LMHeadModel.from_pretrained(tiny_gpt2).save_pretrained(d)
    return str(d)


# ----------------------------------------------------------------------------- causal or encoder: one check


def test_gpt2_lm_head_checkpoint_is_pooled_at_its_last_token(tiny_gpt2):
    """Regression: a GPT2LMHeadModel checkpoint was mean-pooled as if it were an encoder (the registry only knew
    architectures ending in ForCausalLM). Its pooled feature must be the hidden state of the last real token, for
    right-padded batches of texts of different lengths."""
    from transformers import AutoModel, AutoTokenizer

    spec = resolve_model(f"hf:{tiny_gpt2}")
    assert load_hf(spec)[2] is True
    texts = ["one", "one two three four five", "six seven"]
    feats = encode_texts(spec, texts, None, progress=False, batch_size=3)  # one right-padded batch
    tok, model = AutoTokenizer.from_pretrained(tiny_gpt2), AutoModel.from_pretrained(tiny_gpt2).eval()
    with torch.no_grad():
        for i, t in enumerate(texts):  # each text alone: no padding at all, its last position is its last token
            hidden = model(**tok(t, return_tensors="pt"), output_hidden_states=True).hidden_states
            want = torch.stack([h[0, -1] for h in hidden]).numpy()
            np.testing.assert_allclose(feats[:, i], want, atol=1e-5, rtol=1e-5)
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    assert len(set(lengths)) == 3  # the batch really was padded


def test_embedding_scorer_pools_causal_lms_at_their_last_token(tiny_gpt2):
    """The interp embedding scorer mean-pooled every model; a causal LM is pooled at its last real token."""
    from transformers import AutoModel, AutoTokenizer

    from superalign.interp.scoring import TextEmbedder

    texts = ["one two three four", "five"]
    got = TextEmbedder(f"hf:{tiny_gpt2}")(texts)
    tok, model = AutoTokenizer.from_pretrained(tiny_gpt2), AutoModel.from_pretrained(tiny_gpt2).eval()
    with torch.no_grad():
        want = [torch.nn.functional.normalize(model(**tok(t, return_tensors="pt")).last_hidden_state[0, -1], dim=-1)
                for t in texts]
    np.testing.assert_allclose(got, torch.stack(want).numpy(), atol=1e-5)


def test_causal_student_logits_do_not_depend_on_the_batch(tiny_gpt2):
    """A GPT-2 student was left-padded without position ids: its padded texts' positions shifted with the batch."""
    from superalign.train.students import TextClassifier

    torch.manual_seed(0)
    clf = TextClassifier(resolve_model(f"hf:{tiny_gpt2}"), "full").eval()
    assert clf.causal
    with torch.no_grad():
        batch = clf(["one two three four five six", "seven"])
        alone = clf(["seven"])
    torch.testing.assert_close(batch[1:], alone, atol=1e-5, rtol=1e-5)


def test_is_causal_config_one_rule_for_every_family():
    from transformers import BertConfig, GPT2Config, LlamaConfig, PretrainedConfig, T5Config

    assert is_causal_config(GPT2Config(architectures=["GPT2LMHeadModel"]))
    assert is_causal_config(GPT2Config(architectures=["GPT2Model"]))  # a reward-model backbone is still causal
    assert is_causal_config(GPT2Config())
    assert is_causal_config(LlamaConfig(architectures=["LlamaForCausalLM"]))
    assert not is_causal_config(BertConfig(architectures=["BertModel"]))
    assert not is_causal_config(BertConfig(architectures=["BertLMHeadModel"]))  # an encoder unless is_decoder
    assert is_causal_config(BertConfig(is_decoder=True))
    assert not is_causal_config(T5Config())
    custom = PretrainedConfig(architectures=["MyRemoteForCausalLM"])  # remote code: its class name says it
    assert is_causal_config(custom) and not is_causal_config(PretrainedConfig(architectures=["MyEncoder"]))


def test_loss_recovered_uses_the_shared_check():
    from superalign.interp import loss_recovered
    from superalign.models import registry

    assert loss_recovered.is_causal_lm is registry.is_causal_lm
    assert not hasattr(loss_recovered, "load_causal_lm") and not hasattr(loss_recovered, "is_causal_lm_config")


# ----------------------------------------------------------------------------- one name grammar


def test_one_grammar_for_every_pillar(tiny_gpt2, tiny_bert):
    assert resolve_model("minilm-l2").layer == 2 and resolve_model("minilm").layer == 6
    spec = resolve_model(f"hf:{tiny_gpt2}@1")
    assert spec.path == tiny_gpt2 and spec.layer == 1
    folder = resolve_model(tiny_gpt2)  # a bare folder (a stage's output) is a model for every pillar
    assert folder.kind == "hf" and folder.path == tiny_gpt2 and folder.layer is None
    assert resolve_lm_path(f"hf:{tiny_gpt2}") == (tiny_gpt2, {})
    assert resolve_model("bow", pillar="w2s").kind == "bow"
    with pytest.raises(SuperalignError, match="not accepted by rlhf.*rlhf accepts:"):
        resolve_model("bow", pillar="rlhf")
    with pytest.raises(SuperalignError, match="not accepted by rlhf"):
        resolve_model("minilm-l3", pillar="rlhf")
    with pytest.raises(SuperalignError, match="unknown model 'gpt5'"):
        resolve_model("gpt5")
    with pytest.raises(SuperalignError, match="does not exist"):
        resolve_model("./no/such/folder")
    with pytest.raises(SuperalignError, match="empty"):
        resolve_model("")


def test_registered_names_resolve_and_are_listed(tiny_gpt2):
    from superalign.models.registry import ModelSpec

    register_model_name("unit-test-lm", lambda name, home: ModelSpec(name, "hf", tiny_gpt2), "a test LM", ("rlhf",))
    register_model_name("unit:", lambda name, home: ModelSpec(name, "hf", tiny_gpt2, int(name[5:])), "prefixed",
                        ("interp",), kind="encoder or causal LM", shown="unit:<k>")
    try:
        assert resolve_model("unit-test-lm", pillar="rlhf").path == tiny_gpt2
        assert resolve_model("unit:1").layer == 1 and lookup_model_name("unit:1").shown == "unit:<k>"
        listed = list_models()
        assert listed["unit-test-lm"] == "causal LM; pillars: rlhf; a test LM"
        assert "pillars: interp" in listed["unit:<k>"]
        for bad in (dict(kind="quantum"), dict(pillars=())):
            with pytest.raises(SuperalignError):
                register_model_name("bad", lambda n, h: None, "x", **{"pillars": ("w2s",), **bad})
    finally:
        from superalign.models import registry
        registry._NAMES.pop("unit-test-lm"), registry._NAMES.pop("unit:")


def test_rlhf_registers_testbed_without_importing_torch():
    """The shared layer never imports rlhf: the pillar registers ``testbed`` when imported, cheaply."""
    code = ("import sys, superalign.rlhf; from superalign.models import list_models; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(list_models()['testbed'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "causal LM" in out.stdout and "rlhf" in out.stdout
    import superalign.rlhf  # noqa: F401

    assert "testbed" in {e.key for e in model_names()}


def test_testbed_resolves_into_the_given_run_store(monkeypatch, tmp_path, tiny_gpt2):
    import superalign.rlhf.testbed as tb

    homes = []
    monkeypatch.setattr(tb, "testbed_lm_path", lambda home: homes.append(Path(home)) or Path(tiny_gpt2))
    spec = resolve_model("testbed", home=tmp_path, pillar="rlhf")
    assert spec.kind == "hf" and spec.path == tiny_gpt2 and homes == [tmp_path]
    assert resolve_lm_path("testbed", tmp_path) == (tiny_gpt2, {})


def test_cli_lists_every_name_with_its_pillars(capsys):
    from superalign.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert {"minilm-l<k>", "hf:<id|path>[@k]", "smollm2", "testbed", "bow", "human", "<folder>"} <= set(rows)
    assert "causal LM; pillars: rlhf, interp;" in rows["testbed"] and "classical; pillars: w2s;" in rows["bow"]


def _imported_modules(f: Path) -> list[str]:
    """Absolute names of every module ``f`` imports, at any depth (function-level imports too)."""
    package = ["superalign", *f.relative_to(PACKAGE).parent.parts]
    out = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module.split(".") if node.level == 0 else \
                package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            out.append(".".join(base))
            out += [".".join([*base, a.name]) for a in node.names]  # `from .. import rlhf` imports a module
    return out


def test_shared_layer_never_imports_a_pillar():
    """models/, data/ and train/ are below the pillars: not even a function-level import of one."""
    bad = [f"{f.relative_to(PACKAGE)} imports {m}" for folder in ("models", "data", "train")
           for f in (PACKAGE / folder).rglob("*.py") for m in _imported_modules(f)
           if m.split(".")[:2] in [["superalign", p] for p in PILLARS]]
    assert not bad, bad
    assert "superalign.rlhf.reward" in _imported_modules(PACKAGE / "rlhf" / "lm.py")  # the scan sees imports


def test_reward_and_rlhf_lm_import_no_cycle():
    """rlhf/lm.py imports rlhf/reward.py (encode_completion); reward must not import rlhf/lm back."""
    tree = ast.parse((PACKAGE / "rlhf" / "reward.py").read_text())
    rel = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}
    assert "lm" not in rel


# ----------------------------------------------------------------------------- causal-LM loading


def test_load_lm_device_dtype_truncation_and_errors(gpt2_with_eos, tiny_gpt2, tiny_bert):
    tok, lm = load_lm(f"hf:{gpt2_with_eos}@1", dtype="bf16", device="cpu")
    assert lm.config.n_layer == 1 and len(lm.transformer.h) == 1 and not lm.training
    assert {p.dtype for p in lm.parameters()} == {torch.bfloat16} and lm.device.type == "cpu"
    assert tok.padding_side == "left" and tok.eos_token == "[SEP]"
    _, lm32 = load_lm(gpt2_with_eos, dtype=torch.float32)
    assert next(lm32.parameters()).dtype == torch.float32 and len(lm32.transformer.h) == 2
    with pytest.raises(SuperalignError, match="unknown dtype"):
        load_lm(gpt2_with_eos, dtype="fp8")
    with pytest.raises(SuperalignError, match="unknown device"):
        load_lm(gpt2_with_eos, device="tpu")
    with pytest.raises(SuperalignError, match="not a causal LM"):
        load_lm(f"hf:{tiny_bert}")
    with pytest.raises(SuperalignError, match="no EOS token"):
        load_lm(tiny_gpt2)
    tok, lm = load_lm(tiny_gpt2, require_eos=False)  # scoring only (loss recovered): no EOS needed
    assert tok.eos_token is None and len(lm.transformer.h) == 2


def test_encoder_loader_takes_device_and_dtype(tiny_bert):
    tok, model, causal = load_hf(resolve_model(f"hf:{tiny_bert}@1"), device="cpu", dtype="bf16")
    assert not causal and model.config.num_hidden_layers == 1
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.device.type == "cpu"
    with pytest.raises(SuperalignError, match="unknown dtype"):
        load_hf(resolve_model(f"hf:{tiny_bert}"), dtype="int3")


def test_loaders_keep_remote_code_off_and_save_safetensors(gpt2_with_eos, tmp_path, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kw):
        seen.append(kw.get("trust_remote_code"))
        return real(*args, **kw)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    tok, lm = load_lm(gpt2_with_eos)
    assert seen == [False]
    out = save_lm(lm, tok, tmp_path / "policy", meta={"stage": "test"})
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    tok2, lm2 = load_lm(str(out))  # a folder written by a stage loads by its path
    torch.testing.assert_close(lm2.lm_head.weight, lm.lm_head.weight)
    assert load_tokenizer(str(out)).eos_token == "[SEP]"


def test_padding_helpers():
    ids, mask = left_pad([[5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = right_pad([[5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[1, 1], [1, 0]]
    ids, mask, loss = completion_batch([([1, 2, 3], 1), ([4, 5], 2)], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 5, 0]] and loss.tolist() == [[0, 1, 1], [0, 0, 0]]


def test_hf_local_llm_loads_through_the_model_layer(gpt2_with_eos):
    from superalign.interp.llm import HFLocalLLM

    llm = HFLocalLLM(f"hf:{gpt2_with_eos}", dtype="bf16", device="cpu", batch_size=2)
    assert next(llm.model.parameters()).dtype == torch.bfloat16 and llm.device.type == "cpu"
    with pytest.raises(SuperalignError, match="unknown dtype"):
        HFLocalLLM(gpt2_with_eos, dtype="float8")


def test_local_model_fingerprint_is_its_content(tmp_path):
    """Weights rewritten in place with the same size within the same second (a retrained checkpoint saved over
    the old one) are a new model: the old size+whole-second-mtime key called them the same and reused stale
    features."""
    import os

    from superalign.models import resolve_model

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "bert"}')
    w = d / "model.safetensors"
    w.write_bytes(b"a" * 64)
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, int(st.st_mtime) * 10**9 + 1000))
    before = resolve_model(f"hf:{d}").fingerprint()
    with open(w, "r+b") as f:  # same inode, same size
        f.write(b"b" * 64)
    os.utime(w, ns=(st.st_atime_ns, int(st.st_mtime) * 10**9 + 2000))  # same whole second
    assert resolve_model(f"hf:{d}").fingerprint() != before
    (d / "vocab.txt").write_text("[PAD]\nhello\n")  # a tokenizer file is part of the model too
    assert resolve_model(f"hf:{d}").fingerprint() != before
