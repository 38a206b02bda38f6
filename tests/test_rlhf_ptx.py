"""PPO-ptx from any text (`superalign rlhf ppo --ptx-data`): documents scored on every token, the loss golden against
a hand computation, file formats, bad input and the run id."""

import json
import math

import pytest
import torch

from superalign.cli import main
from superalign.errors import SuperalignError
from superalign.models.lm import completion_batch, completion_logps, load_lm
from superalign.rlhf.lm import document_start, encode_documents, load_documents, ptx_sequences
from superalign.rlhf.ppo import PPOConfig, train_ppo
from superalign.rlhf.reward import load_reward_model


class _Bigram(torch.nn.Module):
    """A causal LM whose next-token logits depend only on the current token: the hand computation is a table."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, input_ids, **kw):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_ptx_nll_of_a_document_matches_a_hand_computation():
    # vocabulary {0: BOS/EOS, 1: "a", 2: "b"}; logits of the token after 0, 1, 2:
    table = [[0.0, math.log(3), 0.0], [math.log(2), 0.0, math.log(2)], [0.0, 0.0, 0.0]]
    doc = ([0, 1, 2, 0], 1)  # BOS a b EOS, the BOS as a one-token prompt
    ids, mask, lmask = completion_batch([doc], pad_id=0)
    lp, n = completion_logps(_Bigram(table), ids, mask, lmask)
    # p(a|BOS) = 3/5, p(b|a) = 2/5, p(EOS|b) = 1/3: every document token and the EOS are scored
    hand = -(math.log(3 / 5) + math.log(2 / 5) + math.log(1 / 3)) / 3
    assert int(n) == 3 and float(-lp.detach().sum() / n.sum()) == pytest.approx(hand, abs=1e-6)


def test_documents_start_with_bos_and_are_cut_into_chunks(tiny_lm):
    tok, _ = load_lm(tiny_lm)
    start = document_start(tok)
    assert start == [tok.eos_token_id]  # GPT-2 style: EOS doubles as BOS
    words = tok("the food was very good and the hotel was nice .", add_special_tokens=False)["input_ids"]
    (seq, p), = encode_documents(tok, ["the food was very good and the hotel was nice ."], 64)
    assert p == 1 and seq == start + words + [tok.eos_token_id]
    _, _, lmask = completion_batch([(seq, p)], tok.pad_token_id)
    assert int(lmask[:, 1:].sum()) == len(words) + 1  # every token and the EOS, none lost to the shift
    chunks = encode_documents(tok, ["the food was very good and the hotel was nice ."], 5)
    assert all(s[:1] == start and q == 1 and len(s) <= 5 for s, q in chunks)
    assert sum((s[1:] for s, _ in chunks), []) == words + [tok.eos_token_id]
    mixed = ptx_sequences(tok, [{"text": "good ."}, {"prompt": "the food was", "completion": "good ."}], 64)
    assert mixed[0][1] == 1 and mixed[1][1] > 1  # a demonstration is scored on its completion only


def test_ppo_ptx_loss_is_the_mean_token_nll_of_the_documents(tiny_lm):
    """One update, one minibatch: loss/ptx is computed before the first optimiser step, on the initial weights."""
    tok, policy = load_lm(tiny_lm)
    _, ref = load_lm(tiny_lm)
    _, rm = load_reward_model(tiny_lm)
    doc = "the food was good and the staff were friendly ."
    ids = torch.tensor([document_start(tok) + tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits[0]
    hand = -torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None]).mean().item()
    cfg = PPOConfig(updates=1, batch_size=4, minibatch_size=4, ppo_epochs=1, response_len=4, ptx_coef=1.0,
                    reward_norm=False)
    res = train_ppo(policy, ref, rm, tok, ["the food was"] * 4, cfg, ptx_rows=[{"text": doc}], progress=False)
    assert res.history[0]["loss/ptx"] == pytest.approx(hand, abs=1e-5)


def test_load_documents_formats(tmp_path):
    txt = tmp_path / "d.txt"
    txt.write_text("first line\nsame document\n\n\n  \nsecond document\n")
    assert load_documents(str(txt)) == [{"text": "first line\nsame document"}, {"text": "second document"}]
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({"text": "one", "id": 1}) + "\n" + json.dumps({"text": "  ", "id": 2}) + "\n")
    assert load_documents(str(jl)) == [{"text": "one"}]
    csv = tmp_path / "d.csv"
    csv.write_text("text\nhello world\n")
    assert load_documents(str(csv)) == [{"text": "hello world"}]


@pytest.mark.parametrize("name, content, msg", [
    ("none.txt", None, "does not exist"),
    ("empty.txt", "", "has no documents"),
    ("blank.txt", "\n  \n\n", "has no documents"),
    ("empty.jsonl", "", "is empty"),
    ("cols.jsonl", '{"body": "x"}\n', "column 'text' not found \\(columns: body\\)"),
    ("null.jsonl", '{"text": null}\n', "row 0: text is missing"),
    ("d.md", "text", "is not a .txt"),
])
def test_load_documents_bad_input(tmp_path, name, content, msg):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(SuperalignError, match=msg):
        load_documents(str(tmp_path / name))


def test_ppo_job_ptx_options_and_run_id(tmp_path):
    from superalign.rlhf.jobs import PPOJob

    home = str(tmp_path / "home")
    assert "ptx_data" not in PPOJob(home=home).key()  # ids of runs stored before the option are unchanged
    assert PPOJob(home=home, ptx_coef=1.0, ptx_data="testbed").key() == PPOJob(home=home, ptx_coef=1.0).key()
    docs = tmp_path / "d.txt"
    docs.write_text("some text\n")
    k1 = PPOJob(home=home, ptx_coef=1.0, ptx_data=str(docs)).key()
    docs.write_text("other text\n")
    k2 = PPOJob(home=home, ptx_coef=1.0, ptx_data=str(docs)).key()
    assert k1["ptx_data_fingerprint"] != k2["ptx_data_fingerprint"]  # an edited file is a new run
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    with pytest.raises(SuperalignError, match="needs pretraining text"):
        PPOJob(home=home, ptx_coef=1.0, prompts=str(prompts))
    with pytest.raises(SuperalignError, match="--ptx-coef 0 turns off"):
        PPOJob(home=home, ptx_data=str(docs))
    with pytest.raises(SuperalignError, match="does not exist"):
        PPOJob(home=home, ptx_coef=1.0, ptx_data=str(tmp_path / "none.txt"))


def test_cli_ppo_with_ptx_data_from_a_file(tiny_lm, tmp_path, capsys):
    from superalign.runs import RunStore

    home = tmp_path / "home"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["the food was", "the hotel is"]))
    docs = tmp_path / "docs.txt"
    docs.write_text("the food was good .\n\nthe hotel is very nice and the staff were friendly .\n")
    base = ["rlhf", "ppo", "--home", str(home), "--progress", "false", "--policy", tiny_lm, "--reward", tiny_lm,
            "--prompts", str(prompts), "--updates", "2", "--batch-size", "4", "--minibatch-size", "2",
            "--response-len", "4", "--ptx-coef", "1"]
    assert main(base + ["--ptx-data", str(docs)]) == 0
    run, = RunStore(home).list(kind="rlhf-ppo")
    assert all(2.0 < r["loss/ptx"] < 6.0 for r in run["metrics"]["history"])  # a real NLL, in nats per token
    assert run["config"]["ptx_data_fingerprint"]
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    for args, msg in ((["--ptx-data", str(bad)], "column 'text' not found"),
                      ([], "needs pretraining text"),
                      (["--ptx-data", str(tmp_path / "none.txt")], "does not exist")):
        assert main([a.replace(str(home), str(tmp_path / "home2")) for a in base] + args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err
    assert not (tmp_path / "home2").exists()
