"""`superalign report`: one self-contained HTML file of the run store.

A header (code versions, counts per kind and status), then one section per registered pillar
(:mod:`superalign.pillars`: weak-to-strong PGR tables and plots, RLHF curves, interpretability scores, debate
results), each from that pillar's runs, then a compact table of every run of any kind with the key config and
headline metrics its pillar declares. A section that fails (a damaged artefact, an unexpected record) shows what went
wrong and the rest of the report still renders. Every string that comes from the store is HTML-escaped, and NaN is
shown as "n/a"; the building blocks are in :mod:`superalign.runs.html`."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import defaultdict
from pathlib import Path

from ..errors import SuperalignError
from ..pillars import MAX_GENERIC, headline_metrics, key_config, known_kinds, pillars, resolve
from .html import CSS, NA, as_float, error_box, esc, finite, flops, fmt, short, table, val, when
from .store import RunStore, code_version

log = logging.getLogger(__name__)

__all__ = ["render", "write_report", "runs_table", "pillar_sections"]


def _config_cell(r: dict) -> str:
    return esc(short(", ".join(f"{k}={val(v)}" for k, v in key_config(r, MAX_GENERIC))))


def _metrics_cell(r: dict) -> str:
    cell = ", ".join(f"{esc(k)}={fmt(v)}" for k, v in headline_metrics(r, MAX_GENERIC))
    if r.get("error"):
        cell += f"<div class='err'>error: {esc(short(r['error']))}</div>"
    return cell


def runs_table(runs: list[dict]) -> str:
    """Every run, newest first: id, kind, status, created, key config, headline metrics, wall seconds, FLOPs, and
    where it ran (device × processes, dtype) with its MFU from the compute ledger."""
    body = []
    for r in sorted(runs, key=lambda r: as_float(r.get("created_at")) if finite(r.get("created_at")) else 0.0,
                    reverse=True):
        c = r.get("compute") or {}
        body.append([f"<code>{esc(r['id'])}</code>", esc(r["kind"]), esc(r["status"]), when(r.get("created_at")),
                     _config_cell(r), _metrics_cell(r), fmt(as_float(c.get("wall_s")), digits=1), flops(c),
                     _where(c), fmt(100 * as_float(c["mfu"]), digits=1) if finite(c.get("mfu")) else NA])
    return table(["id", "kind", "status", "created", "config", "metrics", "wall s", "FLOPs", "device", "MFU %"],
                 body, numeric={6, 7, 9})


def _where(c: dict) -> str:
    """'cuda:0 × 2 · bf16 (NVIDIA H200)' from a compute record; n/a for runs recorded before the ledger."""
    if not c.get("device"):
        return NA
    n = c.get("world_size") or 1
    name = f" ({c['device_name']})" if c.get("device_name") and str(c["device"]).startswith("cuda") else ""
    return esc(f"{c['device']}{f' × {n}' if n > 1 else ''} · {c.get('dtype', '?')}{name}")


def pillar_sections(runs: list[dict]) -> list[str]:
    """Each registered pillar's section of the report, from its own runs. A section that raises is replaced by an
    escaped note of what went wrong, so one damaged artefact or odd record never costs the whole report."""
    parts = []
    for p in pillars():
        mine = [r for r in runs if r["kind"] in p.kind_names()]
        if not mine or p.section is None:
            continue
        try:
            html = resolve(p.section)(mine)
        except Exception as e:  # noqa: BLE001 - shown in the report instead of aborting it
            log.warning("report section %s failed: %s: %s", p.name, type(e).__name__, e)
            html = f"<h2>{esc(p.title)}</h2>" + error_box(f"the {p.title} section", e)
        if html:
            parts.append(html)
    return parts


def _header(runs: list[dict], store: RunStore, kinds: list[str] | None) -> str:
    versions = sorted({str(r["code_version"]) for r in runs if r.get("code_version")})
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        counts[f"{r['kind']} {r['status']}"] += 1
    return "\n".join([
        "<h1>superalign report</h1>",
        f"<p class='muted'>generated {esc(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} by superalign "
        f"{esc(code_version())} · store <code>{esc(store.db_path)}</code>"
        + (f" · kinds {esc(', '.join(kinds))}" if kinds is not None else "") + "</p>",
        f"<p class='muted'>runs recorded with code: {esc(', '.join(versions) or NA)}</p>",
        f"<p class='muted'>{len(runs)} runs: "
        f"{esc(', '.join(f'{n} {k}' for k, n in sorted(counts.items())) or 'none')}</p>"])


def render(store: RunStore, kinds: list[str] | None = None) -> str:
    """The whole report as one HTML string (see the module docstring)."""
    runs = [r for r in store.list() if kinds is None or r["kind"] in kinds]
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>superalign report</title><style>{CSS}</style></head><body>", _header(runs, store, kinds)]
    if not runs:
        what = "" if kinds is None else f" of kind {esc(', '.join(kinds))}"
        parts += [f"<p>No runs{what} yet. Start with <code>superalign w2s run</code>.</p>", "</body></html>"]
        return "\n".join(parts)
    parts += pillar_sections(runs)
    parts += ["<h2>All runs</h2>", runs_table(runs), "</body></html>"]
    return "\n".join(parts)


def write_report(store: RunStore, out_path: str | Path, kinds: list[str] | None = None) -> Path:
    """Write the HTML report of ``store`` to ``out_path`` atomically and return its path.

    ``kinds`` limits the report to runs of those kinds (None = all); sweep sections need "w2s-sweep" among them.
    The file is written to a temporary file in the same folder and renamed over ``out_path``, so a reader never
    sees a half-written report and an earlier one survives a failure."""
    if isinstance(kinds, str):  # a bare kind would otherwise match as a substring test
        kinds = [kinds]
    if kinds:
        # a misspelt --kind would otherwise give an empty report and exit 0
        valid = set(known_kinds()) | {r["kind"] for r in store.list()}
        unknown = [k for k in kinds if k not in valid]
        if unknown:
            raise SuperalignError(f"unknown run kind(s) {', '.join(unknown)}",
                                  f"use any of {', '.join(sorted(valid))}")
    out = Path(out_path)
    if out.is_dir():
        raise SuperalignError(f"report output {out} is a folder", f"pass --out {out / 'superalign_report.html'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(store, kinds)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 gives the report the usual umask-derived permissions (tempfile would make it 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
