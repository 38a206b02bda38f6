"""Pooled per-layer features of a transformer, cached by content.

One forward pass with ``output_hidden_states`` gives every layer at once, so a whole depth ladder (minilm-l1 …
minilm-l6) costs one pass. Texts are batched by length (sorted) so little compute goes to padding. Features are
cached per (model fingerprint, max_length, pooling) and per text (sha256 of the text), in safetensors shards:
a later call only encodes the texts it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from ..errors import SuperalignError
from .registry import ModelSpec, is_causal_config, load_config, load_hf, model_params


@dataclass
class EncodeStats:
    n_new: int = 0
    n_cached: int = 0
    tokens: int = 0
    flops: float = 0.0
    wall_s: float = 0.0
    device_s: float = 0.0
    cpu_s: float = 0.0
    n_truncated: int = 0
    """Newly encoded texts longer than max_length tokens (cut to max_length)."""


class TruncationWarning(UserWarning):
    """Texts longer than --max-length tokens were cut: the model saw only their first max_length tokens."""


def warn_truncated(model: str, n_truncated: int, n: int, max_length: int, where: str) -> None:
    if n_truncated:
        warnings.warn(f"{where}: {n_truncated} of {n} texts are longer than --max-length {max_length} tokens for "
                      f"{model} and were truncated (raise --max-length to keep them whole)", TruncationWarning,
                      stacklevel=3)


def token_lengths(tok, texts: list[str]) -> np.ndarray:
    """Tokens per text with special tokens and no truncation (what truncation=True would cut above max_length)."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    ids = tok(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return np.array([len(x) for x in ids], dtype=np.int64)


_TOKENIZERS: dict[tuple[str, str], object] = {}


def count_truncated(spec: ModelSpec, texts: list[str], max_length: int, trust_remote_code: bool = False) -> np.ndarray:
    """Boolean per text: longer than ``max_length`` tokens for ``spec``'s tokenizer (loaded once per process)."""
    key = (spec.path, spec.fingerprint())
    if key not in _TOKENIZERS:
        from transformers import AutoTokenizer

        from .registry import _hf_call
        _TOKENIZERS[key] = _hf_call(spec, AutoTokenizer.from_pretrained, trust_remote_code)
    return token_lengths(_TOKENIZERS[key], texts) > max_length


def text_digest(t: str) -> bytes:
    return hashlib.sha256(t.encode("utf-8")).digest()[:16]


