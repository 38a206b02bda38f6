"""Reading local tables (jsonl / json / csv / parquet) and locating the shared datasets folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..errors import SuperalignError
from .fingerprint import record_source

DATA_ENV = "SUPERALIGN_DATA"


def resolve_data_dir(data: str | None, needed_by: str, flag: str = "--data") -> Path:
    """The folder of shared datasets: ``data`` if given, else ``$SUPERALIGN_DATA``."""
    root = data or os.environ.get(DATA_ENV)
    if not root:
        raise SuperalignError(f"{needed_by} needs the shared datasets folder",
                              f"pass {flag} DIR or set {DATA_ENV}=DIR (e.g. ../shared/data)")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise SuperalignError(f"datasets folder {p} does not exist", f"pass {flag} DIR or set {DATA_ENV}")
    return p


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a jsonl/json/csv/tsv/parquet file into a DataFrame, with a one-line error for anything else."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SuperalignError(f"data file {p} does not exist", "check the path")
    if p.is_dir():
        raise SuperalignError(f"data file {p} is a folder", "pass a .jsonl/.csv/.parquet file inside it")
    record_source(p)  # the content is part of the identity of whatever is built from it
    suf = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    try:
        if suf in (".jsonl", ".jsonl.gz"):
            rows = []
            opener = open
            if suf.endswith(".gz"):
                import gzip
                opener = gzip.open  # type: ignore[assignment]
            with opener(p, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
                for i, line in enumerate(fh):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise SuperalignError(f"{p}: line {i + 1} is not valid JSON ({e.msg})",
                                                  "fix or remove that line") from None
            return pd.DataFrame(rows)
        if suf == ".json":
            return pd.read_json(p)
        if suf == ".csv":
            return pd.read_csv(p)
        if suf == ".tsv":
            return pd.read_csv(p, sep="\t")
        if suf == ".parquet":
            return pd.read_parquet(p)
    except SuperalignError:
        raise
    except Exception as e:  # pandas/pyarrow parse errors
        raise SuperalignError(f"could not read {p}: {type(e).__name__}: {e}", "check the file format") from None
    raise SuperalignError(f"unsupported data file type {p.suffix!r} for {p}",
                          "use .jsonl, .json, .csv, .tsv or .parquet")
