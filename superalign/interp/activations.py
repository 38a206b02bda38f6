"""Cache a model's activations at a hook point over a text corpus, streamed to sharded safetensors.

Hook points name the residual stream: ``embeddings`` (the input to block 0) or ``layers.<i>`` (the output of
block i, 0-based) — the same tensors as ``output_hidden_states``, so every HF encoder and causal LM is supported
without model-specific hooks. Each shard holds ``acts`` [tokens, d] (float32 or bfloat16), ``tokens`` (token ids),
``doc`` (index of the text in the corpus) and ``pos`` (position in the text); padding is never stored. A
``meta.json`` (model, hook, d, shard list) is written last, so a half-written cache is never mistaken for a whole one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import SuperalignError


def parse_hook(hook: str, n_layers: int) -> int:
    """Index into ``hidden_states`` for a hook name."""
    if hook == "embeddings":
        return 0
    m = re.fullmatch(r"layers\.(\d+)", hook)
    if not m or not 0 <= int(m.group(1)) < n_layers:
        raise SuperalignError(f"unknown hook point {hook!r} for a model with {n_layers} blocks",
                              f"use embeddings or layers.0 … layers.{n_layers - 1}")
    return int(m.group(1)) + 1


class ActivationCache(NamedTuple):
    acts: torch.Tensor
    """[tokens, d]"""
    tokens: torch.Tensor
    """token id of each row"""
    doc: torch.Tensor
    """corpus index of each row's text"""
    pos: torch.Tensor
    """position of each row in its text"""
    meta: dict
    """model, hook, d, shards"""


@torch.no_grad()
def cache_activations(model, tok, texts: list[str], hook: str, out_dir: str | Path, model_name: str = "",
                      max_length: int = 128, batch_size: int = 32, shard_tokens: int = 262_144,
                      dtype: torch.dtype = torch.float32, progress: bool = True) -> Path:
    """Run ``model`` over ``texts`` and write the hook point's activations (non-padding tokens only)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if not texts or not any(t.strip() for t in texts if isinstance(t, str)):
        raise SuperalignError("the corpus is empty", "pass a file with at least one non-empty text")
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer")
    layer = parse_hook(hook, n_layers)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # length-sorted batches: little padding
    buf: dict[str, list[torch.Tensor]] = {"acts": [], "tokens": [], "doc": [], "pos": []}
    shards, n_buf, total, d = [], 0, 0, None

    def flush():
        nonlocal n_buf
        if not n_buf:
            return
        name = f"shard_{len(shards):05d}.safetensors"
        save_file({k: torch.cat(v).contiguous() for k, v in buf.items()}, str(tmp / name))
        shards.append(name)
        for v in buf.values():
            v.clear()
        n_buf = 0

    for b in tqdm(range(0, len(order), batch_size), desc=f"cache {hook}", disable=not progress):
        idx = order[b:b + batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        out = model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")},
                    output_hidden_states=True)
        h = out.hidden_states[layer]
        mask = enc["attention_mask"].bool()
        d = h.shape[-1]
        pos = (enc["attention_mask"].cumsum(1) - 1)
        buf["acts"].append(h[mask].to(dtype))
        buf["tokens"].append(enc["input_ids"][mask])
        buf["doc"].append(torch.tensor(idx).unsqueeze(1).expand_as(mask)[mask])
        buf["pos"].append(pos[mask])
        n_buf += int(mask.sum())
        total += int(mask.sum())
        if n_buf >= shard_tokens:
            flush()
    flush()
    meta = {"model": model_name, "hook": hook, "d": d, "tokens": total, "texts": len(texts), "shards": shards,
            "max_length": max_length, "dtype": str(dtype).replace("torch.", "")}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def load_activations(folder: str | Path) -> ActivationCache:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise SuperalignError(f"{folder} is not an activation cache (no meta.json)",
                              "create one with superalign interp cache")
    meta = json.loads((folder / "meta.json").read_text())
    parts = [load_file(str(folder / s)) for s in meta["shards"]]
    cat = {k: torch.cat([p[k] for p in parts]) for k in ("acts", "tokens", "doc", "pos")}
    return ActivationCache(cat["acts"], cat["tokens"], cat["doc"], cat["pos"], meta)
