"""Run store (SQLite), content-hashed stage cache, compute ledger, sweeps and HTML reports."""

from .cache import StageCache, content_hash
from .store import RunStore, code_version, default_home

__all__ = ["RunStore", "default_home", "code_version", "StageCache", "content_hash"]
