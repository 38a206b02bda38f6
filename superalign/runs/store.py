"""The run store: one SQLite database with every run's config, metrics, artefact paths, code version and compute
ledger (estimated FLOPs, wall and device seconds).

A run's id is derived from its kind and config, so re-running the same config finds the finished run (sweeps
resume by skipping runs whose status is 'done'). Writes are single transactions; a run interrupted mid-way stays
'running' and is redone next time."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from .cache import content_hash

HOME_ENV = "SUPERALIGN_HOME"

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
  error TEXT
);
CREATE INDEX IF NOT EXISTS runs_group ON runs(group_id);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind);
"""


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


class RunStore:
    def __init__(self, home: str | Path | None = None):
        self.home = Path(home) if home else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "runs.db"
        with self._conn() as c:
            c.executescript(SCHEMA)

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def artefact_dir(self, rid: str) -> Path:
        p = self.home / "artefacts" / rid
        p.mkdir(parents=True, exist_ok=True)
        return p

    def _conn(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.db_path, timeout=60)
        c.execute("PRAGMA journal_mode=WAL")
        c.row_factory = sqlite3.Row
        return c

    def get(self, rid: str) -> dict | None:
        with self._conn() as c:
            row = c.execute("SELECT * FROM runs WHERE id=?", (rid,)).fetchone()
        return _decode(row) if row else None

    def find(self, prefix: str) -> dict | None:
        with self._conn() as c:
            rows = c.execute("SELECT * FROM runs WHERE id LIKE ? ORDER BY created_at DESC", (prefix + "%",)).fetchall()
        return _decode(rows[0]) if len(rows) >= 1 and (len(rows) == 1 or rows[0]["id"] == prefix) else None

    def is_done(self, rid: str) -> bool:
        r = self.get(rid)
        return bool(r and r["status"] == "done")

    def start(self, rid: str, kind: str, config: dict, group_id: str | None = None) -> None:
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO runs (id, kind, group_id, status, config, code_version, created_at) "
                      "VALUES (?, ?, ?, 'running', ?, ?, ?)",
                      (rid, kind, group_id, json.dumps(config, sort_keys=True, default=str), code_version(), time.time()))

    def finish(self, rid: str, metrics: dict, artefacts: dict | None = None, compute: dict | None = None) -> None:
        with self._conn() as c:
            c.execute("UPDATE runs SET status='done', metrics=?, artefacts=?, compute=?, finished_at=?, error=NULL "
                      "WHERE id=?", (json.dumps(metrics, default=_num), json.dumps(artefacts or {}, default=str),
                                     json.dumps(compute or {}, default=_num), time.time(), rid))

    def fail(self, rid: str, error: str) -> None:
        with self._conn() as c:
            c.execute("UPDATE runs SET status='failed', error=?, finished_at=? WHERE id=?", (error[:2000], time.time(), rid))

    def list(self, kind: str | None = None, group_id: str | None = None, status: str | None = None,
             limit: int | None = None) -> list[dict]:
        q, args = "SELECT * FROM runs WHERE 1=1", []
        for col, v in (("kind", kind), ("group_id", group_id), ("status", status)):
            if v is not None:
                q += f" AND {col}=?"
                args.append(v)
        q += " ORDER BY created_at"
        if limit:
            q += f" LIMIT {int(limit)}"
        with self._conn() as c:
            return [_decode(r) for r in c.execute(q, args).fetchall()]


def _num(x: Any):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def _decode(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in ("config", "metrics", "artefacts", "compute"):
        d[k] = json.loads(d[k]) if d.get(k) else {}
    return d
