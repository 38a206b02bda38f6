"""The run store: one SQLite database with every run's config, metrics, artefact paths, code version and compute
ledger (estimated FLOPs, wall and device seconds).

A run's id is derived from its kind and config, so re-running the same config finds the finished run (sweeps
resume by skipping runs whose status is 'done').

Several processes may share one store. A process *claims* a run before computing it (:meth:`RunStore.claim`: one
``BEGIN IMMEDIATE`` transaction, a compare-and-swap on the row) and records its pid and host in the row; while it
holds the run a daemon thread refreshes the row's ``heartbeat_at``. A claim never touches a finished ('done') run,
and a run held by another live process is left to it. A run whose holder died (same host and the pid is gone, or
no heartbeat for a while) reads as status 'interrupted' and the next claim takes it over. ``finish``/``fail`` only
write a row this process still holds.

Storage problems (a corrupt database, a home that is a file, a read-only folder) become one-line
:class:`~superalign.errors.SuperalignError`s naming the file and the fix; a read-only store can still be read."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import SuperalignError
from .cache import content_hash
from .files import pid_alive

HOME_ENV = "SUPERALIGN_HOME"

# How often a holder refreshes heartbeat_at, and when a holder on another host counts as dead. Module constants so
# tests can shrink them (the heartbeat thread reads them on every beat).
HEARTBEAT_INTERVAL_S = 10.0
HEARTBEAT_TIMEOUT_S = 60.0
# On the holder's own host the pid is checked directly; this much longer silence means the pid was reused by an
# unrelated process (e.g. pid 1 in every container run), so the run is taken over anyway.
PID_REUSE_TIMEOUT_S = 600.0
# How often a process waiting for another process's run looks again.
WAIT_POLL_S = 1.0

CLAIMED, DONE, HELD = "claimed", "done", "held"
STATUSES = ("running", "done", "interrupted", "failed")

HOST = socket.gethostname()
log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  group_id TEXT,
  status TEXT NOT NULL,
  config TEXT NOT NULL,
  metrics TEXT,
  artefacts TEXT,
  compute TEXT,
  code_version TEXT,
  created_at REAL,
  finished_at REAL,
  error TEXT,
  pid INTEGER,
  host TEXT,
  heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS runs_group ON runs(group_id);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind);
"""
# Columns added after the first release: an older runs.db gets them with ALTER TABLE ADD COLUMN.
HOLDER_COLUMNS = {"pid": "INTEGER", "host": "TEXT", "heartbeat_at": "REAL"}


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV, "superalign_runs")).expanduser()


_CODE_VERSION: str | None = None