def pool(hidden: torch.Tensor, mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Mean over real tokens for encoders; the last real token for causal LMs (works with left or right pad)."""
    if causal:
        pos = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * pos).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class FeatureStore:
    """Content-addressed per-text features for one (model, max_length) pair, as safetensors shards."""

    def __init__(self, root: Path):
        self.root = root
        self.index: dict[bytes, tuple[int, int]] = {}
        self.shards: list[np.ndarray] = []
        if root.is_dir():
            for f in sorted(root.glob("*.safetensors")):
                d = load_file(str(f))
                k = len(self.shards)
                self.shards.append(d["feats"])
                for i, h in enumerate(d["digest"]):
                    self.index[h.tobytes()] = (k, i)

    def get(self, digests: list[bytes]) -> np.ndarray:
        rows = [self.shards[k][:, i] for k, i in (self.index[d] for d in digests)]
        return np.stack(rows, axis=1)

    def add(self, digests: list[bytes], feats: np.ndarray) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(b"".join(digests)).hexdigest()[:20]
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        save_file({"feats": np.ascontiguousarray(feats), "digest": np.frombuffer(b"".join(digests), np.uint8)
                   .reshape(len(digests), 16).copy()}, str(tmp))
        os.replace(tmp, self.root / f"{name}.safetensors")  # atomic: a crash never leaves a half shard
        k = len(self.shards)
        self.shards.append(feats)
        for i, d in enumerate(digests):
            self.index[d] = (k, i)


def encode_texts(spec: ModelSpec, texts: list[str], cache_dir: str | Path | None = None, max_length: int = 128,
                 batch_size: int = 64, device: str = "cpu", trust_remote_code: bool = False,
                 progress: bool = True, stats: EncodeStats | None = None, dtype: str = "fp32") -> np.ndarray:
    """Features of every layer: array [n_layers + 1, len(texts), d] (index 0 = embeddings), float32.

    The model runs on ``device`` with its weights in ``dtype`` ('auto' | 'fp32' | 'bf16' | 'fp16'; inference only,
    so no fp32 master copy is needed); features are pooled and kept in float32 either way, and cached per dtype.
    ``spec.layer`` is ignored here: callers slice the layer they need, so the whole ladder shares one pass."""
    if not spec.is_transformer:
        raise SuperalignError(f"model {spec.name!r} has no features", "use a transformer model")
    if not texts:
        raise SuperalignError("no texts to encode", "check the task")
    from .placement import resolve_device, resolve_precision

    device = resolve_device(device)  # also takes a runtime's torch.device ('cpu:0' under Accelerate)
    precision = resolve_precision(dtype, device.type)
    stats = stats if stats is not None else EncodeStats()
    digests = [text_digest(t) for t in texts]
    store = None
    if cache_dir is not None:
        # causal LMs are pooled at the last token (GPT-2 checkpoints were once mean-pooled: never reuse those)
        last_token = is_causal_config(load_config(spec, trust_remote_code))
        # fp32 features keep their old key (a cache from before dtypes existed stays valid)
        key = hashlib.sha256(json.dumps([spec.path, spec.fingerprint(), max_length, "v1"] + ["last-token"] * last_token
                                        + ([precision] if precision != "fp32" else [])).encode()).hexdigest()[:16]
        store = FeatureStore(Path(cache_dir) / "features" / key)
    todo = sorted({d: t for d, t in zip(digests, texts) if store is None or d not in store.index}.items(),
                  key=lambda kv: len(kv[1]))
    stats.n_cached += len(set(digests)) - len(todo)
    if todo:
        full = ModelSpec(spec.name, spec.kind, spec.path, None)
        t0, c0 = time.perf_counter(), time.process_time()
        tok, model, causal = load_hf(full, trust_remote_code=trust_remote_code, dtype=precision)
        model.eval().to(device)
        n_params = model_params(model)
        out = []
        n_trunc = 0
        if causal:
            tok.padding_side = "right"
        bar = tqdm(total=len(todo), desc=f"encode {spec.name}", disable=not progress, unit="text", leave=False)
        with torch.inference_mode():
            for i in range(0, len(todo), batch_size):
                chunk = [t for _, t in todo[i:i + batch_size]]
                b = tok(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
                o = model(**b, output_hidden_states=True)
                mask = b["attention_mask"]
                # only a text that fills max_length may have been cut: re-tokenise just those, uncut, to know
                at_cap = (mask.sum(1) >= max_length).nonzero().flatten().tolist()
                if at_cap:
                    n_trunc += int((token_lengths(tok, [chunk[j] for j in at_cap]) > max_length).sum())
                # pooled in float32 whatever the model's dtype: a bf16 mean over 128 tokens would lose digits
                out.append(torch.stack([pool(h.float(), mask, causal) for h in o.hidden_states]).cpu().numpy())
                stats.tokens += int(mask.numel())
                stats.flops += 2.0 * n_params * int(mask.numel())
                bar.update(len(chunk))
        bar.close()
        stats.n_truncated += n_trunc
        warn_truncated(spec.name, n_trunc, len(todo), max_length, "encode")
        new = np.concatenate(out, axis=1)
        stats.wall_s += time.perf_counter() - t0
        stats.device_s += time.perf_counter() - t0  # the ledger's definition: wall time × devices (one here)
        stats.cpu_s += time.process_time() - c0
        stats.n_new += len(todo)
        new_d = [d for d, _ in todo]
        if store is not None:
            store.add(new_d, new)
            return store.get(digests)
        pos = {d: i for i, d in enumerate(new_d)}
        return new[:, [pos[d] for d in digests]]
    return store.get(digests)  # type: ignore[union-attr]
