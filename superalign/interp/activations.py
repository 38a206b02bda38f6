"""Cache a model's activations at a hook point over a text corpus, streamed to sharded safetensors.

Hook points name the residual stream: ``embeddings`` (the input to block 0) or ``layers.<i>`` (the output of
block i, 0-based) — the same tensors as ``output_hidden_states``, so every HF encoder and causal LM is supported
without model-specific hooks. Each shard holds ``acts`` [tokens, d] (float32 or bfloat16), ``tokens`` (token ids),
``doc`` (index of the text in the corpus) and ``pos`` (position in the text); padding is never stored. A
``meta.json`` (model, hook, d, shard list) is written last, so a half-written cache is never mistaken for a whole one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import SuperalignError
from ..models.lm import right_pad
from ..models.registry import model_params
from ..runs.files import pid_alive, write_json_atomic
from ..runs.ledger import add_flops

log = logging.getLogger(__name__)


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


@torch.inference_mode()
def cache_activations(model, tok, texts: list[str], hook: str, out_dir: str | Path, model_name: str = "",
                      max_length: int = 128, batch_size: int = 32, shard_tokens: int = 262_144,
                      dtype: torch.dtype = torch.float32, progress: bool = True) -> Path:
    """Run ``model`` over ``texts`` and write the hook point's activations (non-padding tokens only).

    Shards are written as they fill, into ``.<name>.partial`` beside ``out_dir`` with a ``progress.json`` listing the
    finished ones; the folder becomes ``out_dir`` (renamed, atomically) once ``meta.json`` is in it. An interrupted
    run therefore keeps its finished shards, and the next run with the same model, texts and settings resumes after
    the last one: shards end at batch boundaries and batches are the same, so the result equals an uninterrupted
    run's exactly. A file lock beside ``out_dir`` keeps two processes from writing one cache."""
    from filelock import FileLock, Timeout
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if not texts or not any(t.strip() for t in texts if isinstance(t, str)):
        raise SuperalignError("the corpus is empty", "pass a file with at least one non-empty text")
    n_layers = getattr(model.config, "num_hidden_layers", None) or model.config.n_layer
    layer = parse_hook(hook, n_layers)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.with_name(f".{out_dir.name}.partial")
    lock = FileLock(str(out_dir.with_name(f".{out_dir.name}.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SuperalignError(f"another process is writing the activation cache {out_dir}",
                              "wait for it to finish (or stop it), then run again") from None
    try:
        remove_stale_temporaries(out_dir)
        param = next(model.parameters())
        device = param.device
        on_cuda = device.type == "cuda"
        fingerprint = {"model": model_name, "weights": _weights_digest(model), "texts": _texts_digest(texts),
                       "hook": hook, "max_length": max_length, "batch_size": batch_size,
                       "shard_tokens": shard_tokens, "dtype": str(dtype), "model_dtype": str(param.dtype),
                       "order": "token-length"}
        done = _resume(work, fingerprint)
        model.eval()
        # the corpus tokenized once; batches of similar token length (little padding), shortest first
        ids = tok(texts, truncation=True, max_length=max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0  # masked out: any id will do
        flops_per_token = lm_flops(model, 1)  # forward only, every block of the model (no LM head: none runs)
        buf: dict[str, list[torch.Tensor]] = {"acts": [], "tokens": [], "doc": [], "pos": []}
        shards = [s["name"] for s in done["shards"]]
        n_buf, total, d = 0, sum(s["tokens"] for s in done["shards"]), done.get("d")
        first = done["shards"][-1]["end_batch"] if done["shards"] else 0

        def flush(end_batch: int):
            nonlocal n_buf
            if not n_buf:
                return
            if on_cuda:  # the asynchronous copies into pinned memory must have landed: one sync per shard
                torch.cuda.synchronize(device)
            name = f"shard_{len(shards):05d}.safetensors"
            tmp = work / f".{name}.{os.getpid()}.tmp"
            try:
                save_file({k: torch.cat(v).contiguous() for k, v in buf.items()}, str(tmp))
                os.replace(tmp, work / name)  # a shard is listed only once it is whole
            finally:
                tmp.unlink(missing_ok=True)
            shards.append(name)
            done["shards"].append({"name": name, "end_batch": end_batch, "tokens": n_buf})
            done["d"] = d
            write_json_atomic(work / PROGRESS, done, indent=2)
            for v in buf.values():
                v.clear()
            n_buf = 0

        batches = range(0, len(order), batch_size)
        for bi in tqdm(range(first, len(batches)), desc=f"cache {hook}", disable=not progress,
                       initial=first, total=len(batches)):
            idx = order[batches[bi]:batches[bi] + batch_size]
            # right-padded, so positions count from each text's start without position ids
            input_ids, attention_mask = right_pad([ids[i] for i in idx], pad_id)
            mask = attention_mask.bool()  # on the host: which rows to keep is known without asking the device
            keep = mask.reshape(-1).nonzero().squeeze(1)
            n = len(keep)
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if on_cuda:
                inputs = {k: v.pin_memory().to(device, non_blocking=True) for k, v in inputs.items()}
            out = model(**inputs, output_hidden_states=True)
            h = out.hidden_states[layer]
            d = h.shape[-1]
            rows = h.reshape(-1, d).index_select(0, keep.to(device, non_blocking=True)).to(dtype)
            if on_cuda:  # device → pinned host copy, asynchronous: the next batch starts while it runs
                host = torch.empty(rows.shape, dtype=dtype, pin_memory=True)
                host.copy_(rows, non_blocking=True)
                rows = host
            buf["acts"].append(rows)
            buf["tokens"].append(input_ids[mask])
            buf["doc"].append(torch.tensor(idx).unsqueeze(1).expand_as(mask)[mask])
            buf["pos"].append((attention_mask.cumsum(1) - 1)[mask])
            add_flops(flops_per_token * n, tokens=n, stage="cache")
            n_buf += n
            total += n
            if n_buf >= shard_tokens:
                flush(bi + 1)
        flush(len(batches))
        meta = {"model": model_name, "hook": hook, "d": d, "tokens": total, "texts": len(texts), "shards": shards,
                "max_length": max_length, "dtype": str(dtype).replace("torch.", "")}
        write_json_atomic(work / "meta.json", meta, indent=2)
        (work / PROGRESS).unlink()
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
        return out_dir
    finally:
        lock.release()


def lm_flops(model, tokens: int, logits: int | None = None) -> float:
    """Forward FLOPs of a transformer over ``tokens`` positions, ``logits`` of which (default: all) go through the
    output head: 2·(non-embedding parameters)·tokens + 2·(head parameters)·logits. A head tied to the input
    embedding is still a matmul that runs, so it counts; a model without a head (AutoModel) has none."""
    # an encoder's pooler runs on one position per text, not on every token: left out
    body = model_params(model) - sum(p.numel() for n, p in model.named_parameters() if n.startswith("pooler."))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_n = 0
    if head is not None and getattr(head, "weight", None) is not None:
        names = [name for name, p in model.named_parameters() if p is head.weight]
        if not names or any(k in names[0] for k in ("embed", "wte", "wpe")):  # tied: model_params left it out
            head_n = head.weight.numel()
        else:
            body -= head.weight.numel()  # untied: counted by the logits, not by every position
            head_n = head.weight.numel()
    return 2.0 * body * tokens + 2.0 * head_n * (tokens if logits is None else logits)


PROGRESS = "progress.json"
"""in a ``.<name>.partial`` folder: the inputs' fingerprint and the finished shards (name, end batch, tokens)"""


def _weights_digest(model) -> str:
    """sha256 of the model's config and a strided sample of every parameter: a model retrained or swapped under
    the same name does not resume a cache made with another (cheap even for large models)."""
    import hashlib

    h = hashlib.sha256(model.config.to_json_string().encode() if hasattr(model.config, "to_json_string")
                       else b"")
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[::max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()


def _texts_digest(texts: list[str]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()


def _resume(work: Path, fingerprint: dict) -> dict:
    """The progress of an interrupted run with the same inputs in ``work`` (its finished shards checked one by
    one; the first unreadable one and those after it are dropped), or a fresh empty ``work``."""
    state = None
    try:
        state = json.loads((work / PROGRESS).read_text())
        if state.get("fingerprint") != fingerprint or not isinstance(state.get("shards"), list):
            state = None
    except (OSError, ValueError, AttributeError):
        state = None
    if state is None:
        if work.exists():
            if (work / PROGRESS).exists():
                log.warning("%s: the finished shards of an interrupted run with other inputs are discarded", work)
            shutil.rmtree(work)
        work.mkdir(parents=True)
        return {"fingerprint": fingerprint, "shards": []}
    good = []
    for s in state["shards"]:
        problem = shard_problem(work / str(s.get("name")), expect_rows=s.get("tokens"))
        if problem:
            log.warning("%s: finished shard %s is unreadable (%s): recomputing from there", work, s.get("name"),
                        problem)
            break
        good.append(s)
    keep = {s["name"] for s in good} | {PROGRESS}
    for f in work.iterdir():  # shards after a bad one, and any half-written file
        if f.name not in keep:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    state["shards"] = good
    if good:
        log.info("%s: resuming after %d finished shard(s)", work, len(good))
    return state


def shard_problem(path: Path, expect_rows: int | None = None) -> str | None:
    """Why the shard at ``path`` cannot be used (missing, truncated, not safetensors, columns missing or of unequal
    length), or None when it is whole. Reads only the header: safetensors checks it against the file's size."""
    rows, problem = _shard_rows(path)
    if problem is None and expect_rows is not None and rows != expect_rows:
        return f"{rows} rows, expected {expect_rows}"
    return problem


def _shard_rows(path: Path) -> tuple[int, str | None]:
    """(rows, None) for a whole shard, (0, why not) otherwise; see :func:`shard_problem`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if not {"acts", "tokens", "doc", "pos"} <= keys:
                return 0, f"columns {sorted(keys)}, expected acts, tokens, doc, pos"
            rows = {k: f.get_slice(k).get_shape()[0] for k in ("acts", "tokens", "doc", "pos")}
    except FileNotFoundError:
        return 0, "missing"
    except Exception as e:  # safetensors raises its own error types for a torn or foreign file
        return 0, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    if len(set(rows.values())) != 1:
        return 0, f"columns of unequal length {rows}"
    return rows["acts"], None


def cache_problem(folder: str | Path) -> str | None:
    """Why ``folder`` is not a whole activation cache (no or unreadable meta.json, a missing or corrupt shard), or
    None when it is one."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        shards, tokens = meta["shards"], int(meta["tokens"])
        if not isinstance(shards, list) or not shards:
            return "meta.json lists no shards"
    except FileNotFoundError:
        return "no meta.json"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"meta.json is unreadable ({type(e).__name__})"
    rows = 0
    for s in shards:
        n, problem = _shard_rows(folder / str(s))
        if problem:
            return f"shard {s}: {problem}"
        rows += n
    if rows != tokens:
        return f"the shards hold {rows} tokens, meta.json says {tokens}"
    return None


def repair_cache_run(done: dict, recompute) -> dict:
    """``done``, the stored finished ``interp cache`` run, once its folder is whole: a folder with a truncated or
    corrupt shard or meta.json (or none) is warned about, deleted and computed again by ``recompute(folder)`` into
    the same place, so the stored row stays true and a damaged cache is never a permanent failure."""
    folder = Path(done["artefacts"]["cache"])
    problem = cache_problem(folder)
    if problem is None:
        return done
    log.warning("activation cache %s is damaged (%s): deleting it and computing it again", folder, problem)
    shutil.rmtree(folder, ignore_errors=True)
    recompute(folder)
    return {**done, "cached": False}


def remove_stale_temporaries(out_dir: Path) -> None:
    """Remove the ``.<name>.<pid>.tmp`` folders that runs of ``out_dir`` killed before they could clean up left
    behind (those of processes still alive are left alone)."""
    for p in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        pid = p.name[len(out_dir.name) + 2:-4]
        if pid.isdigit() and not pid_alive(int(pid)):
            log.warning("removing %s, left by an interrupted run (process %s is gone)", p, pid)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def load_activations(folder: str | Path) -> ActivationCache:
    """The whole cache in memory. A missing, truncated or corrupt meta.json or shard is one clear error (``superalign
    interp cache`` treats such a folder as a miss and computes it again)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise SuperalignError(f"{folder} is not an activation cache (no meta.json)",
                              "create one with superalign interp cache")
    problem = cache_problem(folder)
    if problem:
        raise SuperalignError(f"the activation cache {folder} is damaged: {problem}",
                              "run the same superalign interp cache command again: it recomputes a damaged cache")
    meta = json.loads((folder / "meta.json").read_text())
    parts = [load_file(str(folder / s)) for s in meta["shards"]]
    cat = {k: torch.cat([p[k] for p in parts]) for k in ("acts", "tokens", "doc", "pos")}
    return ActivationCache(cat["acts"], cat["tokens"], cat["doc"], cat["pos"], meta)
