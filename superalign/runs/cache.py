"""Stage cache: numpy arrays + JSON metadata keyed by a content hash of a stage's inputs and config.

Entries are safetensors files written to a temporary name and renamed into place, so a crash or an
interrupted sweep never leaves a half-written entry, and concurrent workers never read one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def content_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), first 16 hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str, key: Any) -> Path:
        return self.root / stage / f"{content_hash(key)}.safetensors"

    def get(self, stage: str, key: Any) -> tuple[dict[str, np.ndarray], dict] | None:
        p = self.path(stage, key)
        if not p.exists():
            return None
        with safe_open(str(p), framework="numpy") as f:
            arrays = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return arrays, meta

    def put(self, stage: str, key: Any, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Path:
        p = self.path(stage, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp),
                  metadata={"meta": json.dumps(meta or {}, default=str), "key": json.dumps(key, default=str)})
        os.replace(tmp, p)
        return p
