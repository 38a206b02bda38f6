"""Small file and process helpers shared by every pillar: atomic writes and whether a process is alive.

Atomic writes are written by hand (a temporary name unique per process and thread, then ``os.replace``): the
libraries that did this (atomicwrites) are unmaintained, and what is needed here is four lines."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file so that a reader sees the old content or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = None) -> None:
    """:func:`write_text_atomic` of ``obj`` as JSON, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=indent))


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (signal 0 checks without sending anything); a zombie
    (exited, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:  # no /proc (macOS): kill(0) said it exists
        return True
