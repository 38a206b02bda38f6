"""Key hygiene of the OpenAI-compatible client, against local fake servers (127.0.0.1 only): redirects never carry
the key to another origin, whatever a server echoes is scrubbed of the key everywhere it could be kept (errors, logs,
the response cache, the run store, the report), plain http to a remote host is refused while a key is set, and the
CLI's response cache answers repeated requests without asking the server again."""

import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fake_http import send_json

from superalign.errors import SuperalignError
from superalign.interp.llm import OpenAICompatLLM, http_llm_options, is_loopback, make_llm, scrub_key

KEY = "sk-h5-TOPSECRET-9f8e7d6c5b4a"
ENV = "SA_SECURITY_TEST_KEY"


class Server(ThreadingHTTPServer):
    """A fake OpenAI endpoint that records every request's headers. ``mode``:
    ``echo`` answers 200 with the Authorization header in the message and in an extra JSON field;
    ``error`` answers ``status`` with the Authorization header in its error body (JSON) or as plain text;
    ``redirect`` answers ``status`` with ``Location: location``."""

    daemon_threads = True

    def __init__(self, mode="echo", status=400, location=None, plain=False):
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode, self.status, self.location, self.plain = mode, status, location, plain
        self.calls: list[dict] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        s: Server = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        auth = self.headers.get("Authorization", "")
        s.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if s.mode == "redirect":
            return self._send(s.status, b"", {"Location": s.location})
        if s.mode == "error":
            data = f"denied: {auth}".encode() if s.plain else json.dumps(
                {"error": {"message": f"Incorrect API key provided: {auth}"}}).encode()
            return self._send(s.status, data)
        content = f"you sent {auth} to {self.path}"
        return self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content},
                                                        "text": content}],
                                           "debug": {"authorization": auth, auth: "as a key too"}}).encode())

    _send = send_json