def code_version() -> str:
    """Package version plus the git commit of the source tree (with '+dirty' when it has local changes)."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        from .. import __version__
        v = __version__
        src = Path(__file__).resolve().parents[2]
        try:
            sha = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=5).stdout.strip()
            if sha:
                dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                v += f"+g{sha}" + (".dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
        _CODE_VERSION = v
    return _CODE_VERSION


def run_id(kind: str, config: dict) -> str:
    return f"{kind}-{content_hash(config)}"


@dataclass(frozen=True)
class Claim:
    """The outcome of :meth:`RunStore.claim`: ``state`` is CLAIMED (this process now holds the run and must finish
    or fail it), DONE (finished already: use the stored result) or HELD (another live process is computing it).
    ``before`` is the run's status before the claim (None for a new run; 'interrupted' when it was taken over from
    a dead holder, 'failed' when a failed run is redone) and ``holder`` names the process holding it."""

    state: str
    rid: str
    before: str | None = None
    holder: str = ""

    @property
    def claimed(self) -> bool:
        return self.state == CLAIMED


# ---------------------------------------------------------------- liveness and heartbeats (process-wide)

_held: dict[tuple[str, str], RunStore] = {}  # (database path, run id) -> store, for every run this process holds
_held_lock = threading.Lock()
_heartbeat_thread: threading.Thread | None = None
_heartbeat_wake = threading.Event()


def _reset_after_fork() -> None:
    # a forked child holds nothing (its parent's claims carry the parent's pid) and runs no heartbeat thread; the
    # locks are new because the parent's thread may have held them at the fork
    global _heartbeat_thread, _heartbeat_wake, _held_lock
    _held.clear()
    _heartbeat_thread, _heartbeat_wake, _held_lock = None, threading.Event(), threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _hold(store: RunStore, rid: str) -> None:
    global _heartbeat_thread
    with _held_lock:
        _held[(store.key, rid)] = store
        if _heartbeat_thread is None or not _heartbeat_thread.is_alive():
            _heartbeat_thread = threading.Thread(target=_heartbeat_loop, name="superalign-heartbeat", daemon=True)
            _heartbeat_thread.start()
    _heartbeat_wake.set()


def _release(store: RunStore, rid: str) -> None:
    with _held_lock:
        _held.pop((store.key, rid), None)


def _holds(store: RunStore, rid: str) -> bool:
    with _held_lock:
        return (store.key, rid) in _held


def _heartbeat_loop() -> None:
    while True:
        _heartbeat_wake.wait(HEARTBEAT_INTERVAL_S)  # woken by each new claim, so a changed interval applies at once
        _heartbeat_wake.clear()
        with _held_lock:
            items = list(_held.items())
        for (_, rid), store in items:
            try:
                if not store._beat(rid):
                    _release(store, rid)  # taken over or finished elsewhere: stop beating for it
            except Exception as e:  # a locked or vanished store must not kill the thread; the next beat retries
                log.debug("heartbeat for %s failed: %s", rid, e)


# ---------------------------------------------------------------- the store


class RunStore:
    """The run store in ``home`` (default ``$SUPERALIGN_HOME`` or ``./superalign_runs``).

    ``create=False`` opens a store only to read it: when ``home/runs.db`` does not exist nothing is created and the
    store reads as empty. A store whose folder or database is not writable opens read-only: reads work, writes
    raise a :class:`SuperalignError` saying so."""

    def __init__(self, home: str | Path | None = None, create: bool = True):
        self.home = Path(home).expanduser() if home else default_home()
        self.db_path = self.home / "runs.db"
        self.key = os.path.abspath(self.db_path)  # names this database in the process's table of held runs
        self.read_only = False
        self._uri: str | None = None  # read-only connections open this URI
        if self.home.exists() and not self.home.is_dir():
            raise SuperalignError(f"run store home {self.home} is a file, not a folder",
                                  f"pass --home <a folder> (or set ${HOME_ENV}) or move {self.home} away")
        if self.db_path.is_dir():
            raise SuperalignError(f"run store database {self.db_path} is a folder",
                                  f"move {self.db_path} away or pass another --home")
        self.exists = self.db_path.exists()
        if not self.exists and not create:
            return  # reads see an empty store; nothing is created
        if not self.exists:
            try:
                self.home.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise SuperalignError(f"cannot create run store home {self.home}: part of its path is a file",
                                      f"pass --home <a folder> (or set ${HOME_ENV})") from None
            except OSError as e:
                raise SuperalignError(f"cannot create run store home {self.home} ({e.strerror})",
                                      f"pass --home <a writable folder> (or set ${HOME_ENV})") from None
        writable = os.access(self.home, os.W_OK | os.X_OK) and (not self.exists or os.access(self.db_path, os.W_OK))
        if not writable:
            if not self.exists:
                raise SuperalignError(f"cannot create run store {self.db_path}: {self.home} is read-only",
                                      f"make {self.home} writable or pass --home <a writable folder>")
            self.read_only = True
            self._open_read_only()
        else:
            self.exists = True
            self._init_schema()

    # ------------------------------------------------------------ connections and errors
    def _open_read_only(self) -> None:
        path = quote(str(self.db_path.resolve()))
        for uri in (f"file:{path}?mode=ro", f"file:{path}?immutable=1"):
            # mode=ro needs the -shm file of a WAL database (or a folder to create it in); immutable=1 does not
            c = sqlite3.connect(uri, uri=True, timeout=60)
            try:
                c.execute("SELECT count(*) FROM sqlite_master").fetchone()
                self._uri = uri
                return
            except sqlite3.OperationalError as e:
                if "unable to open" not in str(e) and "readonly" not in str(e):
                    raise self._storage_error(e) from None
            except sqlite3.DatabaseError as e:
                raise self._storage_error(e) from None
            finally:
                c.close()
        raise SuperalignError(f"cannot open run store {self.db_path} read-only",
                              f"check the permissions of {self.home} and {self.db_path}")

    def _connect(self) -> sqlite3.Connection:
        if self._uri is not None:
            c = sqlite3.connect(self._uri, uri=True, timeout=60, isolation_level=None)
        else:
            c = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)  # autocommit; transactions explicit
        c.row_factory = sqlite3.Row
        return c

    def _storage_error(self, e: sqlite3.Error) -> Exception:
        msg = str(e)
        if "readonly" in msg or "read-only" in msg:
            return self._read_only_error()
        if "not a database" in msg or "malformed" in msg or "disk image" in msg:
            return SuperalignError(f"run store {self.db_path} is corrupt or not a SQLite database ({msg})",
                                   f"move it away (e.g. mv {self.db_path} {self.db_path}.bad) to start a new store, "
                                   f"or pass another --home")
        if "locked" in msg or "busy" in msg:
            return SuperalignError(f"run store {self.db_path} stayed locked for 60 s ({msg})",
                                   "another process holds its write lock: wait for it, or pass another --home")
        if "unable to open" in msg or "disk I/O" in msg or "full" in msg:
            return SuperalignError(f"cannot use run store {self.db_path} ({msg})",
                                   f"check that {self.home} is a readable, writable folder with free space")
        return e

    def _read_only_error(self) -> SuperalignError:
        return SuperalignError(f"run store {self.db_path} is read-only",
                               f"make {self.home} and {self.db_path} writable, or pass --home <a writable folder>")

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        if write and self.read_only:
            raise self._read_only_error()
        if write and not self.exists:
            raise SuperalignError(f"run store {self.db_path} does not exist (opened with create=False)",
                                  "open it with RunStore(home) to create it")
        try:
            c = self._connect()
            try:
                yield c
            finally:
                c.close()
        except sqlite3.Error as e:
            err = self._storage_error(e)
            if err is e:
                raise
            raise err from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that takes the database's write lock at once (BEGIN IMMEDIATE), so what it reads
        cannot change before it writes: the compare-and-swap of a claim."""
        with self._db(write=True) as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._db() as c:
            cols = {r["name"] for r in c.execute("PRAGMA table_info(runs)").fetchall()}
            if cols and set(HOLDER_COLUMNS) <= cols:
                return
            if c.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                c.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        with self._transaction() as c:  # create or migrate once, even when two processes open the store together
            for stmt in filter(str.strip, SCHEMA.split(";")):
                c.execute(stmt)
            cols = {r["name"] for r in c.execute("PRAGMA table_info(runs)").fetchall()}
            for name, typ in HOLDER_COLUMNS.items():
                if name not in cols:
                    c.execute(f"ALTER TABLE runs ADD COLUMN {name} {typ}")

    # ------------------------------------------------------------ folders
    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def artefact_dir(self, rid: str) -> Path:
        if self.read_only:
            raise self._read_only_error()
        p = self.home / "artefacts" / rid
        p.mkdir(parents=True, exist_ok=True)
        return p

    # ------------------------------------------------------------ liveness
    def holder_alive(self, row: dict) -> bool:
        """Whether the process recorded as holding a 'running' row is still computing it."""
        pid, host, beat = row.get("pid"), row.get("host"), row.get("heartbeat_at")
        if pid is None or host is None:
            return False  # written by a version that recorded no holder: nobody will finish it
        silent = time.time() - (beat or 0.0)
        if host == HOST:
            if pid == os.getpid():
                return _holds(self, row["id"])  # else a previous process that had this pid
            return pid_alive(pid) and silent < PID_REUSE_TIMEOUT_S
        return silent < HEARTBEAT_TIMEOUT_S

    def _decode(self, row: sqlite3.Row) -> dict:
        d = dict(row)
        for k in ("config", "metrics", "artefacts", "compute"):
            d[k] = json.loads(d[k]) if d.get(k) else {}
        for k in HOLDER_COLUMNS:
            d.setdefault(k, None)
        if d["status"] == "running" and not self.holder_alive(d):
            d["status"] = "interrupted"  # its holder died; the next claim takes it over
        return d

    # ------------------------------------------------------------ reads
    def get(self, rid: str) -> dict | None:
        if not self.exists:
            return None
        with self._db() as c:
            row = c.execute("SELECT * FROM runs WHERE id=?", (rid,)).fetchone()
        return self._decode(row) if row else None

    def find(self, prefix: str) -> dict | None:
        if not self.exists:
            return None
        with self._db() as c:
            rows = c.execute("SELECT * FROM runs WHERE id LIKE ? ORDER BY created_at DESC", (prefix + "%",)).fetchall()
        return self._decode(rows[0]) if len(rows) >= 1 and (len(rows) == 1 or rows[0]["id"] == prefix) else None

    def is_done(self, rid: str) -> bool:
        r = self.get(rid)
        return bool(r and r["status"] == "done")

    def statuses(self, rids: list[str]) -> dict[str, str | None]:
        """Each run's status ('interrupted' for a dead holder's run), None for a run not in the store; one read."""
        out: dict[str, str | None] = dict.fromkeys(rids)
        if not self.exists or not rids:
            return out
        with self._db() as c:
            for i in range(0, len(rids), 500):
                chunk = rids[i:i + 500]
                q = f"SELECT * FROM runs WHERE id IN ({','.join('?' * len(chunk))})"  # * : an old store lacks pid
                for row in c.execute(q, chunk).fetchall():
                    d = dict(row)
                    out[d["id"]] = "interrupted" if d["status"] == "running" and not self.holder_alive(d) \
                        else d["status"]
        return out

    def list(self, kind: str | None = None, group_id: str | None = None, status: str | None = None,
             limit: int | None = None) -> list[dict]:
        if not self.exists:
            return []
        q, args = "SELECT * FROM runs WHERE 1=1", []
        stored_status = "running" if status == "interrupted" else status  # 'interrupted' is a 'running' row
        for col, v in (("kind", kind), ("group_id", group_id), ("status", stored_status)):
            if v is not None:
                q += f" AND {col}=?"
                args.append(v)
        q += " ORDER BY created_at"
        with self._db() as c:
            rows = [self._decode(r) for r in c.execute(q, args).fetchall()]
        if status is not None:
            rows = [r for r in rows if r["status"] == status]
        return rows[:int(limit)] if limit else rows

    # ------------------------------------------------------------ writes
    def claim(self, rid: str, kind: str, config: dict, group_id: str | None = None) -> Claim:
        """Atomically take run ``rid`` for this process, unless it is done or held by another live process.

        A new, failed or interrupted run becomes 'running' with this process as holder (CLAIMED) and a heartbeat
        thread keeps it held until :meth:`finish` or :meth:`fail`. A done run is never touched (DONE); a run held
        by another live process is left to it (HELD)."""
        now = time.time()
        with self._transaction() as c:
            row = c.execute("SELECT * FROM runs WHERE id=?", (rid,)).fetchone()
            before = None
            if row is not None:
                d = dict(row)
                before = d["status"]
                if before == "done":
                    return Claim(DONE, rid, "done", _holder_name(d))
                if before == "running":
                    if self.holder_alive(d):
                        return Claim(HELD, rid, "running", _holder_name(d))
                    before = "interrupted"
            c.execute("INSERT INTO runs (id, kind, group_id, status, config, code_version, created_at, pid, host, "
                      "heartbeat_at) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                      "kind=excluded.kind, group_id=excluded.group_id, status='running', config=excluded.config, "
                      "metrics=NULL, artefacts=NULL, compute=NULL, code_version=excluded.code_version, "
                      "created_at=excluded.created_at, finished_at=NULL, error=NULL, pid=excluded.pid, "
                      "host=excluded.host, heartbeat_at=excluded.heartbeat_at",
                      (rid, kind, group_id, _dumps(config), code_version(), now, os.getpid(), HOST, now))
        _hold(self, rid)
        return Claim(CLAIMED, rid, before, _holder_name({"pid": os.getpid(), "host": HOST}))

    def start(self, rid: str, kind: str, config: dict, group_id: str | None = None) -> Claim:
        """Same as :meth:`claim` (kept for callers of the first API): never resets a done or held run."""
        return self.claim(rid, kind, config, group_id)

    def wait_claim(self, rid: str, kind: str, config: dict, group_id: str | None = None,
                   say=None) -> Claim:
        """Claim ``rid``, waiting while another live process holds it; returns a CLAIMED or DONE claim. If the
        holder dies the run is taken over. ``say(message)`` reports the wait (default: print to stderr)."""
        import sys

        say = say or (lambda m: print(m, file=sys.stderr, flush=True))
        last_said = 0.0
        while True:
            cl = self.claim(rid, kind, config, group_id)
            if cl.state != HELD:
                return cl
            if time.monotonic() - last_said > 60:
                say(f"superalign: waiting for run {rid}, held by {cl.holder} (polling every {WAIT_POLL_S:g} s)")
                last_said = time.monotonic()
            time.sleep(WAIT_POLL_S)

    def holds(self, rid: str) -> bool:
        """Whether this process holds run ``rid`` (claimed it, not finished, not taken over)."""
        with self._db() as c:
            row = c.execute("SELECT * FROM runs WHERE id=?", (rid,)).fetchone()
        return bool(row and row["status"] == "running" and dict(row).get("pid") == os.getpid()
                    and dict(row).get("host") == HOST and _holds(self, rid))

    def _held_update(self, rid: str, sets: str, args: tuple) -> bool:
        """UPDATE a row only while this process holds it: status 'running' with our pid and host."""
        try:
            with self._db(write=True) as c:
                cur = c.execute(f"UPDATE runs SET {sets} WHERE id=? AND status='running' AND pid=? AND host=?",
                                (*args, rid, os.getpid(), HOST))
                return cur.rowcount == 1
        finally:
            _release(self, rid)

    def finish(self, rid: str, metrics: dict, artefacts: dict | None = None, compute: dict | None = None) -> bool:
        """Mark a run this process holds as done; returns False (and writes nothing) if it no longer holds it."""
        ok = self._held_update(rid, "status='done', metrics=?, artefacts=?, compute=?, finished_at=?, error=NULL, "
                               "heartbeat_at=?", (json.dumps(metrics, default=_num), _dumps(artefacts or {}),
                                                  json.dumps(compute or {}, default=_num), time.time(), time.time()))
        if not ok:
            log.warning("run %s is no longer held by this process (taken over or finished elsewhere); "
                        "its result here was not recorded", rid)
        return ok

    def fail(self, rid: str, error: str) -> bool:
        """Mark a run this process holds as failed; a done run or one held by another process is left as is."""
        return self._held_update(rid, "status='failed', error=?, finished_at=?", (error[:2000], time.time()))

    def record(self, rid: str, kind: str, config: dict, metrics: dict, artefacts: dict | None = None,
               compute: dict | None = None, group_id: str | None = None) -> None:
        """Write a finished row in one upsert, whoever holds it (for rows derived from finished runs, such as a
        sweep's group row, which any process may compute): it goes straight to 'done', never back to 'running'."""
        now = time.time()
        with self._db(write=True) as c:
            c.execute("INSERT INTO runs (id, kind, group_id, status, config, metrics, artefacts, compute, "
                      "code_version, created_at, finished_at, pid, host, heartbeat_at) "
                      "VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                      "kind=excluded.kind, group_id=excluded.group_id, status='done', config=excluded.config, "
                      "metrics=excluded.metrics, artefacts=excluded.artefacts, compute=excluded.compute, "
                      "code_version=excluded.code_version, finished_at=excluded.finished_at, error=NULL, "
                      "pid=excluded.pid, host=excluded.host, heartbeat_at=excluded.heartbeat_at",
                      (rid, kind, group_id, _dumps(config), json.dumps(metrics, default=_num), _dumps(artefacts or {}),
                       json.dumps(compute or {}, default=_num), code_version(), now, now, os.getpid(), HOST, now))
        _release(self, rid)

    def _beat(self, rid: str) -> bool:
        with self._db(write=True) as c:
            cur = c.execute("UPDATE runs SET heartbeat_at=? WHERE id=? AND status='running' AND pid=? AND host=?",
                            (time.time(), rid, os.getpid(), HOST))
            return cur.rowcount == 1


def _holder_name(row: dict) -> str:
    return f"pid {row.get('pid')} on {row.get('host')}" if row.get("pid") is not None else "an earlier version"


def _dumps(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def _num(x: Any):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)
