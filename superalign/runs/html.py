"""Building blocks of `superalign report` that every pillar's report section uses: escaping, number formatting,
tables, matplotlib figures embedded as base64 PNGs, and reading JSONL artefacts.

Pillar report modules import these (``from superalign.runs.html import esc, fmt, table, figure, img, mpl_safe``);
nothing here imports torch, so rendering a report never loads a model stack.

Rules the helpers enforce: every string that comes from the store or an artefact goes through :func:`esc` (cells
built with :func:`fmt` already are); NaN and None show as ``"n/a"``; figures are drawn on the Agg canvas without
pyplot, inside :func:`mpl_safe`, so the caller's matplotlib state is untouched and '$' in a name is plain text."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

NA = "n/a"
MAX_TEXT = 300  # long config values and errors are cut so one run stays one table row

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.8em 0}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;white-space:nowrap}
h2{border-bottom:1px solid #ddd;margin-top:1.6em}img{max-width:100%;display:block;margin:.5em 0}
.muted{color:#777;font-size:13px}.err{color:#a00}code{background:#f5f5f5;padding:0 3px}"""


class ArtefactError(ValueError):
    """An artefact file exists but cannot be read (not UTF-8, not JSON): the report section that needs it shows
    this message instead of its content."""


# --- text and numbers ----------------------------------------------------------------------------------------------

def esc(x: Any) -> str:
    """HTML-escape anything (quotes too, so it is also safe inside attributes)."""
    return html.escape(str(x), quote=True)


def as_float(x: Any) -> float:
    """A number as float, anything else (None, strings, bools, lists) as NaN."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x)


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite number (bools and non-numbers are not)."""
    return math.isfinite(as_float(x))


def short(x: Any, n: int = MAX_TEXT) -> str:
    """``str(x)`` cut to ``n`` characters (with an ellipsis)."""
    s = str(x)
    return s if len(s) <= n else s[: n - 1] + "…"


def fmt(x: Any, pct: bool = False, digits: int = 3) -> str:
    """A number for a table cell ("n/a" for NaN/None); non-numbers are escaped as text."""
    if x is None:
        return NA
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return esc(short(x))
    if math.isnan(x):
        return NA
    if pct:
        return f"{100 * x:.1f}"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}" if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3) else f"{x:.{digits}f}"


def val(v: Any) -> str:
    """A config value for display: lists as [a, b] without Python quotes."""
    return f"[{', '.join(map(str, v))}]" if isinstance(v, (list, tuple)) else str(v)


def ci(row: dict, key: str) -> tuple[float, float]:
    """The (lo, hi) confidence interval stored under ``key``, NaNs when absent or malformed."""
    c = row.get(key)
    if isinstance(c, (list, tuple)) and len(c) == 2:
        return as_float(c[0]), as_float(c[1])
    return math.nan, math.nan


def when(t: Any) -> str:
    """A timestamp (seconds since the epoch) as local time, "n/a" when missing."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if finite(t) else NA


def flops(compute: dict) -> str:
    """Total FLOPs of a run's compute record, "n/a" when unknown."""
    # w2s runs keep a per-stage dict under "flops" and the sum under "flops_total"; other kinds may store just "flops".
    x = compute.get("flops_total", compute.get("flops"))
    return f"{as_float(x):.3g}" if finite(x) else NA


def table(head: list[str], rows: Iterable[list[str]], numeric: Iterable[int] = ()) -> str:
    """An HTML table; cells must already be escaped/formatted. Columns in ``numeric`` are right-aligned."""
    numeric = set(numeric)
    out = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for cells in rows:
        out.append("<tr>" + "".join(f"<td class='n'>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(cells)) + "</tr>")
    return "\n".join(out + ["</tbody></table>"])


def error_box(what: str, e: BaseException) -> str:
    """A visible, escaped note that ``what`` could not be rendered, with the reason."""
    return f"<p class='err'>{esc(what)} could not be rendered: {esc(type(e).__name__)}: {esc(short(e))}</p>"


# --- artefacts -----------------------------------------------------------------------------------------------------

def read_text(path: str | Path | None) -> str | None:
    """An artefact's text, or None when no path was recorded or the file is gone (an old run cleaned up).

    Raises :class:`ArtefactError` naming the file when it exists but is not UTF-8 or not readable."""
    if not path:
        return None
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        raise ArtefactError(f"artefact {p} is not UTF-8 (byte {e.start}): it is damaged") from None
    except OSError as e:
        raise ArtefactError(f"artefact {p} cannot be read: {e.strerror or e}") from None


def read_jsonl(path: str | Path | None) -> list[dict]:
    """The lines of a JSONL artefact; [] when none was recorded or the file is gone.

    Raises :class:`ArtefactError` naming the file and line when it is damaged (not UTF-8, a line that is not a JSON
    object), so the report shows what is wrong instead of silently leaving the data out."""
    text = read_text(path)
    if text is None:
        return []
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ArtefactError(f"artefact {path} line {i} is not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ArtefactError(f"artefact {path} line {i} is a JSON {type(rec).__name__}, not an object")
        out.append(rec)
    return out


def read_json(path: str | Path | None) -> Any:
    """A JSON artefact, or None when none was recorded or the file is gone; :class:`ArtefactError` when damaged."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtefactError(f"artefact {path} is not valid JSON ({e.msg} at line {e.lineno})") from None


# --- plots ---------------------------------------------------------------------------------------------------------

def figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    """(figure, row of ``ncols`` axes) on the Agg canvas, without pyplot, so the caller's matplotlib backend and
    state are untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def img(fig: Any, alt: str) -> str:
    """The figure as an <img> tag with an embedded PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}"/>'


def mpl_safe() -> AbstractContextManager:
    """Names from the store are plain text for matplotlib: a '$' in a model name must not start mathtext."""
    import matplotlib
    return matplotlib.rc_context({"text.parse_math": False, "text.usetex": False})


__all__ = ["NA", "CSS", "MAX_TEXT", "ArtefactError", "esc", "as_float", "finite", "short", "fmt", "val", "ci", "when",
           "flops", "table", "error_box", "read_text", "read_jsonl", "read_json", "figure", "img", "mpl_safe"]
