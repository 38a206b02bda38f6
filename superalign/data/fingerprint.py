"""Content fingerprints of input files, so an edited file is a new run and never returns stale results.

``file_fingerprint(path)`` is the sha256 of the file's bytes. Hashing a large file on every call would be slow, so
the hash is remembered against the file's (resolved path, size, mtime_ns, inode): in process, and in a small SQLite
side file under the user cache (``$SUPERALIGN_FINGERPRINTS`` overrides its path; an unwritable cache only costs
rehashing). Any change of size, mtime or inode (an editor's write-and-rename) rehashes.

A write that keeps the size within the filesystem's timestamp granularity would keep (size, mtime_ns): as git does
for its index ("racy git"), a file modified within the last ``RACY_S`` seconds is always rehashed and never
remembered, so such a write is caught as long as the file is older than that when it was first remembered.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

ENV = "SUPERALIGN_FINGERPRINTS"
RACY_S = 2.0
_CHUNK = 1 << 20

_memo: dict[tuple[str, int, int, int], str] = {}
_lock = threading.Lock()


def _side_file() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "superalign" / "fingerprints.sqlite"


_local = threading.local()  # this thread's side-file connection: (pid, path, connection or None)


def _db() -> sqlite3.Connection | None:
    """This thread's connection to the side file, opened (folder and table created) once per path and process."""
    p = _side_file()
    held = getattr(_local, "db", None)
    if held is not None and held[:2] == (os.getpid(), p):
        return held[2]
    con = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(p), timeout=5.0)
        con.execute("CREATE TABLE IF NOT EXISTS fp (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                    "inode INTEGER, sha256 TEXT)")
    except (OSError, sqlite3.Error):  # read-only home, full disk: the in-process memo still works
        if con is not None:
            con.close()
        con = None
    _local.db = (os.getpid(), p, con)
    return con


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (hex) of the file's content, remembered against (path, size, mtime_ns, inode)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    sig = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    with _lock:
        if sig in _memo:
            return _memo[sig]
    racy = time.time() - st.st_mtime_ns / 1e9 < RACY_S
    con = None if racy else _db()
    if con is not None:
        try:
            row = con.execute("SELECT sha256 FROM fp WHERE path=? AND size=? AND mtime_ns=? AND inode=?",
                              sig).fetchone()
        except sqlite3.Error:
            row = None
        if row:
            with _lock:
                _memo[sig] = row[0]
            return row[0]
    digest = _sha256(p)
    if racy:
        return digest
    with _lock:
        _memo[sig] = digest
    if con is not None:
        try:
            with con:
                con.execute("INSERT OR REPLACE INTO fp VALUES (?, ?, ?, ?, ?)", (*sig, digest))
        except sqlite3.Error:
            pass
    return digest


def path_fingerprint(path: str | os.PathLike) -> str:
    """A file's fingerprint, or for a folder the hash of every file under it (relative name + content hash);
    hidden files and folders (``.git``, ``.cache``) are skipped."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        return file_fingerprint(p)
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            h.update(f"{rel.as_posix()}\0{file_fingerprint(f)}\n".encode())
    return h.hexdigest()


def forget() -> None:
    """Drop the in-process memo (tests; the side file is checked against the file's stat anyway)."""
    with _lock:
        _memo.clear()


def stat_signature(path: str | os.PathLike) -> tuple:
    """A cheap change detector: (size, mtime_ns, inode) of a file, or of every file under a folder. A file modified
    in the last ``RACY_S`` seconds gets a signature equal to no other (so callers re-read it), as in
    :func:`file_fingerprint`."""
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            return tuple((str(f), *stat_signature(f)) for f in sorted(p.rglob("*")) if f.is_file())
        st = p.stat()
    except OSError:
        return ("missing",)
    if time.time() - st.st_mtime_ns / 1e9 < RACY_S:
        return ("racy", object())
    return (st.st_size, st.st_mtime_ns, st.st_ino)


# Which input files the task being loaded read (load_task collects them; read_table and the loaders report them).
_recording: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("sources", default=None)


@contextlib.contextmanager
def recording_sources():
    """Collect ``{resolved path: content fingerprint}`` of every input read inside the block."""
    sources: dict[str, str] = {}
    token = _recording.set(sources)
    try:
        yield sources
    finally:
        _recording.reset(token)


def record_source(path: str | os.PathLike, fingerprint: str | None = None) -> None:
    """Report an input of the task being loaded (no-op outside :func:`recording_sources`). ``fingerprint``: for
    inputs that are not local files (a hub dataset's own fingerprint), the caller's identity string."""
    sources = _recording.get()
    if sources is None:
        return
    key = str(path) if fingerprint is not None else str(Path(path).expanduser().resolve())
    sources[key] = fingerprint if fingerprint is not None else path_fingerprint(key)
