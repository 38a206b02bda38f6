"""Run store (SQLite), content-hashed stage cache, compute ledger, sweeps and HTML reports."""

from .store import RunStore, default_home, code_version
from .cache import StageCache, content_hash

__all__ = ["RunStore", "default_home", "code_version", "StageCache", "content_hash"]
