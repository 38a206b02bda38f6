"""Activation caching at hook points of an encoder and a causal LM."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from superalign.errors import SuperalignError
from superalign.interp.activations import cache_activations, load_activations, parse_hook

TEXTS = ["the food was good", "a much longer sentence about the hotel and its staff", "ok"]


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2"])
def test_cache_matches_hidden_states(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model = AutoModel.from_pretrained(path).eval()
    out = cache_activations(model, tok, TEXTS, "layers.1", tmp_path / "c", model_name=path, shard_tokens=5,
                            batch_size=2, progress=False)
    c = load_activations(out)
    assert len(c.meta["shards"]) > 1  # streamed in shards
    n_tokens = sum(len(tok(t)["input_ids"]) for t in TEXTS)
    assert c.acts.shape == (n_tokens, 32) and c.meta["tokens"] == n_tokens
    # each row is the hidden state of that text's token at that position, computed alone (no padding effects)
    for doc in range(len(TEXTS)):
        enc = tok(TEXTS[doc], return_tensors="pt")
        with torch.no_grad():  # the cache passes ids and mask only (token_type_ids would shift GPT-2's embeddings)
            h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      output_hidden_states=True).hidden_states[2][0]
        rows = c.doc == doc
        assert c.tokens[rows].tolist() == enc["input_ids"][0].tolist()
        assert torch.allclose(c.acts[rows][c.pos[rows].argsort()], h, atol=1e-4)


def test_hook_names_and_bad_input(tiny_bert, tmp_path):
    assert parse_hook("embeddings", 2) == 0 and parse_hook("layers.0", 2) == 1 and parse_hook("layers.1", 2) == 2
    with pytest.raises(SuperalignError, match="unknown hook point 'layers.2'.*layers.0 … layers.1"):
        parse_hook("layers.2", 2)
    with pytest.raises(SuperalignError, match="unknown hook point 'mlp'"):
        parse_hook("mlp", 2)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert)
    with pytest.raises(SuperalignError, match="corpus is empty"):
        cache_activations(model, tok, ["", "  "], "layers.0", tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()
    with pytest.raises(SuperalignError, match="not an activation cache"):
        load_activations(tmp_path)


def test_cli_cache_then_sae(tiny_bert, tmp_path, capsys):
    from superalign.cli import main

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(f'{{"body": "sentence number {i} about food and hotels"}}\n' for i in range(40)))
    home = ["--home", str(tmp_path / "h"), "--progress", "false"]
    assert main(["interp", "cache", *home, "--model", f"hf:{tiny_bert}", "--texts", str(corpus),
                 "--text-col", "body", "--hook", "layers.1"]) == 0
    cache = capsys.readouterr().out.split("cache: ")[1].split()[0]
    assert main(["interp", "sae", *home, "--cache", cache, "--n-latents", "64", "--k", "4", "--epochs", "2",
                 "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "fvu" in out and "sae: " in out
    assert main(["interp", "cache", "--home", str(tmp_path / "bad"), "--model", f"hf:{tiny_bert}",
                 "--texts", str(corpus)]) == 2  # column 'text' missing
    assert "--text-col" in capsys.readouterr().err and not (tmp_path / "bad").exists()