@pytest.fixture
def serve(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    servers = []

    def start(**kw) -> Server:
        s = Server(**kw)
        threading.Thread(target=s.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def client(url, **kw) -> OpenAICompatLLM:
    llm = OpenAICompatLLM("m", base_url=url, api_key_env=ENV, **kw)
    llm.backoff_s = 0.001
    return llm


def leaks(*texts) -> list[str]:
    return [t for t in texts if KEY in t]


# ----------------------------------------------------------------------------------------------- redirects

@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_to_another_port_is_refused_and_the_key_never_reaches_it(serve, status):
    recorder = serve()
    redirector = serve(mode="redirect", status=status, location=recorder.url + "/chat/completions")
    with pytest.raises(SuperalignError, match=r"another origin http://127\.0\.0\.1:\d+; refusing") as e:
        client(redirector.url).generate(["hi"])
    assert "\n" not in str(e.value) and KEY not in str(e.value)
    assert len(redirector.calls) == 1 and redirector.calls[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert recorder.calls == []  # never contacted, so it never saw the key


def test_redirect_without_a_key_is_followed_without_authorization(serve, monkeypatch):
    monkeypatch.delenv(ENV)
    recorder = serve()
    redirector = serve(mode="redirect", status=307, location=recorder.url + "/chat/completions")
    assert client(redirector.url).generate(["hi"]) == ["you sent  to /v1/chat/completions"]
    assert len(recorder.calls) == 1 and "Authorization" not in recorder.calls[0]["headers"]
    assert recorder.calls[0]["body"]["messages"] == [{"role": "user", "content": "hi"}]  # POST body kept


def test_same_origin_redirect_keeps_the_key(serve):
    s = serve()
    s.mode = "redirect-once"
    orig = Handler.do_POST

    def once(self):
        if self.server.mode == "redirect-once":
            self.server.mode = "echo"
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.server.calls.append({"path": self.path, "headers": dict(self.headers)})
            return self._send(308, b"", {"Location": "/v2/chat/completions"})
        return orig(self)

    Handler.do_POST = once
    try:
        out = client(s.url).generate(["hi"])
    finally:
        Handler.do_POST = orig
    assert out == ["you sent Bearer *** to /v2/chat/completions"]
    assert [c["path"] for c in s.calls] == ["/v1/chat/completions", "/v2/chat/completions"]
    assert s.calls[1]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_redirect_loop_stops(serve):
    s = serve(mode="redirect", status=307)
    s.location = s.url + "/chat/completions"
    with pytest.raises(SuperalignError, match="redirected more than 5 times"):
        client(s.url).generate(["hi"])
    assert len(s.calls) == 6


# ----------------------------------------------------------------------------------------------- scrubbing

def test_echoed_key_is_scrubbed_from_responses_and_cache(serve, tmp_path):
    s = serve()
    llm = client(s.url, cache_dir=str(tmp_path / "c"))
    out = llm.generate(["hi"])
    assert out == ["you sent Bearer *** to /v1/chat/completions"]
    raw = client(s.url, use_chat=False, cache_dir=str(tmp_path / "c")).generate(["hi"])
    assert raw == ["you sent Bearer *** to /v1/completions"]
    files = list((tmp_path / "c").iterdir())
    assert len(files) == 2 and not leaks(*(f.read_text() for f in files))
    entry = json.loads(files[0].read_text())
    assert entry["response"]["debug"] == {"authorization": "Bearer ***", "Bearer ***": "as a key too"}


@pytest.mark.parametrize("status,plain", [(400, False), (401, True), (503, False), (500, True)])
def test_echoed_key_is_scrubbed_from_errors_and_logs(serve, caplog, capsys, status, plain):
    caplog.set_level("DEBUG")
    s = serve(mode="error", status=status, plain=plain)
    llm = client(s.url, max_retries=1)
    with pytest.raises(SuperalignError, match=f"HTTP {status}") as e:
        llm.generate(["hi"])
    assert "***" in str(e.value) and "\n" not in str(e.value)
    assert not leaks(str(e.value), repr(e.value), caplog.text, *capsys.readouterr(), repr(llm),
                     str(llm.__dict__))
    assert len(s.calls) == (2 if status >= 500 else 1)


def test_invalid_json_echo_is_scrubbed(serve):
    s = serve(mode="error", status=200, plain=True)
    with pytest.raises(SuperalignError, match=r"invalid JSON: denied: Bearer \*\*\*") as e:
        client(s.url).generate(["hi"])
    assert not leaks(str(e.value))


def test_scrub_key_on_nested_json_and_short_placeholders():
    assert scrub_key({"a": [f"x{KEY}y", {KEY: 1}], "n": 3}, KEY) == {"a": ["x***y", {"***": 1}], "n": 3}
    assert scrub_key(KEY.encode(), KEY) == "***" and scrub_key("text", None) == "text"
    # short placeholder keys ("EMPTY", "x") are masked as whole words only, so texts are not mangled
    assert scrub_key("x marks the box; key=x", "x") == "*** marks the box; key=***"


# ----------------------------------------------------------------------------------------------- transport rules

def test_plain_http_to_a_remote_host_needs_an_explicit_flag(serve):
    with pytest.raises(SuperalignError, match="plain http:// .*--allow-insecure-http"):
        OpenAICompatLLM("m", base_url="http://api.example.com/v1", api_key_env=ENV)
    with pytest.raises(SuperalignError, match="plain http://"):
        make_llm("http://10.0.0.5:8000/v1#m", api_key_env=ENV)
    assert OpenAICompatLLM("m", base_url="http://api.example.com/v1", api_key_env=ENV, allow_insecure_http=True)
    assert OpenAICompatLLM("m", base_url="https://api.example.com/v1", api_key_env=ENV)
    for url in ("http://127.0.0.1:9/v1", "http://127.3.4.5:9/v1", "http://[::1]:9/v1", "http://localhost:9/v1"):
        assert OpenAICompatLLM("m", base_url=url, api_key_env=ENV).name.startswith("m@")
    assert is_loopback("LOCALHOST") and is_loopback("::1") and not is_loopback("128.0.0.1")
    assert not is_loopback("localhost.example.com") and not is_loopback(None)


def test_key_set_after_construction_is_still_checked(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    llm = OpenAICompatLLM("m", base_url="http://api.example.com/v1", api_key_env=ENV, allow_insecure_http=True)
    llm.allow_insecure_http = False  # e.g. an object built with the flag, reused by other code
    with pytest.raises(SuperalignError, match="plain http://"):
        llm.generate(["hi"])


def test_credentials_in_the_url_are_refused_and_not_repeated(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    with pytest.raises(SuperalignError, match="carries credentials") as e:
        make_llm(f"https://user:{KEY}@api.example.com/v1#m", api_key_env=ENV)
    assert KEY not in str(e.value) and "api.example.com" in str(e.value)


# ----------------------------------------------------------------------------------------------- the cache

def test_cache_identical_calls_hit_the_server_once_and_a_corrupt_entry_is_a_miss(serve, tmp_path, caplog):
    s = serve()
    a, b = client(s.url, cache_dir=str(tmp_path)), client(s.url, cache_dir=str(tmp_path))
    assert a.generate(["hi"]) == b.generate(["hi"]) and len(s.calls) == 1
    (entry,) = tmp_path.iterdir()
    assert KEY not in entry.read_text() and entry.name.endswith(".json")
    entry.write_text('{"url": "x", "respo')  # torn
    assert a.generate(["hi"]) == ["you sent Bearer *** to /v1/chat/completions"] and len(s.calls) == 2
    assert "corrupt cache entry" in caplog.text
    assert json.loads(entry.read_text())["response"]["choices"]  # rewritten whole
    entry.write_text('{"response": {"choices": []}}')  # valid JSON, no choice
    a.generate(["hi"])
    assert len(s.calls) == 3 and [p.name for p in tmp_path.iterdir()] == [entry.name]  # no temporary files left


def test_cache_is_keyed_without_the_key(serve, tmp_path, monkeypatch):
    s = serve()
    client(s.url, cache_dir=str(tmp_path)).generate(["hi"])
    monkeypatch.setenv(ENV, "sk-another-key-entirely-000")
    client(s.url, cache_dir=str(tmp_path)).generate(["hi"])
    assert len(s.calls) == 1


def test_client_pickles_without_its_connection_pool(serve):
    import pickle

    s = serve()
    llm = client(s.url)
    llm.generate(["a"])
    copy = pickle.loads(pickle.dumps(llm))
    assert copy.generate(["b"]) == ["you sent Bearer *** to /v1/chat/completions"] and len(s.calls) == 2
    assert KEY.encode() not in pickle.dumps(llm)
    llm.close()


def test_http_llm_options():
    assert http_llm_options("smollm2", "/h") == {}
    opts = http_llm_options("openai:gpt-x", "/h", 3, True)
    assert opts == {"cache_dir": str(Path("/h/cache/llm")), "allow_insecure_http": True, "max_concurrency": 3}


def test_cli_explain_run_store_and_report_never_contain_the_key(serve, tmp_path, capsys, monkeypatch):
    """The explain job through the CLI against a server that echoes the key into every explanation: the run's config,
    metrics, artefacts, the response cache and the HTML report are free of it; a second identical run is answered by
    the store, a new config with the same prompts by the response cache (the server is asked once per prompt)."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertTokenizerFast

    from superalign.cli import main
    from superalign.models.registry import minilm_path

    tok = BertTokenizerFast.from_pretrained(minilm_path())
    ids = tok(["the food was good", "the staff were rude and slow"], add_special_tokens=False)["input_ids"]
    tokens = torch.tensor(ids[0] + ids[1])
    doc = torch.tensor([0] * len(ids[0]) + [1] * len(ids[1]))
    pos = torch.cat([torch.arange(len(ids[0])), torch.arange(len(ids[1]))])
    acts = torch.randn(len(tokens), 4, generator=torch.Generator().manual_seed(0))
    cache = tmp_path / "acts"
    cache.mkdir()
    save_file({"acts": acts, "tokens": tokens, "doc": doc, "pos": pos}, str(cache / "shard_00000.safetensors"))
    (cache / "meta.json").write_text(json.dumps({"model": "minilm", "hook": "layers.1", "d": 4, "tokens": len(tokens),
                                                 "texts": 2, "shards": ["shard_00000.safetensors"]}))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # where the CLI reads the key (there is no key flag)
    s = serve()
    home = tmp_path / "home"
    argv = ["interp", "explain", "--home", str(home), "--progress", "false", "--cache", str(cache),
            "--unit-ids", "0", "1", "--window", "4", "--explainer", f"{s.url}#m"]
    assert main(argv) == 0
    assert main(argv) == 0 and len(s.calls) == 2  # the second run is the stored one
    assert main([*argv, "--n-explain", "9"]) == 0 and len(s.calls) == 2  # same prompts: from the response cache
    assert main(["report", "--home", str(home), "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr()
    with sqlite3.connect(home / "runs.db") as c:
        rows = [json.dumps(list(r)) for r in c.execute("SELECT * FROM runs").fetchall()]
    files = [p.read_text(errors="replace") for p in home.rglob("*") if p.is_file() and p.suffix != ".db"]
    assert len(rows) == 2 and "Bearer ***" in " ".join(rows)  # the echo was recorded, scrubbed
    assert any("cache/llm" in str(p) for p in home.rglob("*.json"))
    assert not leaks(*rows, *files, out.out, out.err, (tmp_path / "r.html").read_text())
    assert not [p for p in home.rglob("*.tmp")]


def test_cli_refuses_plain_http_to_a_remote_host_before_writing(monkeypatch, tmp_path, capsys):
    from superalign.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cache = tmp_path / "acts"
    cache.mkdir()
    import torch
    from safetensors.torch import save_file

    save_file({"acts": torch.ones(3, 2), "tokens": torch.tensor([1000, 1001, 1002]),
               "doc": torch.zeros(3, dtype=torch.long), "pos": torch.arange(3)}, str(cache / "shard_00000.safetensors"))
    (cache / "meta.json").write_text(json.dumps({"model": "minilm", "hook": "layers.1", "d": 2, "tokens": 3,
                                                 "texts": 1, "shards": ["shard_00000.safetensors"]}))
    argv = ["interp", "explain", "--home", str(tmp_path / "h"), "--cache", str(cache), "--unit-ids", "0",
            "--explainer", "http://192.0.2.7:8000/v1#m"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("superalign: error:") and "--allow-insecure-http" in err and KEY not in err
    assert not (tmp_path / "h" / "runs.db").exists()
