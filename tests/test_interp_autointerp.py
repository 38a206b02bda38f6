"""Explain → simulate → score: golden tests of the discretisation, expected value and every score; records;
explainers and simulators against a deterministic test double of the LLM interface; the CLI chain and resume."""

import json
import math
import re

import numpy as np
import pytest
import torch

from superalign.errors import SuperalignError
from superalign.interp.explain import (
    LLMExplainer,
    TokenLookupExplainer,
    explanation_messages,
    format_records,
    lookup_tokens,
    parse_explanation,
)
from superalign.interp.records import (
    ActivationRecord,
    UnitRecords,
    build_records,
    discretize,
    records_from_json,
    records_to_json,
)
from superalign.interp.scoring import (
    auroc,
    balanced_accuracy,
    correlation_score,
    fuzz_examples,
    join_tokens,
    mark,
    rsquared_score,
    score_detection,
    score_embedding,
    score_fuzzing,
    score_simulation,
)
from superalign.interp.simulate import (
    AllAtOnceSimulator,
    GenerationSimulator,
    PerTokenSimulator,
    TokenLookupSimulator,
    expected_value,
    make_simulator,
    parse_levels,
)

# ------------------------------------------------------------------------------------------------ golden formulas

def test_discretize_by_hand():
    # floor(10 · relu(a) / max): 0, floor(2.5)=2, 5, 10, relu(−1)=0, capped at 10 above the max
    assert discretize([0, 0.5, 1.0, 2.0, -1.0, 3.0], 2.0) == [0, 2, 5, 10, 0, 10]
    assert discretize([0.99, 1.0], 1.0, scale=9) == [8, 9]
    assert discretize([1.0, 2.0], 0.0) == [0, 0]


def test_expected_value_by_hand():
    lp = np.log([[0.5, 0.25, 0.25]])
    assert expected_value(lp)[0] == pytest.approx(0.75)                      # 0·.5 + 1·.25 + 2·.25
    # renormalised over the candidates: p = [.2, .2] (the rest of the vocabulary ignored) → 0.5
    assert expected_value(np.log([[0.2, 0.2]]))[0] == pytest.approx(0.5)
    assert expected_value(np.array([[-np.inf, np.log(0.1), -np.inf]]))[0] == pytest.approx(1.0)
    assert expected_value(np.full((1, 11), -np.inf))[0] == 0.0               # nothing in a remote top-k
    lp = np.full((2, 11), -np.inf)
    lp[0, 10] = 0.0
    lp[1, [3, 7]] = np.log(0.5)
    assert expected_value(lp).tolist() == pytest.approx([10.0, 5.0])


def test_correlation_pooled_over_records():
    # pooled: real [0,1,2], pred [0,2,4] → 1 even though the records differ in length
    assert correlation_score([[0, 1], [2]], [[0, 2], [4]]) == pytest.approx(1.0)
    # real [1,2,3] pred [1,3,2]: cov = (0·... ) → r = 0.5 by hand
    assert correlation_score([[1, 2, 3]], [[1, 3, 2]]) == pytest.approx(0.5)
    assert correlation_score([[1, 2, 3]], [[3, 2, 1]]) == pytest.approx(-1.0)
    assert correlation_score([[1, 2, 3]], [[4, 4, 4]]) == 0.0                # constant prediction explains nothing
    assert math.isnan(correlation_score([[1, 1]], [[0, 1]]))                  # constant truth: undefined
    with pytest.raises(ValueError):
        correlation_score([[1, 2]], [[1]])


def test_rsquared_on_the_simulator_scale():
    # real activations 0, 1, 2 with max 2 → levels 0, 5, 10; pred 0, 5, 5 → SS_res 25, SS_tot 50 → 0.5
    assert rsquared_score([[0, 1, 2]], [[0, 5, 5]], max_act=2.0) == pytest.approx(0.5)
    assert rsquared_score([[0, 1], [2]], [[0, 5], [10]], max_act=2.0) == pytest.approx(1.0)
    # negative activations count as 0 (relu), as in the discretisation
    assert rsquared_score([[-3, 1, 2]], [[0, 5, 10]], max_act=2.0) == pytest.approx(1.0)


