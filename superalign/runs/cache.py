"""Stage cache: numpy arrays + JSON metadata keyed by a content hash of a stage's inputs and config.

Entries are safetensors files written to a temporary name and renamed into place, so a crash or an
interrupted sweep never leaves a half-written entry, and concurrent workers never read one. An entry damaged
anyway (a truncated copy, a full disk) is treated as a miss."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
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
        """The cached arrays and metadata, or None on a miss. An unreadable entry (truncated by a full disk or a
        copy, garbage, bad JSON metadata) is a miss: it is deleted with a warning so the stage recomputes it."""
        p = self.path(stage, key)
        if not p.exists():
            return None
        try:
            with safe_open(str(p), framework="numpy") as f:
                arrays = {k: f.get_tensor(k) for k in f.keys()}
                meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            if not isinstance(meta, dict):
                raise ValueError(f"metadata is a {type(meta).__name__}, not a JSON object")
        except FileNotFoundError:  # removed by another process in the meantime
            return None
        except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) for a bad file
            why = (str(e).strip().splitlines() or [""])[0]
            warnings.warn(f"stage cache entry {p} is unreadable ({type(e).__name__}: {why}); deleted, recomputing it",
                          RuntimeWarning, stacklevel=2)
            p.unlink(missing_ok=True)
            return None
        return arrays, meta

    def put(self, stage: str, key: Any, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Path:
        p = self.path(stage, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp),
                  metadata={"meta": json.dumps(meta or {}, default=str), "key": json.dumps(key, default=str)})
        os.replace(tmp, p)
        return p
