"""LLM backends for automated interpretability (explain → simulate → score, Bills et al. 2023).

The explainer needs text from a model; the simulator needs next-token distributions over activation values
("0".."10"). Bills et al. read the simulator's distributions for every token of an excerpt in ONE pass ("all at
once"): the prompt lists each token followed by "\\t" and a value, and the model's prediction right after each "\\t"
is read with teacher forcing (`echo_logprobs`). A local HF model can always do that; a remote API only when its
/completions endpoint echoes prompt log-probs (vLLM does, OpenAI's chat models do not) — otherwise the simulator
falls back to one request per token (`next_token_logprobs`).

Backends: :class:`HFLocalLLM` (any Hugging Face causal LM, names as in :mod:`superalign.models`) and
:class:`OpenAICompatLLM` (any OpenAI-compatible HTTP endpoint, over httpx). :func:`make_llm` picks one
from a spec string.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ..errors import SuperalignError
from ..models.lm import left_pad, load_lm, model_inputs, response_mask, sample
from ..models.placement import resolve_device, resolve_precision
from ..runs.files import write_json_atomic
from ..runs.ledger import add_flops
from .activations import lm_flops

log = logging.getLogger(__name__)

Prompt = str | list[dict]
"""A raw text prompt, or chat messages [{"role": "system"|"user"|"assistant", "content": str}]."""

OPENAI_BASE_URL = "https://api.openai.com/v1"
TOP_LOGPROBS = 20  # the most OpenAI's chat endpoint returns (and vLLM's default cap)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")

T = TypeVar("T")
R = TypeVar("R")


class LogprobsUnavailable(SuperalignError):
    """The backend cannot give the log-probs asked for (the message names a backend that can)."""


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """``text`` up to the earliest occurrence of any stop string (servers may stop late or ignore extra stops)."""
    cuts = [i for i in (text.find(s) for s in stop or [] if s) if i >= 0]
    return text[:min(cuts)] if cuts else text


def _check_candidates(candidates: list[str]) -> None:
    if not candidates or len(set(candidates)) != len(candidates):
        raise SuperalignError(f"candidates must be distinct and non-empty, got {candidates!r}",
                              'pass distinct strings such as ["0", ..., "9"]')


class LLM(ABC):
    """A language model the explainer and simulator can call. Prompts are raw text or chat messages."""

    name: str
    supports_next_token_logprobs: bool = False
    """can give next-token distributions after a prompt"""
    supports_echo_logprobs: bool = False
    """can give next-token distributions at many positions of one prompt in one pass"""

    @abstractmethod
    def generate(self, prompts: list[Prompt], max_new_tokens: int = 128, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: int = 0) -> list[str]:
        """One completion per prompt, greedy when temperature == 0, without the prompt, cut at the first stop
        string. Chat messages get the model's chat template (HF) or the chat endpoint (HTTP)."""

    def next_token_logprobs(self, prompts: list[Prompt], candidates: list[str]) -> np.ndarray:
        """[len(prompts), len(candidates)] log P(next token = candidate | prompt); -inf where unknown."""
        raise LogprobsUnavailable(f"{self.name} cannot give next-token log-probs",
                                  "use a local model (hf:<id|path>, smollm2) or an endpoint that returns logprobs")

    def echo_logprobs(self, prompt: str, offsets: list[int], candidates: list[str]) -> np.ndarray:
        """[len(offsets), len(candidates)]: the next-token log-probs of the candidates given ``prompt[:o]`` for each
        character offset o, all from one teacher-forced pass over ``prompt``. Offsets must be token boundaries."""
        raise LogprobsUnavailable(f"{self.name} cannot give echo (prompt) log-probs",
                                  "use a local model (hf:<id|path>, smollm2) or an OpenAI-compatible /completions "
                                  "endpoint with echo support (e.g. vLLM) and echo=True")

    def is_single_token(self, text: str) -> bool:
        """Whether ``text`` can be a candidate of the logprob methods (remote backends cannot tell: True)."""
        return True

    def format_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The raw string the model sees for chat messages, so callers can append assistant text and score it with
        :meth:`echo_logprobs`. Without a chat template: one "role: content" line per message."""
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "")


# ----------------------------------------------------------------------------------------------- local HF models


class HFLocalLLM(LLM):
    """Any Hugging Face causal LM, run locally: ``smollm2``, ``testbed``, ``hf:<hub id or path>`` or a local folder.

    Prompts are encoded as in RLHF (:func:`superalign.models.lm.encode_prompts`): a tokenizer without a BOS token
    (GPT-2 style) gets EOS in front, as in pretraining. A chat-rendered prompt that already starts with the BOS
    text gets no second one. Batches are left-padded with positions taken from the attention mask.

    ``watch`` (a :class:`~superalign.models.watch.LinearMonitor`, e.g. ``LinearMonitor.load(dir)`` of a monitor
    saved by ``superalign monitor watch``): scores every completion as :meth:`generate` samples it; after each call,
    ``monitor_scores`` holds one score per prompt (and ``monitor_flags`` whether it is above the monitor's threshold,
    when it has one), ``generated_tokens`` the tokens sampled per prompt up to and including EOS (the tokens
    scored)."""

    supports_next_token_logprobs = True
    supports_echo_logprobs = True

    def __init__(self, model: str, device: str = "auto", dtype: torch.dtype | str | None = "auto", batch_size: int = 8,
                 trust_remote_code: bool = False, max_length: int | None = None, watch=None):
        dev = resolve_device(device)  # 'auto' → a GPU when there is one
        # inference only: the weights load directly in the precision ('auto': bf16 on a GPU, fp32 on the CPU)
        precision = dtype if isinstance(dtype, torch.dtype) else resolve_precision(dtype, dev)
        tok, lm = load_lm(model, trust_remote_code=trust_remote_code, dtype=precision, device=dev)
        self._setup(tok, lm, model, str(dev), batch_size, max_length, watch)

    @classmethod
    def from_model(cls, tok, model, name: str = "custom", device: str | None = None, batch_size: int = 8,
                   max_length: int | None = None, watch=None) -> HFLocalLLM:
        """Wrap an already-loaded (tokenizer, causal LM) pair; the model is put in eval mode."""
        self = cls.__new__(cls)
        self._setup(tok, model, name, device or str(next(model.parameters()).device), batch_size, max_length, watch)
        return self

    def _setup(self, tok, model, name: str, device: str, batch_size: int, max_length: int | None,
               watch=None) -> None:
        if batch_size < 1:
            raise SuperalignError(f"batch_size must be >= 1, got {batch_size}", "pass batch_size=8")
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise SuperalignError(f"tokenizer of {name} has neither a pad nor an EOS token", "set tok.pad_token")
        self.tok, self.name, self.batch_size, self.pad_id = tok, name, batch_size, pad
        self._echo_kv = None  # (token ids, KV cache) of the last echo prompt
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()  # eval = dropout off: deterministic log-probs
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        eos = model.generation_config.eos_token_id  # chat models often end turns with their own token(s)
        self.eos_ids = sorted({tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})
        if watch is not None:
            from ..monitor.runtime import check_monitor_on

            check_monitor_on(getattr(watch, "monitor", watch), model)
        self.watch = watch
        self.monitor_scores = self.monitor_flags = self.generated_tokens = None

    def __repr__(self) -> str:
        return f"HFLocalLLM({self.name!r}, device={str(self.device)!r})"

    def format_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return super().format_chat(messages, add_generation_prompt)

    def _render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list):
            return self.format_chat(prompt)
        raise SuperalignError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}",
                              'pass "text" or [{"role": "user", "content": "text"}]')

    def _encode(self, text: str, with_offsets: bool = False,
                reserve: int = 0) -> tuple[list[int], list[tuple[int, int]]]:
        """(token ids, character spans of the tokens; (0, 0) for added special tokens). ``reserve`` positions are
        kept free for generated tokens."""
        bos = self.tok.bos_token
        enc = self.tok(text, add_special_tokens=not (bos and text.startswith(bos)),
                       return_offsets_mapping=with_offsets)
        ids, spans = list(enc["input_ids"]), [tuple(s) for s in enc.get("offset_mapping", [])]
        if not ids or (self.tok.bos_token_id is None and ids[0] != self.tok.eos_token_id):
            ids = [self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id] + ids
            spans = [(0, 0)] + spans
        if self.max_length and len(ids) + reserve > self.max_length:
            raise SuperalignError(f"prompt of {len(ids)} tokens (+{reserve} to generate) is longer than {self.name}'s "
                                  f"limit {self.max_length}: {text[:60]!r}",
                                  "shorten the prompt (fewer or shorter examples) or max_new_tokens")
        return ids, spans

    def _candidate_ids(self, candidates: list[str]) -> list[int]:
        """Token id of each candidate. A string the tokenizer splits is still accepted when it is a vocabulary entry
        (SentencePiece encodes "7" as "▁" "7", but "7" after a "\\t" is the single token "7")."""
        _check_candidates(candidates)
        vocab, out = None, []
        for c in candidates:
            ids = self.tok.encode(c, add_special_tokens=False)
            if len(ids) != 1:
                vocab = vocab or self.tok.get_vocab()
                if c not in vocab:
                    raise SuperalignError(f"candidate {c!r} is not a single token of {self.name} (it is "
                                          f"{self.tok.convert_ids_to_tokens(ids)})",
                                          'use single-token candidates, e.g. "0".."9"')
                ids = [vocab[c]]
            out.append(ids[0])
        return out

    def is_single_token(self, text: str) -> bool:
        try:
            self._candidate_ids([text])
            return True
        except SuperalignError:
            return False

    def _batches(self, seqs: list[list[int]]) -> list[list[int]]:
        """Index batches of similar length (less padding), longest first so that running out of memory shows at once."""
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        return [order[b:b + self.batch_size] for b in range(0, len(order), self.batch_size)]

    @torch.inference_mode()
    def generate(self, prompts: list[Prompt], max_new_tokens: int = 128, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: int = 0) -> list[str]:
        """Batched sampling with a KV cache on the model's device (:func:`superalign.models.lm.sample`), cut at the
        first EOS and stop string. Sampling is plain softmax(logits / temperature) (no top-k/top-p). With
        temperature > 0 the samples depend on ``seed`` and on how prompts fall into batches."""
        seqs = [self._encode(self._render(p), reserve=max_new_tokens)[0] for p in prompts]
        # a row stops at the tokenizer's EOS; other end-of-turn ids (chat models) are cut afterwards
        eos = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.eos_ids[0]
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out, rows = [""] * len(prompts), {}
        scores, n_tok = np.full(len(prompts), np.nan), np.zeros(len(prompts), dtype=np.int64)
        for idx in self._batches(seqs):
            ids, mask = left_pad([seqs[i] for i in idx], self.pad_id)
            resp = sample(self.model, ids.to(self.device), mask.to(self.device), max_new_tokens, temperature,
                          eos_id=eos, pad_id=self.pad_id, generator=gen, watch=self.watch)
            n_tok[idx] = response_mask(resp, eos, self.pad_id).sum(1).cpu().numpy()
            if self.watch is not None:  # the monitor saw the tokens up to the sampler's EOS (see the class doc)
                scores[idx] = self.watch.end().numpy()
            add_flops(lm_flops(self.model, ids.numel() + resp.numel()), tokens=ids.numel() + resp.numel(),
                      stage="llm")
            rows.update(zip(idx, resp.tolist(), strict=True))  # one copy to the host per batch
        for i, row in rows.items():
            end = next((k for k, t in enumerate(row) if t in self.eos_ids), len(row))
            out[i] = cut_at_stop(self.tok.decode(row[:end], skip_special_tokens=True), stop)
        self.generated_tokens = n_tok
        self.monitor_scores = scores if self.watch is not None else None
        threshold = getattr(getattr(self.watch, "monitor", self.watch), "threshold", None)
        self.monitor_flags = scores > threshold if self.monitor_scores is not None and threshold is not None else None
        return out

    @torch.inference_mode()
    def next_token_logprobs(self, prompts: list[Prompt], candidates: list[str]) -> np.ndarray:
        cand = self._candidate_ids(candidates)
        seqs = [self._encode(self._render(p))[0] for p in prompts]
        out = np.empty((len(prompts), len(cand)), dtype=np.float64)
        for idx in self._batches(seqs):
            ids, mask = left_pad([seqs[i] for i in idx], self.pad_id)
            logits = self.model(**model_inputs(ids.to(self.device), mask.to(self.device)), logits_to_keep=1).logits
            add_flops(lm_flops(self.model, ids.numel(), len(idx)), tokens=ids.numel(), stage="llm")
            out[idx] = logits[:, -1].float().log_softmax(-1)[:, cand].cpu().double().numpy()
        return out

    @torch.inference_mode()
    def echo_logprobs(self, prompt: str, offsets: list[int], candidates: list[str]) -> np.ndarray:
        """One forward pass over ``prompt``; the logits at the last token of ``prompt[:o]`` are the next-token
        distribution given that prefix. Equals :meth:`next_token_logprobs` on the prefixes when the tokenizer
        splits the prefix as it splits the whole prompt, which holds at separators such as "\\t"."""
        cand = self._candidate_ids(candidates)
        ids, spans = self._encode(prompt, with_offsets=True)
        rows = [_prefix_tokens(prompt, spans, o) - 1 for o in offsets]
        if not rows:
            return np.zeros((0, len(cand)))
        # Simulation prompts share a long head (instructions, worked example, explanation): keep the KV cache of
        # the previous prompt, crop it to the tokens the two prompts share and run only the rest.
        from transformers import DynamicCache

        prev_ids, kv = self._echo_kv if self._echo_kv is not None else ([], None)
        n = next((i for i, (a, b) in enumerate(zip(prev_ids, ids)) if a != b), min(len(prev_ids), len(ids)))
        n = min(n, min(rows))  # the logits we need must come out of this pass
        if kv is None or n == 0:
            kv, n = DynamicCache(), 0
        elif kv.get_seq_length() > n:
            kv.crop(n - kv.get_seq_length())  # a negative count drops that many tokens (transformers 4.x and 5.x)
        keep = torch.tensor([r - n for r in rows], dtype=torch.long, device=self.device)
        logits = self.model(input_ids=torch.tensor([ids[n:]], device=self.device), past_key_values=kv,
                            use_cache=True, logits_to_keep=keep).logits[0]
        self._echo_kv = (ids, kv)
        add_flops(lm_flops(self.model, len(ids) - n, len(rows)), tokens=len(ids) - n, stage="llm")
        return logits.float().log_softmax(-1)[:, cand].cpu().double().numpy().reshape(len(offsets), len(cand))


def _prefix_tokens(text: str, spans: list[tuple[int, int]], offset: int) -> int:
    """How many tokens make up ``text[:offset]``; an error when a token straddles the offset."""
    if not 0 <= offset <= len(text):
        raise SuperalignError(f"offset {offset} is outside the prompt (length {len(text)})", "pass 0 <= offset <= len")
    inside = next(((s, e) for s, e in spans if s < offset < e), None)
    if inside is not None:
        raise SuperalignError(f"offset {offset} is not at a token boundary: it falls inside the token "
                              f"{text[inside[0]:inside[1]]!r}", 'pass offsets right after a separator such as "\\t"')
    n = sum(e <= offset for _, e in spans)
    if n == 0:
        raise SuperalignError(f"offset {offset} has no token before it (the tokenizer adds no BOS)",
                              "pass offsets after the start of the prompt")
    return n


# ----------------------------------------------------------------------------------------------- HTTP endpoints

# The HTTP client is httpx rather than urllib: a thread-safe pooled client (one per endpoint, shared by the
# ``max_concurrency`` worker threads), per-request timeouts, and redirects that are NOT followed on their own.
# urllib's default opener follows redirects to any host and re-sends the headers it was given, the Authorization
# header included; here each redirect passes :meth:`OpenAICompatLLM._post_following`, which never lets the key leave
# the origin it was configured for. httpx is imported on first use so that the local (HF) backend works in
# an environment installed before httpx became a dependency.

REDACTED = "***"
MAX_REDIRECTS = 5
MIN_SCRUB_ANYWHERE = 8
"""keys at least this long are masked wherever they occur; shorter ones (placeholders such as vLLM's "EMPTY") only
as whole words, so that a one-letter placeholder cannot mangle every generated text"""


def is_loopback(host: str | None) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ::1: traffic that never leaves the machine."""
    import ipaddress

    host = (host or "").strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def scrub_key(value, key: str | None):
    """``value`` (a string, bytes or parsed JSON: dicts, lists, keys included) with every occurrence of ``key``
    replaced by ``***``. Applied to everything a server returns before it is cached, logged, raised or handed to a
    caller, so that a server echoing the Authorization header cannot put the key in a run store or report."""
    if not key:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        if len(key) >= MIN_SCRUB_ANYWHERE:
            return value.replace(key, REDACTED)
        import re

        return re.sub(rf"(?<![\w-]){re.escape(key)}(?![\w-])", REDACTED, value)
    if isinstance(value, list):
        return [scrub_key(v, key) for v in value]
    if isinstance(value, dict):
        return {scrub_key(k, key): scrub_key(v, key) for k, v in value.items()}
    return value


def _origin(url) -> tuple[str, str, int | None]:
    """(scheme, host, port) of an httpx.URL, default ports filled in: what must match for the key to go along."""
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


class OpenAICompatLLM(LLM):
    """Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama...) over httpx.

    One HTTP request per prompt, at most ``max_concurrency`` in flight; 429/5xx/connection errors are retried with
    exponential backoff and jitter (``Retry-After`` honoured), other 4xx fail at once with the server's message.
    With ``cache_dir`` every response is stored under the sha256 of its URL and JSON body (never the key), written
    atomically; an unreadable entry is a miss. The API key is read from ``$api_key_env`` at each request and never
    stored on the object, logged, cached or put in an error message: whatever a server returns is scrubbed of it.

    Key hygiene: a redirect to another scheme, host or port is refused while a key is set (same-origin redirects are
    followed); a plain ``http://`` base URL to a non-loopback host is refused while a key is set unless
    ``allow_insecure_http``; credentials inside the URL (``user:pass@``) are refused, since the URL is part of the
    run's recorded config."""

    supports_next_token_logprobs = True
    backoff_s = 1.0
    """first retry waits about this long (x0.5..1.5 jitter), doubling each retry"""

    def __init__(self, model: str, base_url: str = OPENAI_BASE_URL, api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 4, max_retries: int = 5, timeout_s: float = 60, cache_dir: str | None = None,
                 use_chat: bool = True, echo: bool = False, allow_insecure_http: bool = False):
        try:
            url = urllib.parse.urlsplit(base_url)
            port = url.port
        except ValueError:
            url, port = None, None
        if url is None or url.scheme not in ("http", "https") or not url.hostname or not model:
            raise SuperalignError(f"bad endpoint {_redact_userinfo(base_url)!r} / model {model!r}",
                                  "pass a model name and a base_url like http://localhost:8000/v1")
        if url.username is not None or url.password is not None:
            # the spec is recorded in the run store's config and printed in reports: no secret may ride in it
            raise SuperalignError(f"the endpoint URL {_redact_userinfo(base_url)!r} carries credentials (user:pass@)",
                                  f"drop them from the URL and put the key in ${api_key_env}")
        if max_concurrency < 1 or max_retries < 0:
            raise SuperalignError(f"max_concurrency={max_concurrency}, max_retries={max_retries}",
                                  "use max_concurrency >= 1 and max_retries >= 0")
        host = url.hostname + (f":{port}" if port else "")
        self.model, self.base_url, self.name = model, base_url.rstrip("/"), f"{model}@{host}"
        self.api_key_env, self.max_concurrency, self.max_retries, self.timeout_s = (api_key_env, max_concurrency,
                                                                                    max_retries, timeout_s)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.use_chat, self.echo = use_chat, echo
        self.supports_echo_logprobs = echo
        self.allow_insecure_http = allow_insecure_http
        self._scheme, self._host = url.scheme, url.hostname
        self._http = None  # the httpx.Client, made on first use
        self._http_lock = threading.Lock()
        key = os.environ.get(api_key_env)
        if not key and not is_loopback(url.hostname):
            raise SuperalignError(f"no API key for {self.name}: the environment variable {api_key_env} is not set",
                                  f"export {api_key_env}=<your key> (only loopback endpoints may go without)")
        self._check_transport(key)

    def __repr__(self) -> str:
        return f"OpenAICompatLLM({self.name!r}, use_chat={self.use_chat}, echo={self.echo})"

    def __getstate__(self) -> dict:
        # picklable (worker processes, copies) without the connection pool and its lock, which are per process
        return {k: v for k, v in self.__dict__.items() if k not in ("_http", "_http_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _http=None, _http_lock=threading.Lock())

    def close(self) -> None:
        """Close the pooled connections (a later request opens new ones)."""
        with self._http_lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _check_transport(self, key: str | None) -> None:
        if key and self._scheme == "http" and not is_loopback(self._host) and not self.allow_insecure_http:
            raise SuperalignError(f"{self.name}: refusing to send the API key in ${self.api_key_env} over plain "
                                  "http:// to a host that is not loopback (anyone on the path could read it)",
                                  "use an https:// base URL, or pass allow_insecure_http=True (--allow-insecure-http) "
                                  "if the network is trusted")

    def _client(self):
        import httpx

        with self._http_lock:
            if self._http is None:
                self._http = httpx.Client(timeout=self.timeout_s, follow_redirects=False,
                                          limits=httpx.Limits(max_connections=self.max_concurrency))
            return self._http

    # -- requests

    def _request(self, prompt: Prompt, params: dict, logprobs: bool = False) -> tuple[str, dict]:
        """(path, body): chat messages, and raw text when ``use_chat``, go to /chat/completions (raw text as one user
        message); raw text otherwise to /completions."""
        if isinstance(prompt, str) and not self.use_chat:
            return "/completions", {"model": self.model, "prompt": prompt, **params,
                                    **({"logprobs": TOP_LOGPROBS} if logprobs else {})}
        if not isinstance(prompt, (str, list)):
            raise SuperalignError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}",
                                  'pass "text" or [{"role": "user", "content": "text"}]')
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return "/chat/completions", {"model": self.model, "messages": messages, **params,
                                     **({"logprobs": True, "top_logprobs": TOP_LOGPROBS} if logprobs else {})}

    def _post(self, path: str, body: dict) -> dict:
        """The first choice of the JSON response (from the cache when there)."""
        url = self.base_url + path
        entry = None
        if self.cache_dir is not None:
            # keyed by what is asked, never by who asks: the key is not part of the digest or the entry
            digest = hashlib.sha256(json.dumps({"url": url, "body": body}, sort_keys=True).encode()).hexdigest()
            entry = self.cache_dir / f"{digest}.json"
            hit = self._read_cache(entry)
            if hit is not None:
                return hit
        resp = self._send(url, path, json.dumps(body).encode())
        choice = _first_choice(resp, self.name)
        if entry is not None:
            key = os.environ.get(self.api_key_env)  # resp is scrubbed already (by _send)
            write_json_atomic(entry, {**scrub_key({"url": url, "request": body}, key), "response": resp})
        return choice

    def _read_cache(self, entry: Path) -> dict | None:
        """The cached first choice, or None on a miss. A torn or corrupt entry (a crash on a filesystem without
        atomic rename, a hand edit) is a miss: warned about, deleted and fetched again."""
        try:
            raw = entry.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("%s: cannot read cache entry %s (%s): asking the server", self.name, entry.name, e)
            return None
        try:
            return _first_choice(json.loads(raw)["response"], self.name)
        except (ValueError, KeyError, TypeError, SuperalignError):
            log.warning("%s: corrupt cache entry %s deleted: asking the server again", self.name, entry.name)
            entry.unlink(missing_ok=True)
            return None

    def _send(self, url: str, path: str, data: bytes) -> dict:
        """The parsed JSON response, scrubbed of the key, after retries."""
        import httpx

        attempt = 0
        while True:
            key = os.environ.get(self.api_key_env) or None  # read at each request: never kept on the object
            self._check_transport(key)
            retry_after = None
            try:
                r = self._post_following(url, path, data, key)
            except httpx.TransportError as e:  # refused/reset connections, timeouts
                problem = scrub_key(f"{type(e).__name__}: {e}", key)
            except SuperalignError:
                raise
            except Exception as e:  # anything else httpx raises (invalid URL, decoding): one scrubbed line
                raise SuperalignError(f"{self.name}: {path} failed: {_one_line(scrub_key(str(e), key))}",
                                      "check base_url") from None
            else:
                if r.is_success:
                    try:
                        return scrub_key(json.loads(r.content), key)
                    except ValueError:
                        raise SuperalignError(f"{self.name}: {path} returned invalid JSON: "
                                              f"{_one_line(scrub_key(r.content, key))}",
                                              "check that base_url points at an OpenAI-compatible /v1 API") from None
                msg = _server_message(r, key)
                if r.status_code != 429 and r.status_code < 500:
                    raise SuperalignError(f"{self.name}: HTTP {r.status_code} from {path}: {msg}",
                                          _fix_for(r.status_code, self))
                problem, retry_after = f"HTTP {r.status_code}: {msg}", _retry_after(r.headers.get("Retry-After"))
            if attempt == self.max_retries:
                raise SuperalignError(f"{self.name}: {path} failed after {attempt + 1} attempts ({problem})",
                                      "check that the server is up, or raise max_retries / timeout_s")
            delay = retry_after if retry_after is not None else self.backoff_s * 2 ** attempt * random.uniform(.5, 1.5)
            log.warning("%s: %s; retry %d/%d in %.1f s", self.name, problem, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
            attempt += 1

    def _post_following(self, url: str, path: str, data: bytes, key: str | None):
        """POST ``data``, following at most MAX_REDIRECTS redirects by hand (method and body kept, as 307/308 ask;
        an API endpoint has nothing to GET). The key goes only to the origin it was configured for."""
        import httpx

        client = self._client()
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
            r = client.post(target, content=data, headers=headers)
            if not r.is_redirect:
                return r
            nxt = target.join(r.headers["Location"])
            if key and _origin(nxt) != _origin(target):
                scheme, host, port = _origin(nxt)
                raise SuperalignError(f"{self.name}: {path} was redirected (HTTP {r.status_code}) to another origin "
                                      f"{scheme}://{host}:{port}; refusing to send the API key there",
                                      "set base_url to the endpoint's final address if you trust it")
            target = nxt
        raise SuperalignError(f"{self.name}: {path} redirected more than {MAX_REDIRECTS} times",
                              "set base_url to the endpoint's final address")

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """fn over items with at most ``max_concurrency`` requests in flight; the first error cancels the rest."""
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="llm")
        try:
            return list(pool.map(fn, items))
        finally:
            pool.shutdown(cancel_futures=True)

    # -- the LLM interface

    def generate(self, prompts: list[Prompt], max_new_tokens: int = 128, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: int = 0) -> list[str]:
        """Stop strings go to the server (OpenAI takes at most 4) and are applied again to the returned text."""
        params = {"max_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
                  **({"stop": stop[:4]} if stop else {})}

        def one(prompt: Prompt) -> str:
            path, body = self._request(prompt, params)
            choice = self._post(path, body)
            text = (choice.get("message") or {}).get("content") if path == "/chat/completions" else choice.get("text")
            return cut_at_stop(text or "", stop)

        return self._map(one, prompts)

    def next_token_logprobs(self, prompts: list[Prompt], candidates: list[str]) -> np.ndarray:
        """One token with the top-20 log-probs. A returned token counts for the candidate it equals after
        stripping leading whitespace (" 7" and "7" both count for "7", their probabilities summed); a candidate
        outside the top 20 gets -inf."""
        _check_candidates(candidates)
        params = {"max_tokens": 1, "temperature": 0.0}

        def one(prompt: Prompt) -> np.ndarray:
            path, body = self._request(prompt, params, logprobs=True)
            lp = self._post(path, body).get("logprobs") or {}
            try:
                if path == "/chat/completions":
                    top = [(t["token"], t["logprob"]) for t in lp["content"][0]["top_logprobs"]]
                else:
                    top = list(lp["top_logprobs"][0].items())
            except (KeyError, IndexError, TypeError):
                raise SuperalignError(f"{self.name} returned no top log-probs on {path}",
                                      "use a server/model that supports logprobs (e.g. vLLM, OpenAI chat models)"
                                      ) from None
            return _match(top, candidates)

        return np.array(self._map(one, prompts), dtype=np.float64).reshape(len(prompts), len(candidates))

    def echo_logprobs(self, prompt: str, offsets: list[int], candidates: list[str]) -> np.ndarray:
        """POST /completions with echo=true: the server returns, for every prompt token, its character offset and
        the top-20 distribution it was predicted from. The one generated token (max_tokens=1; some servers reject
        0) answers the offset len(prompt)."""
        if not self.echo:
            return super().echo_logprobs(prompt, offsets, candidates)
        _check_candidates(candidates)
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": True,
                "logprobs": TOP_LOGPROBS}
        lp = self._post("/completions", body).get("logprobs") or {}
        if not lp.get("text_offset") or lp.get("top_logprobs") is None:
            raise LogprobsUnavailable(f"{self.name} returned no echo log-probs",
                                      "use a server whose /completions supports echo with logprobs (e.g. vLLM)")
        first: dict[int, int] = {}
        for i, o in enumerate(lp["text_offset"]):
            first.setdefault(o, i)
        rows = []
        for o in offsets:
            i = first.get(o)
            if i is None or lp["top_logprobs"][i] is None:
                raise SuperalignError(f"offset {o} is not at a token boundary of {self.name}'s tokenization "
                                      "(or is the first token)", 'pass offsets right after a separator such as "\\t"')
            rows.append(_match(list(lp["top_logprobs"][i].items()), candidates))
        return np.array(rows, dtype=np.float64).reshape(len(offsets), len(candidates))