def test_auroc_and_balanced_accuracy_by_hand():
    # pairs: .9>.5, .9>.1, .5=.5 (½), .5>.1 → 3.5 / 4
    assert auroc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    # positives 2/3 right, negatives 1/1 right → (2/3 + 1) / 2
    assert balanced_accuracy([1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(5 / 6)


# ------------------------------------------------------------------------------------------------------- records

class WordTok:
    """A tokenizer double: id i ↔ word VOCAB[i]; id 0 is a special token."""

    VOCAB = ["[CLS]", "the", "good", "bad", "food", "was", "very", "staff"]
    all_special_ids = [0]

    def decode(self, ids):
        return " ".join(self.VOCAB[i] for i in ids)


def _cache(docs: list[list[int]]):
    """tokens/doc/pos of a cache of these token-id lists, rows shuffled as the length-sorted cache writes them."""
    rows = [(t, d, p) for d, ids in enumerate(docs) for p, t in enumerate(ids)]
    rows = rows[::-1]
    t, d, p = (torch.tensor(x) for x in zip(*rows))
    return t, d, p


def test_build_records_by_hand():
    docs = [[0, 1, 4, 5, 2], [0, 1, 7, 5, 3], [0, 6, 2, 2], [0, 1, 4, 5, 6, 2]]
    tokens, doc, pos = _cache(docs)
    # fires on "good", twice as hard in doc 2
    act = torch.where(tokens == 2, 1.0, 0.0) * torch.where(doc == 2, 2.0, 1.0)
    act = act + torch.where(tokens == 0, 100.0, 0.0)  # [CLS] outlier must be ignored
    recs = build_records(act[:, None], [7], tokens, doc, pos, WordTok(), n_explain=2, n_score_top=1, n_random=2,
                         window=3, seed=0)
    r = recs[0]
    assert r.unit == 7 and r.max_act == 2.0
    assert r.density == pytest.approx(4 / 16)                                     # 4 "good" of 16 non-special tokens
    # docs ranked by their max: doc 2 (2.0), then docs 0 and 3 (1.0, ties by doc order): even ranks explain
    assert [x.doc for x in r.explain] == [2, 3] and [x.doc for x in r.score_top] == [0]
    assert r.explain[0].tokens == ["very", "good", "good"] and r.explain[0].acts == [0.0, 2.0, 2.0]
    # the window ends at the peak (most of it is left context) and never includes [CLS]
    assert r.score_top[0].tokens == ["food", "was", "good"] and r.score_top[0].start == 1
    assert len(r.score_random) == 2 and all(len(x.tokens) == 3 and "[CLS]" not in x.tokens for x in r.score_random)
    assert records_from_json(json.loads(json.dumps(records_to_json(recs)))) == recs
    with pytest.raises(SuperalignError, match="shape"):
        build_records(act[:5, None], [7], tokens, doc, pos, WordTok())


def test_format_records_as_in_the_paper():
    recs = [ActivationRecord(["a", " b\tc"], [0.0, 2.0], 0, 0)]
    text = format_records(recs, max_act=4.0)
    assert "<start>\na\t0\n b\\tc\t5\n<end>" in text                              # floor(10·2/4) = 5; tab escaped
    assert text.endswith("Same activations, but with all zeros filtered out:\n<start>\n b\\tc\t5\n<end>")
    msgs = explanation_messages(recs, 4.0)
    assert msgs[0]["role"] == "system" and "0 to 10" in msgs[0]["content"]
    assert msgs[-1]["content"].endswith("the main thing this neuron does is find")


def test_parse_explanation():
    assert parse_explanation(" positive words about food. Then more") == "positive words about food"
    assert parse_explanation("the main thing this neuron does is find dates\nNeuron 3") == "dates"
    assert parse_explanation("   ") == "nothing in particular"


def _unit(unit=3) -> UnitRecords:
    top = [ActivationRecord(["the", " food", " was", " good"], [0, 0, 0, 4.0], 0, 0),
           ActivationRecord(["very", " good", " staff"], [0, 3.0, 0], 1, 0)]
    held = [ActivationRecord(["so", " good", " and", " good"], [0, 4.0, 0, 2.0], 2, 0)]
    rand = [ActivationRecord(["the", " bad", " staff"], [0, 0, 0], 3, 0)]
    return UnitRecords(unit, 4.0, 0.1, top, held, rand)


def test_token_lookup_explainer_and_simulator_by_hand():
    r = _unit()
    expl = TokenLookupExplainer(n_tokens=2).explain([r])[0]
    assert expl == 'the tokens "good"'                         # only "good" is ever active
    assert lookup_tokens(expl) == ["good"]
    s = score_simulation(TokenLookupSimulator(), expl, r)
    # predictions 10 on "good": real [0,4,0,2, 0,0,0] vs pred [0,10,0,10, 0,0,0]
    real, pred = [0, 4, 0, 2, 0, 0, 0], [0, 10, 0, 10, 0, 0, 0]
    assert s.ev_correlation == pytest.approx(np.corrcoef(real, pred)[0, 1])
    assert s.ev_correlation_top == pytest.approx(np.corrcoef([0, 4, 0, 2], [0, 10, 0, 10])[0, 1])
    assert math.isnan(s.ev_correlation_random)                 # nothing fires in the random record
    assert s.rsquared == pytest.approx(rsquared_score([real], [pred], 4.0))
    assert s.predictions == [[0, 10, 0, 10], [0, 0, 0]]


def test_join_and_mark():
    assert join_tokens(["the", " food", " was"]) == "the food was"
    assert join_tokens(["the", "play", "##ing", "cat"]) == "the playing cat"
    assert mark(" food") == " <<food>>" and mark("##ing") == "##<<ing>>"
    assert join_tokens(["the", mark("play"), mark("##ing")]) == "the <<play>><<ing>>"


def test_fuzz_examples_mark_real_then_random_tokens():
    texts, labels = fuzz_examples(_unit())
    assert labels == [True, False]
    assert texts[0] == "so <<good>> and <<good>>"
    assert texts[1].count("<<") == 2 and "<<good>>" not in texts[1]


def test_parse_levels():
    out = "<start>\nthe\t0\n food\t7\n was\tunknown\n good\t12\n<end>"
    assert parse_levels(out, 5, 10).tolist() == [0, 7, 0, 10, 0]   # unparseable → 0, clipped, missing → 0


# ------------------------------------------------------------------- simulators against a test double of the LLM

class KeywordLLM:
    """A deterministic stand-in for a language model: it 'understands' an explanation as the words it quotes or
    names, and predicts 10 on tokens that match them, 0 elsewhere; yes/no questions are answered the same way."""

    name = "keyword"
    supports_next_token_logprobs = True
    supports_echo_logprobs = True

    def __init__(self):
        self.calls = 0

    def is_single_token(self, s):
        return True

    def format_chat(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + ("<assistant>" if add_generation_prompt
                                                                             else "")

    @staticmethod
    def _keywords(text):
        expl = re.findall(r"(?:does is find|explained as:) ([^\n]*?)\.?\n", text)[-1]
        return {w.strip('"., ').lower() for w in expl.split()} - {"the", "tokens", "words", "about"}

    def _dist(self, hit, candidates):
        lp = np.full(len(candidates), np.log(0.01))
        lp[-1 if hit else 0] = np.log(0.9)
        return lp

    def echo_logprobs(self, prompt, offsets, candidates):
        self.calls += 1
        keys = self._keywords(prompt)
        out = []
        for o in offsets:
            assert prompt[o - 1] == "\t" and prompt[o:].startswith("unknown")
            tok = prompt[:o - 1].rsplit("\n", 1)[-1]
            out.append(self._dist(tok.strip().lower() in keys, candidates))
        return np.array(out)

    def next_token_logprobs(self, prompts, candidates):
        out = []
        for p in prompts:
            text = p[-1]["content"]
            keys = self._keywords(text)
            if "What is the activation of token" in text:
                tok = re.search(r"token \d+ \('(.*)'\)", text).group(1)
                out.append(self._dist(tok.strip().lower() in keys, candidates))
            else:
                body = text.split("Text: ")[1].split("\n")[0]
                marked = re.findall(r"<<(.*?)>>", body)
                hit = all(m.lower() in keys for m in marked) if marked else \
                    any(w.lower() in keys for w in re.findall(r"\w+", body))
                out.append(self._dist(hit, candidates))
        return np.array(out)

    def generate(self, prompts, max_new_tokens=128, temperature=0.0, stop=None, seed=0):
        outs = []
        for p in prompts:
            last = p[-1]["content"]
            if "Replace every" in last:
                keys = self._keywords(last)
                listing = last.split("<start>\n")[-1].split("<end>")[0]
                outs.append("".join(
                    f"{ln.split(chr(9))[0]}\t{10 if ln.split(chr(9))[0].strip().lower() in keys else 0}\n"
                    for ln in listing.splitlines()))
            else:  # explanation: the most frequent non-zero token of the first record
                nz = last.split("zeros filtered out:\n<start>\n")[1].split("<end>")[0].split("\t")[0].strip()
                outs.append(f" the word {nz}. Extra text")
        return outs


def test_all_at_once_prompt_offsets_and_scores():
    llm, r = KeywordLLM(), _unit()
    sim = AllAtOnceSimulator(llm)
    text, offsets = sim.prompt("good", ["so", " good"])
    assert [text[o - 1:o + 7] for o in offsets] == ["\tunknown", "\tunknown"]
    assert text.endswith("so\tunknown\n good\tunknown\n<end>\n")
    s = score_simulation(sim, "good", r)
    assert llm.calls == 2                                     # one forward pass per record
    # predicted EV = (0·.9 + Σ_{1..9} i·.01 + 10·.01)/(1) on misses... by hand from the distribution:
    p = np.full(11, 0.01)
    p[10] = 0.9
    hit = (p * np.arange(11)).sum() / p.sum()
    p = np.full(11, 0.01)
    p[0] = 0.9
    miss = (p * np.arange(11)).sum() / p.sum()
    assert s.predictions[0] == pytest.approx([miss, hit, miss, hit])
    assert s.ev_correlation_top == pytest.approx(np.corrcoef([0, 4, 0, 2], [0, 1, 0, 1])[0, 1])
    # the three LLM simulators agree on the test double (same information, three access paths)
    s2 = score_simulation(PerTokenSimulator(llm), "good", r)
    s3 = score_simulation(GenerationSimulator(llm), "good", r)
    assert sum(s2.predictions, []) == pytest.approx(sum(s.predictions, []))
    assert s3.ev_correlation == pytest.approx(s.ev_correlation)


def test_simulator_backend_checks():
    class NoLogprobs(KeywordLLM):
        supports_echo_logprobs = False
        supports_next_token_logprobs = False
    with pytest.raises(SuperalignError, match="echo"):
        AllAtOnceSimulator(NoLogprobs())
    with pytest.raises(SuperalignError, match="generate"):
        PerTokenSimulator(NoLogprobs())
    assert make_simulator("token-lookup").name == "token-lookup"
    with pytest.raises(SuperalignError, match="unknown simulator"):
        make_simulator("magic", KeywordLLM())


def test_llm_explainer_detection_and_fuzzing():
    llm, r = KeywordLLM(), _unit()
    assert LLMExplainer(llm).explain([r]) == ["the word good"]
    det = score_detection(llm, "good", r)
    assert det.n == 2 and det.balanced_accuracy == 1.0 and det.auroc == 1.0
    fz = score_fuzzing(llm, "good", r)
    assert fz.n == 2 and fz.balanced_accuracy == 1.0
    wrong = score_detection(llm, "staff", r)                  # a wrong explanation fails detection
    assert wrong.balanced_accuracy == 0.0


def test_embedding_scorer_by_hand():
    def embed(texts):   # a stand-in encoder: one axis for "good", one for "staff"
        v = np.array([[("good" in t) * 1.0, ("staff" in t) * 1.0, 0.1] for t in texts])
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    r = _unit()   # held out: "so good and good" (fires), "the bad staff" (does not)
    assert score_embedding(embed, "good", r).auroc == 1.0
    assert score_embedding(embed, "staff", r).auroc == 0.0
    assert score_embedding(embed, "hotel", r).auroc == 0.5   # equal similarity: ties count ½


# ----------------------------------------------------------------------------------------------- CLI chain, resume

def test_cli_cache_sae_explain_score_and_resume(tiny_bert, tmp_path, capsys):
    from superalign.cli import main

    corpus = tmp_path / "c.jsonl"
    words = ["good", "bad", "food", "staff", "hotel", "view", "room", "nice"]
    corpus.write_text("".join(json.dumps({"text": " ".join(words[(i * j) % 8] for j in range(1, 9))}) + "\n"
                              for i in range(60)))
    home = ["--home", str(tmp_path / "h"), "--progress", "false"]
    assert main(["interp", "cache", *home, "--model", f"hf:{tiny_bert}", "--texts", str(corpus), "--hook",
                 "layers.1"]) == 0
    cache = capsys.readouterr().out.split("cache: ")[1].split()[0]
    assert main(["interp", "sae", *home, "--cache", cache, "--n-latents", "64", "--k", "4", "--epochs", "2",
                 "--batch-size", "64"]) == 0
    sae = capsys.readouterr().out.split("sae: ")[1].split()[0]
    assert main(["interp", "explain", *home, "--cache", cache, "--sae", sae, "--units", "6", "--window", "6"]) == 0
    out = capsys.readouterr().out
    explain_id = re.search(r"run (\S+) \(stored\)", out).group(1)
    expl = [json.loads(x) for x in open(out.split("explanations: ")[1].split()[0])]
    assert len(expl) == 6 and all(e["explanation"].startswith("the tokens") for e in expl)
    assert main(["interp", "score", *home, "--explanations", explain_id[:12], "--simulator", "token-lookup",
                 "--scorers", "simulation", "embedding", "--embedder", f"hf:{tiny_bert}"]) == 0
    out = capsys.readouterr().out
    scores_path = out.split("scores: ")[1].split()[0]
    rows = [json.loads(x) for x in open(scores_path)]
    assert len(rows) == 6 and "ev_correlation_mean" in out and "embedding_auroc_mean" in out
    assert all(-1 <= x["ev_correlation"] <= 1 for x in rows if not math.isnan(x["ev_correlation"]))
    # the report: SAE table, score histogram, explanations beside highlighted contexts
    assert main(["report", "--home", str(tmp_path / "h"), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "<h2>Interpretability</h2>" in html and "data:image/png;base64" in html and "<span title=" in html
    assert html.count("the tokens &quot;") >= 1
    # neurons instead of latents
    assert main(["interp", "explain", *home, "--cache", cache, "--unit-ids", "0", "5", "--window", "6"]) == 0
    capsys.readouterr()
    # bad input: one line, exit 2, nothing written
    assert main(["interp", "score", *home, "--explanations", "nope"]) == 2
    assert "superalign interp explain" in capsys.readouterr().err
    assert main(["interp", "explain", "--home", str(tmp_path / "bad"), "--cache", cache, "--sae", str(tmp_path)]) == 2
    assert "not an SAE checkpoint" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_score_resumes_from_partial(tmp_path, monkeypatch):
    from superalign.interp import scoring
    from superalign.interp.autointerp import ScoreJob, run_score

    folder = tmp_path / "expl"
    folder.mkdir()
    recs = [_unit(1), _unit(2), _unit(3)]
    (folder / "records.json").write_text(json.dumps({"meta": {"explainer": "token-lookup"},
                                                     "records": records_to_json(recs)}))
    (folder / "explanations.jsonl").write_text("".join(json.dumps({"unit": u, "explanation": 'the tokens "good"'})
                                                       + "\n" for u in (1, 2, 3)))
    job = ScoreJob(home=str(tmp_path / "h"), explanations=str(folder), simulator="token-lookup", progress=False)
    calls = []
    orig = scoring.score_simulation

    def flaky(sim, e, r):
        calls.append(r.unit)
        if r.unit == 3 and len(calls) == 3:
            raise KeyboardInterrupt
        return orig(sim, e, r)
    monkeypatch.setattr(scoring, "score_simulation", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_score(job)
    res = run_score(job)                                      # resumes: units 1 and 2 are not scored again
    assert calls == [1, 2, 3, 3] and res["metrics"]["n_units"] == 3
    # a finished run is returned from the store before anything is read or loaded again
    from superalign.interp import autointerp
    monkeypatch.setattr(autointerp, "records_from_json", lambda *a: pytest.fail("records read again"))
    assert run_score(job)["cached"] and calls == [1, 2, 3, 3]
    assert res["metrics"]["ev_correlation_mean"] == pytest.approx(orig(TokenLookupSimulator(), 'the tokens "good"',
                                                                       recs[0]).ev_correlation)


def test_report_highlight_escapes_tokens():
    from superalign.interp.report import highlight

    h = highlight(["<script>", " ok"], [2.0, 0.0], 2.0)
    assert "<script>" not in h and "&lt;script&gt;" in h
    assert "rgba(220,40,40,1.00)" in h and h.count("background") == 1
