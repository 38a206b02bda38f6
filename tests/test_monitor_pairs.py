"""Contrast-pair datasets and what the probes read from a causal LM (superalign/monitor/pairs.py, extract.py)."""

import numpy as np
import pytest
import torch

from superalign.errors import SuperalignError
from superalign.monitor.extract import check_layer, hidden_states, zero_shot
from superalign.monitor.pairs import Template, load_pairs, make_pairs

T = Template("sentiment", "{text}\nSentiment: {answer}", ("negative", "positive"))
ROWS = [{"text": "the food was good", "label": 1}, {"text": "rude staff and a dirty room", "label": 0},
        {"text": "a lovely view", "label": True}]


def test_pairs_fill_both_answers_and_the_template_is_part_of_the_identity():
    p = make_pairs(ROWS, T)
    assert p.neg[0] == "the food was good\nSentiment: negative" and p.pos[0] == "the food was good\nSentiment: positive"
    assert p.prompts[1] == "rude staff and a dirty room\nSentiment: " and p.labels == [1, 0, 1]
    other = make_pairs(ROWS, Template("sentiment", "{text}\nSentiment: {answer}", ("bad", "good")))
    assert other.fingerprint != p.fingerprint


@pytest.mark.parametrize("make, match", [
    (lambda: Template("t", "{text} is", ("no", "yes")), "no {answer} placeholder"),
    (lambda: Template("t", "{text} {answer}", ("yes", "yes")), "two different"),
    (lambda: make_pairs([{"text": "x", "label": 2}], T), "not binary"),
    (lambda: make_pairs([{"sentence": "x", "label": 1}], T), "lacks column"),
    (lambda: make_pairs([], T), "no rows"),
    (lambda: check_layer(5, 2), "out of range"),
])
def test_bad_input_is_one_clear_error(make, match):
    with pytest.raises(SuperalignError, match=match):
        make()


def test_shared_sst2_and_boolq_pairs(shared_data):
    sst = load_pairs("sst2", data_dir=str(shared_data), limit=20)
    assert len(sst) == 20 and set(sst.labels) <= {0, 1} and sst.pos[0].endswith("Sentiment: positive")
    bq = load_pairs("boolq", "true-false", split="train", data_dir=str(shared_data), limit=5)
    assert bq.pos[0].endswith("Is the answer yes? true")
    with pytest.raises(SuperalignError, match="unknown template"):
        load_pairs("sst2", "nope", data_dir=str(shared_data))


def test_local_file_with_column_mapping(tmp_path):
    f = tmp_path / "claims.csv"
    f.write_text("claim,truth\nthe sky is blue,1\nfire is cold,0\n")
    p = load_pairs(str(f), Template("claim", "Claim: {text}\nTrue? {answer}", ("no", "yes")),
                   columns={"claim": "text"}, label_col="truth")
    assert p.labels == [1, 0] and p.pos[1] == "Claim: fire is cold\nTrue? yes" and str(f) in p.source


@pytest.fixture
def lm(tiny_gpt2):
    from superalign.models.lm import load_lm

    tok, model = load_lm(tiny_gpt2, require_eos=False)
    tok.padding_side = "right"
    return tok, model


def test_hidden_states_last_token_do_not_depend_on_the_batch(lm):
    tok, model = lm
    texts = ["a b c d e", "x", "the food was good and the view was nice"]
    h = hidden_states(model, tok, texts, batch_size=3)
    assert h.shape == (3, 3, 32) and h.dtype == np.float32          # 2 blocks + embeddings
    for i, t in enumerate(texts):
        ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ref = torch.stack(model(input_ids=ids, output_hidden_states=True).hidden_states)[:, 0, -1]
        np.testing.assert_allclose(h[:, i], ref.numpy(), rtol=1e-5, atol=1e-5)
    mean = hidden_states(model, tok, texts[:1], pool="mean")
    ids = torch.tensor([tok(texts[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        ref = torch.stack(model(input_ids=ids, output_hidden_states=True).hidden_states)[:, 0].mean(1)
    np.testing.assert_allclose(mean[:, 0], ref.numpy(), rtol=1e-5, atol=1e-5)


def test_zero_shot_is_the_softmax_of_the_two_answers_log_probs(lm):
    tok, model = lm
    pairs = make_pairs(ROWS[:2], T)
    p = zero_shot(model, tok, pairs)
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()

    def answer_logp(prompt, text):  # by hand: sum of log p of the tokens after the prompt
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        return sum(float(logp[t - 1, ids[t]]) for t in range(len(p_ids), len(ids)))

    for i in range(2):
        a, b = answer_logp(pairs.prompts[i], pairs.neg[i]), answer_logp(pairs.prompts[i], pairs.pos[i])
        assert p[i] == pytest.approx(np.exp(b) / (np.exp(a) + np.exp(b)), rel=1e-4)


def test_monitor_probe_job_end_to_end_through_the_cli(tmp_path, tiny_gpt2):
    import json

    from superalign.cli import main
    from superalign.runs.store import RunStore

    rng = np.random.default_rng(0)
    words = ["good", "bad", "nice", "awful", "fine", "poor"]
    f = tmp_path / "claims.jsonl"
    f.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 4)), "label": int(i % 2)}) + "\n"
                         for i in range(24)))
    home = tmp_path / "home"
    args = ["monitor", "probe", "--model", tiny_gpt2, "--dataset", str(f), "--template-text", "{text} ok? {answer}",
            "--answers", "no", "yes", "--n", "24", "--ccs-restarts", "2", "--ccs-epochs", "20", "--layers", "0", "2",
            "--home", str(home), "--progress", "false"]
    main(args)
    runs = RunStore(home).list()
    assert len(runs) == 1 and runs[0]["status"] == "done"
    m = runs[0]["metrics"]
    assert 0 <= m["zero_shot_acc"] <= 1 and m["ccs_best_layer"] in (0, 2) and m["n_test"] == 12
    per_layer = json.loads(open(runs[0]["artefacts"]["per_layer"]).read())
    assert set(per_layer["layers"]) == {"0", "2"} and "acc_ci" in per_layer["layers"]["2"]["ccs"]
    assert runs[0]["compute"]["flops_total"] > 0
    main(["report", "--home", str(home), "--out", str(tmp_path / "r.html")])
    html = (tmp_path / "r.html").read_text()
    assert "Monitoring" in html and "zero-shot" in html and "accuracy per layer" in html
    with pytest.raises(SystemExit) as e:  # a layer the 2-block model does not have: one line, exit 2
        main(args[:-6] + ["--layers", "7", "--home", str(tmp_path / "h2"), "--progress", "false"])
    assert e.value.code == 2 and not (tmp_path / "h2").exists()  # nothing written