def _match(top: list[tuple[str, float]], candidates: list[str]) -> np.ndarray:
    out = np.full(len(candidates), -np.inf)
    index = {c: i for i, c in enumerate(candidates)}
    for token, logprob in top:
        i = index.get(token.lstrip())
        if i is not None:
            out[i] = np.logaddexp(out[i], logprob)
    return out


def _first_choice(resp: dict, name: str) -> dict:
    try:
        return resp["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise SuperalignError(f"{name} returned no choices: {str(resp)[:200]}",
                              "check that base_url points at an OpenAI-compatible /v1 API") from None


def _one_line(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _scrub(text: str | bytes, key: str | None, limit: int = 300) -> str:
    """One line of at most ``limit`` characters, with the API key (should a server quote it) masked."""
    return _one_line(scrub_key(text, key), limit)


def _redact_userinfo(url: str) -> str:
    """``url`` with any ``user:pass@`` replaced, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    return f"{scheme}://{REDACTED}@{netloc.rpartition('@')[2]}{slash}{tail}" if "@" in netloc else url


def _server_message(r, key: str | None) -> str:
    """The error message of a non-2xx response, scrubbed of the key, on one line."""
    raw = r.content[:4000]
    try:
        err = json.loads(raw)
        err = err.get("error", err) if isinstance(err, dict) else err
        msg = err.get("message", err) if isinstance(err, dict) else err
    except ValueError:
        msg = raw
    return _scrub(msg if isinstance(msg, (str, bytes)) else json.dumps(msg), key) or r.reason_phrase


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (capped at 5 min); None when absent or an HTTP date."""
    try:
        return min(max(float(value), 0.0), 300.0) if value is not None else None
    except ValueError:
        return None


def _fix_for(code: int, llm: OpenAICompatLLM) -> str:
    if code in (401, 403):
        return f"check the API key in ${llm.api_key_env}"
    if code == 404:
        return f"check the model name {llm.model!r} and that base_url {llm.base_url} ends in /v1"
    if 300 <= code < 400:
        return "set base_url to the endpoint's final address"
    return "check the request parameters (this server may not support logprobs, echo or seed)"


# ----------------------------------------------------------------------------------------------- by name


def is_http_spec(spec: str) -> bool:
    """Whether ``spec`` names an HTTP endpoint (``openai:<model>`` or ``http(s)://…#<model>``)."""
    return spec.startswith(("openai:", "http://", "https://"))


def http_llm_options(spec: str, home: str | Path | None = None, max_concurrency: int | None = None,
                     allow_insecure_http: bool = False) -> dict:
    """The keyword arguments the CLI jobs give :func:`make_llm` for ``spec``: for HTTP endpoints the concurrency,
    the insecure-http permission and the response cache at ``<run store>/cache/llm`` (README: a rerun makes no
    request it made before); nothing for local models."""
    if not is_http_spec(spec):
        return {}
    from ..runs.store import default_home

    root = Path(home).expanduser() if home else default_home()
    return {"cache_dir": str(root / "cache" / "llm"), "allow_insecure_http": allow_insecure_http,
            **({"max_concurrency": max_concurrency} if max_concurrency is not None else {})}


def make_llm(spec: str, **kw) -> LLM:
    """An LLM from a spec: ``hf:<id|path>``, ``smollm2``, ``testbed`` or a local folder (HFLocalLLM);
    ``openai:<model>`` (OpenAICompatLLM at ``$OPENAI_BASE_URL`` or OpenAI); ``http(s)://host:port/v1#<model>``
    (OpenAICompatLLM at that URL). ``kw`` go to the backend."""
    if spec.startswith("openai:") and spec[7:]:
        return OpenAICompatLLM(spec[7:], **{"base_url": os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL, **kw})
    if spec.startswith(("http://", "https://")) and spec.partition("#")[2]:
        base_url, _, model = spec.partition("#")
        return OpenAICompatLLM(model, base_url=base_url, **kw)
    if spec in ("smollm2", "testbed") or spec.startswith("hf:") or Path(spec).expanduser().is_dir():
        return HFLocalLLM(spec, **kw)
    raise SuperalignError(f"unknown LLM {_redact_userinfo(spec)!r}",
                          "use hf:<hub id or path>, smollm2, testbed, a model folder, openai:<model> or "
                          "http://host:port/v1#<model>")
