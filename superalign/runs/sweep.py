"""Sweeps of any job: ``superalign sweep <pillar> <job> --grid key=v1,v2 …`` runs a registered job once per
combination of grid values, locally (one cell after another) or as one Ray task per cell.

Each cell is an ordinary job config, run by the job's own run function, so resume and concurrency come from the run
store: a finished cell returns its stored run at once, a cell another process holds is waited for (and taken over if
that process dies), and an interrupted sweep rerun redoes only unfinished cells. The sweep itself keeps no state but
its JSON summary.

Grid keys are the job config's field names (``max_len`` or ``max-len``; a nested config's fields by their flag name)
and every value is converted exactly as the CLI converts that flag (bools, ints, floats, choices; ``none`` for a
field that may be None). Every cell's config is built and validated before any run starts, so bad input is one
:class:`~superalign.errors.SuperalignError` and nothing is written.

This module is the shared layer: it reaches pillars only through the registry (:mod:`superalign.pillars`), at call
time.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time
import traceback
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SuperalignError
from .cache import content_hash
from .files import write_json_atomic
from .store import default_home

EXECUTORS = ("local", "ray")
SWEEP_FLAGS = ("grid", "executor", "address", "max_parallel")
"""the sweep's own options; a job field of the same name is set through ``--grid`` instead"""
NOT_IN_HASH = ("home", "progress")
"""fixed values that do not change what a sweep computes (where it is stored, whether bars are shown)"""


class _RaisingParser(argparse.ArgumentParser):
    """An argparse parser whose errors are a :class:`SuperalignError` (one line, exit 2 in the CLI) instead of the
    usage text and ``sys.exit``."""

    def error(self, message: str):
        raise SuperalignError(f"{self.prog}: {message}", f"see `{self.prog} --help`")


# ----------------------------------------------------------------------------------------------- the job and its flags
@dataclass
class _JobSpec:
    """A registered job and the flags its config generates: what turns grid keys and values into config fields."""

    pillar: Any
    job: Any
    config_class: type
    parser: argparse.ArgumentParser
    actions: dict[str, argparse.Action]
    """every accepted name of a flag (``max_len``, ``max-len``, ``--max-len``, its dest) → its argparse action"""

    @property
    def label(self) -> str:
        return f"{self.pillar.name} {self.job.name}"

    def action(self, key: str, what: str) -> argparse.Action:
        a = self.actions.get(key) or self.actions.get(key.lstrip("-"))
        if a is None:
            names = sorted({x.option_strings[0][2:].replace("-", "_") for x in self.actions.values()
                            if x.option_strings})
            raise SuperalignError(f"{what} {key!r}: `superalign {self.label}` has no config field of that name",
                                  f"use one of its fields: {', '.join(names)}")
        return a

    def key_name(self, action: argparse.Action) -> str:
        """A flag's field name as a grid key is shown (``max_len``)."""
        return action.option_strings[0][2:].replace("-", "_")


def _job_spec(pillar_name: str, job_name: str, skip_sweep_flags: bool = False) -> _JobSpec:
    from ..config import add_dataclass_args
    from ..pillars import get_pillar, pillars

    try:
        pillar = get_pillar(pillar_name)
    except KeyError:
        names = ", ".join(p.name for p in pillars())
        raise SuperalignError(f"no pillar named {pillar_name!r}", f"choose one of: {names}") from None
    job = next((j for j in pillar.jobs if j.name == job_name), None)
    if job is None:
        commands = {c.name for c in pillar.commands}
        what = (f"`superalign {pillar.name} {job_name}` is a command without a config, not a job"
                if job_name in commands else f"pillar {pillar.name!r} has no job named {job_name!r}")
        raise SuperalignError(what, f"sweep one of its jobs: {', '.join(j.name for j in pillar.jobs)}")
    cls = job.config_class()
    prog = f"superalign sweep {pillar.name} {job.name}"
    parser = _RaisingParser(prog=prog, allow_abbrev=False, description=DESCRIPTION.replace("%", "%%"))
    skip: tuple[str, ...] = ()
    if skip_sweep_flags:  # the command line: the sweep's own options; a job field of that name goes in --grid
        _add_sweep_flags(parser)
        skip = tuple(f.name for f in dataclasses.fields(cls) if f.name in SWEEP_FLAGS)
    add_dataclass_args(parser, cls, skip=skip, single=job.single)
    actions = _index(parser, skip_dests=SWEEP_FLAGS if skip_sweep_flags else ())
    if skip:  # not flags of this command line, but still grid keys: their actions from a parser of every field
        full = _RaisingParser(prog=prog, allow_abbrev=False)
        add_dataclass_args(full, cls, single=job.single)
        actions.update({k: a for k, a in _index(full).items() if a.dest in skip})
    return _JobSpec(pillar, job, cls, parser, actions)


def _index(parser: argparse.ArgumentParser, skip_dests: tuple[str, ...] = ()) -> dict[str, argparse.Action]:
    """Every name a flag answers to (``--max-len``, ``max-len``, ``max_len``, its dest) → its action."""
    actions: dict[str, argparse.Action] = {}
    for a in parser._actions:  # argparse keeps no public index of its actions
        if not a.option_strings or a.dest == "help" or a.dest in skip_dests:
            continue
        for opt in a.option_strings:
            actions[opt] = actions[opt[2:]] = actions[opt[2:].replace("-", "_")] = a
        actions[a.dest] = a
    return actions


def _add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sweep", "the grid and where its cells run; every other flag is the job's own, "
                                           "fixed for every cell")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config field and its comma-separated values (repeatable: the cells are every combination)")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: one cell after another in this process; ray: one Ray task per cell (default: local)")
    g.add_argument("--address", default=None,
                   help="Ray cluster address (--executor ray; default: a local Ray instance)")
    g.add_argument("--max-parallel", type=int, default=None, dest="max_parallel",
                   help="at most this many cells at once on Ray (default: as many as Ray's CPUs allow)")


def _field_hint(cls: type, dest: str) -> Any:
    """The annotation of the field a flag sets (``a.b`` for a field of a nested config)."""
    outer, _, inner = dest.partition(".")
    hint = typing.get_type_hints(cls)[outer]
    if inner:
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        hint = typing.get_type_hints(args[0])[inner]
    return hint


def _nullable(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _type_name(action: argparse.Action) -> str:
    t = action.type
    if t is None:
        return "str"
    return {"_str2bool": "boolean (true/false)", "loads": "JSON value"}.get(getattr(t, "__name__", ""),
                                                                           getattr(t, "__name__", str(t)))


def _convert(spec: _JobSpec, action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` as the config field takes it: a string converted as the CLI converts the flag (a list field takes
    space-separated items, ``none`` is None for a field that may be None); choices checked for any value."""
    hint = _field_hint(spec.config_class, action.dest)
    one_as_list = type(action).__name__ == "_OneAsList"
    many = action.nargs == "+"
    fix = f"see `superalign {spec.label} --help`"
    if isinstance(value, str):
        if value.strip().lower() in ("none", "null") and _nullable(hint) and \
                not (action.choices and value in action.choices):
            return None
        items = value.split() if many else [value]
        if not items:
            raise SuperalignError(f"{where}: empty value", f"give {spec.key_name(action)} a value; {fix}")
        conv = action.type or str
        try:
            parsed = [conv(x) for x in items]
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise SuperalignError(f"{where}: {value!r} is not a valid {_type_name(action)} ({e})", fix) from None
        vals = parsed
    else:
        if value is None:
            return None
        vals = list(value) if (many or one_as_list) and isinstance(value, (list, tuple)) else [value]
    if action.choices is not None:
        bad = [v for v in vals if v not in action.choices]
        if bad:
            raise SuperalignError(f"{where}: {bad[0]!r} is not one of the choices",
                                  f"choose from {', '.join(map(str, action.choices))}")
    if many or one_as_list:
        if one_as_list and len(vals) != 1:
            raise SuperalignError(f"{where}: `superalign {spec.label}` takes exactly one {spec.key_name(action)}",
                                  "give one value per cell")
        return vals
    return vals[0]


# --------------------------------------------------------------------------------------------------------- the cells
@dataclass
class Cell:
    """One combination of grid values and the job config it makes."""

    values: dict[str, Any]
    """grid key (field name) → value, in the grid's order"""
    config: Any

    @property
    def label(self) -> str:
        return " ".join(f"{k}={_show(v)}" for k, v in self.values.items())


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return " ".join(map(_show, v))
    return "none" if v is None else str(v)


def expand_grid(spec: _JobSpec, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any]
                ) -> tuple[list[Cell], dict[str, list], dict[str, Any]]:
    """Every cell of ``grid`` (all combinations, the first key varying slowest) with ``fixed`` applied, each config
    built and validated now. Returns (cells, grid by field name with parsed values, fixed by dest)."""
    from ..config import from_args

    if not grid:
        raise SuperalignError(f"sweep {spec.label}: no --grid given",
                              "pass at least one --grid KEY=V1,V2 (a config field and its values)")
    fixed_dests: dict[str, Any] = {}
    for key, value in fixed.items():
        a = spec.action(key, "fixed value")
        fixed_dests[a.dest] = _convert(spec, a, value, f"--{spec.key_name(a).replace('_', '-')}")
    axes: list[tuple[str, str, list]] = []  # (key name, dest, values)
    for key, values in grid.items():
        a = spec.action(key, "--grid key")
        name = spec.key_name(a)
        if a.dest in fixed_dests:
            raise SuperalignError(f"--grid {name} is also given as a fixed flag --{name.replace('_', '-')}",
                                  "give it in one place: the grid or the fixed flags")
        if any(d == a.dest for _, d, _ in axes):
            raise SuperalignError(f"--grid {name} is given twice", f"list all its values once: --grid {name}=V1,V2")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            values = [values]
        if not values:
            raise SuperalignError(f"--grid {name} has no values", f"list them: --grid {name}=V1,V2")
        parsed = [_convert(spec, a, v, f"--grid {name}") for v in values]
        seen: list = []
        for v in parsed:
            if v in seen:
                raise SuperalignError(f"--grid {name} lists {_show(v)} twice", "list each value once")
            seen.append(v)
        axes.append((name, a.dest, parsed))
    cells = []
    for combo in itertools.product(*(vals for _, _, vals in axes)):
        values = {name: v for (name, _, _), v in zip(axes, combo)}
        given = {**fixed_dests, **{dest: v for (_, dest, _), v in zip(axes, combo)}}
        cell = Cell(values, None)
        try:
            cell.config = from_args(spec.config_class, argparse.Namespace(**given))
            if hasattr(cell.config, "placement"):  # an absent device is refused now, not after the first cells ran
                cell.config.placement()
        except (SuperalignError, ValueError, TypeError) as e:
            raise SuperalignError(f"sweep cell {cell.label}: {e}".rstrip(".")) from None
        cells.append(cell)
    return cells, {name: vals for name, _, vals in axes}, fixed_dests


# ------------------------------------------------------------------------------------------------- running one cell
RECORD_KEYS = ("id", "kind", "status", "metrics", "artefacts", "compute", "error")


def _record_of(result: Any) -> tuple[dict | None, bool]:
    """(run record, whether it was already done) from what a job's run function returns: a stored run (every
    pillar's jobs), or a result standing for a group of runs (``group_id``, ``store``, ``records``: the w2s pillar's
    jobs), shown as its one member run when it has exactly one, else as the group's own record."""
    if isinstance(result, Mapping) and "id" in result:
        return dict(result), bool(result.get("cached"))
    group, store = getattr(result, "group_id", None), getattr(result, "store", None)
    if group is None or store is None:
        return None, False
    rec = store.get(group)
    members = list(getattr(result, "records", None) or [])
    cached = bool(rec and (rec.get("metrics") or {}).get("n_new") == 0)
    if len(members) == 1 and members[0]:
        return dict(members[0]), cached
    return rec, cached


def _failed_record(cfg: Any, kinds: Sequence[str]) -> dict | None:
    """The store's record of a cell that raised: the run id is the hash of (kind, config key), so try each of the
    pillar's run kinds. None when the job failed before claiming a run (e.g. its input was refused)."""
    key = getattr(cfg, "key", None)
    if key is None:
        return None
    from .store import RunStore, run_id

    try:
        k = key()
        store = RunStore(getattr(cfg, "home", None), create=False)
        for kind in kinds:
            rec = store.get(run_id(kind, k))
            if rec is not None:
                return rec
    except Exception:  # noqa: BLE001 - a lookup for the summary must not hide the cell's own error
        return None
    return None


def run_cell(cfg: Any, run_ref: Any, kinds: Sequence[str], cwd: str | None = None) -> dict:
    """Run one cell with the job's run function; never raises for a failing job (the outcome says so), so the
    sweep goes on with the other cells. Runs in this process (local) or in a Ray worker."""
    from ..pillars import resolve

    if cwd is not None and os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)  # a Ray worker on this machine: relative paths in the config mean what they meant to the driver
    try:
        rec, cached = _record_of(resolve(run_ref)(cfg))
        out = {"record": {k: rec.get(k) for k in RECORD_KEYS} if rec else None, "cached": cached, "error": None}
    except Exception as e:  # noqa: BLE001 - one failing cell is reported with the others, not the end of the sweep
        one_line = " ".join(str(e).split()) if isinstance(e, SuperalignError) else \
            " ".join(f"{type(e).__name__}: {e}".split())
        rec = _failed_record(cfg, kinds)
        out = {"record": {k: rec.get(k) for k in RECORD_KEYS} if rec else None, "cached": False,
               "error": one_line[:500], "traceback": None if isinstance(e, SuperalignError) else
               traceback.format_exc(limit=8)}
    return out


# ------------------------------------------------------------------------------------------------------- the result
@dataclass
class SweepResult:
    """One row per cell (``cell`` values, ``status`` done/cached/failed, ``run_id``, ``kind``, headline
    ``metrics``, ``wall_s``, ``artefacts``, ``error``), the summary file, and the table printed by the CLI."""

    pillar: str
    job: str
    grid: dict[str, list]
    rows: list[dict]
    path: Path | None = None
    wall_s: float = 0.0
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]

    def table(self) -> str:
        fixed_columns = {*self.grid, "status", "wall_s", "run"}
        metric_names: list[str] = []
        for r in self.rows:  # a metric named like a column (a job's own wall_s) stays in the JSON summary only
            metric_names += [m for m in r["metrics"] if m not in metric_names and m not in fixed_columns]
        head = [*self.grid, "status", *metric_names, "wall_s", "run"]
        body = [[*(_show(r["cell"][k]) for k in self.grid), r["status"],
                 *(_cell_text(r["metrics"].get(m)) for m in metric_names),
                 _cell_text(r["wall_s"]), r["run_id"] or "-"] for r in self.rows]
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SweepResult({self.pillar} {self.job}, {len(self.rows)} cells)\n{self.table()}"


def _cell_text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.4g}"
    return _show(v)


def _row(cell: Cell, outcome: dict) -> dict:
    from ..pillars import headline_metrics

    rec = outcome.get("record")
    if outcome.get("error"):
        status = "failed"
    else:
        status = "cached" if outcome.get("cached") else "done"
    return {"cell": dict(cell.values), "status": status,
            "run_id": rec.get("id") if rec else None, "kind": rec.get("kind") if rec else None,
            "metrics": dict(headline_metrics(rec)) if rec and status != "failed" else {},
            "wall_s": ((rec.get("compute") or {}).get("wall_s") if rec else None),
            "artefacts": (rec.get("artefacts") or {}) if rec and status != "failed" else {},
            "error": outcome.get("error"), **({"traceback": outcome["traceback"]}
                                              if outcome.get("traceback") else {})}


# -------------------------------------------------------------------------------------------------------- executors
def _say(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"superalign: {msg}", file=sys.stderr)


def _run_local(spec: _JobSpec, cells: list[Cell], kinds: list[str], progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    rows = []
    for cell in tqdm(cells, desc=f"sweep {spec.label}", unit="cell", disable=not progress):
        row = _row(cell, run_cell(cell.config, spec.job.run, kinds))
        if row["error"]:
            _say(f"sweep cell {cell.label} failed: {row['error']}")
        rows.append(row)
    return rows


def init_ray(address: str | None):
    """Ray, connected: the running instance if this process already started one, else ``address`` (a cluster) or a
    new local instance — initialised as :func:`superalign.w2s.sweep._run_ray` does."""
    try:
        import ray
    except ImportError:
        raise SuperalignError("--executor ray needs Ray", "pip install 'superalign[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return ray


def _run_ray(spec: _JobSpec, cells: list[Cell], kinds: list[str], progress: bool, address: str | None,
             max_parallel: int | None) -> list[dict]:
    """One Ray task per cell, each running the job (and so claiming and recording its own run in the store, which
    takes concurrent writers); at most ``max_parallel`` in flight. Worker configs name the store by absolute path."""
    from tqdm.auto import tqdm

    ray = init_ray(address)
    remote = ray.remote(run_cell)
    cwd = os.getcwd()
    todo = list(enumerate(cells))
    running: dict[Any, int] = {}
    outcomes: dict[int, dict] = {}
    bar = tqdm(total=len(cells), desc=f"sweep {spec.label} (ray)", unit="cell", disable=not progress)
    try:
        while todo or running:
            while todo and (max_parallel is None or len(running) < max_parallel):
                i, cell = todo.pop(0)
                running[remote.remote(_for_worker(cell.config), spec.job.run, kinds, cwd)] = i
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i = running.pop(ref)
                try:
                    outcomes[i] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a worker that died: that cell failed, the others go on
                    outcomes[i] = {"record": _failed_record(cells[i].config, kinds), "cached": False,
                                   "error": " ".join(f"{type(e).__name__}: {e}".split())[:500]}
                if outcomes[i].get("error"):
                    _say(f"sweep cell {cells[i].label} failed: {outcomes[i]['error']}")
                bar.update(1)
    except BaseException:
        for ref in running:  # their runs stay 'running' under a dead holder: interrupted, resumed by a rerun
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return [_row(cell, outcomes[i]) for i, cell in enumerate(cells)]


def _for_worker(cfg: Any) -> Any:
    """The cell's config for a worker process: the store by absolute path (a worker's cwd and environment may
    differ), no progress bars."""
    if not dataclasses.is_dataclass(cfg):
        return cfg
    names = {f.name for f in dataclasses.fields(cfg)}
    change: dict[str, Any] = {}
    if "home" in names:
        change["home"] = str(Path(cfg.home or default_home()).expanduser().resolve())
    if "progress" in names:
        change["progress"] = False
    return dataclasses.replace(cfg, **change) if change else cfg


# ------------------------------------------------------------------------------------------------------------ sweep
def sweep_job(pillar: str, job: str, grid: Mapping[str, Sequence[Any]], executor: str = "local",
              address: str | None = None, max_parallel: int | None = None, check: bool = True,
              **fixed: Any) -> SweepResult:
    """Run job ``job`` of pillar ``pillar`` once per combination of the ``grid`` values, the ``fixed`` values (field
    names; strings are converted as the CLI converts them) set in every cell.

    Every cell's config is built and validated before any cell runs. Cells already done are returned from the store
    (status ``cached``), cells another process holds are waited for, a failing cell does not stop the others.
    Writes a JSON summary to ``<home>/sweeps/<pillar>-<job>-<hash>.json``. With ``check`` (default), a sweep with
    failed cells raises :class:`SweepFailed` (its ``result`` holds the rows) after writing the summary."""
    return _sweep(_job_spec(pillar, job), grid, executor, address, max_parallel, check, fixed)


def _sweep(spec: _JobSpec, grid: Mapping[str, Sequence[Any]], executor: str, address: str | None,
           max_parallel: int | None, check: bool, fixed: Mapping[str, Any]) -> SweepResult:
    from ..validate import check_choice, check_int

    check_choice("executor", executor, EXECUTORS)
    check_int("max_parallel", max_parallel, none_ok=True, example=4)
    if executor == "local" and (address is not None or max_parallel is not None):
        raise SuperalignError(f"--{'address' if address is not None else 'max-parallel'} applies to --executor ray",
                              "add --executor ray, or drop it (local runs one cell at a time)")
    cells, parsed_grid, fixed_dests = expand_grid(spec, grid, fixed)
    kinds = [k.name for k in spec.pillar.kinds]
    progress = bool(fixed_dests.get("progress", True))
    t0 = time.perf_counter()
    if executor == "ray":
        rows = _run_ray(spec, cells, kinds, progress, address, max_parallel)
    else:
        rows = _run_local(spec, cells, kinds, progress)
    res = SweepResult(spec.pillar.name, spec.job.name, parsed_grid, rows, wall_s=time.perf_counter() - t0,
                      fixed=fixed_dests)
    identity = {"pillar": res.pillar, "job": res.job, "grid": parsed_grid,
                "fixed": {k: v for k, v in fixed_dests.items() if k not in NOT_IN_HASH}}
    home = Path(fixed_dests.get("home") or default_home()).expanduser()
    res.path = home / "sweeps" / f"{res.pillar}-{res.job}-{content_hash(identity)}.json"
    counts = {f"n_{s}": sum(r["status"] == s for r in rows) for s in ("done", "cached", "failed")}
    write_json_atomic(res.path, {**identity, "executor": executor, "n_cells": len(rows), **counts,
                                 "wall_s": res.wall_s, "rows": rows}, indent=1)
    if check and res.failed:
        raise SweepFailed(res)
    return res


class SweepFailed(SuperalignError):
    """Some cells of a sweep failed (the others are done and stored); ``result`` has every row."""

    def __init__(self, result: SweepResult):
        self.result = result
        bad = result.failed
        listed = "; ".join(f"{' '.join(f'{k}={_show(v)}' for k, v in r['cell'].items())}: {r['error']}"
                           for r in bad[:3])
        more = "; …" if len(bad) > 3 else ""
        super().__init__(f"{len(bad)} of {len(result.rows)} sweep cells failed ({listed}{more})",
                         f"fix the cause and rerun the same sweep: finished cells are reused; summary: {result.path}")


# ------------------------------------------------------------------------------------------------------ command line
DESCRIPTION = ("Run a job of any pillar once per combination of --grid values (every other flag is the job's own, "
                "fixed for every cell). Finished cells come from the run store, so an interrupted sweep resumes; "
                "cells run one after another here or as Ray tasks (--executor ray). Prints one row per cell and "
                "writes a JSON summary under <home>/sweeps/.")


def parse_grid_args(items: Sequence[str]) -> dict[str, list[str]]:
    """``["lr=1e-4,3e-4", "seed=0,1"]`` → ``{"lr": ["1e-4", "3e-4"], "seed": ["0", "1"]}`` (values still strings)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SuperalignError(f"--grid {item!r} is not KEY=V1,V2", "e.g. --grid lr=1e-4,3e-4")
        if key in grid:
            raise SuperalignError(f"--grid {key} is given twice", f"list all its values once: --grid {key}=V1,V2")
        vals = [v.strip() for v in values.split(",")]
        if not any(vals):
            raise SuperalignError(f"--grid {key} has no values", f"list them: --grid {key}=V1,V2")
        if not all(vals):
            raise SuperalignError(f"--grid {item!r} has an empty value", "separate values by single commas")
        grid[key] = vals
    return grid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`superalign sweep PILLAR JOB …`: the job's flags depend on PILLAR and JOB, so everything after them is parsed
    by :func:`command` against that job's flags."""
    parser.add_argument("pillar", help="the pillar (w2s, rlhf, interp, debate, …)")
    parser.add_argument("job", help="one of its jobs (e.g. rlhf sft); `superalign sweep PILLAR JOB --help` lists "
                                    "its flags")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="...",
                        help="--grid KEY=V1,V2 (repeatable), --executor local|ray, --address, --max-parallel, and "
                             "the job's own flags")


def command(ns: argparse.Namespace) -> int:
    """Run `superalign sweep`: print the table and the summary's path; exit 1 when some cells failed."""
    spec = _job_spec(ns.pillar, ns.job, skip_sweep_flags=True)
    args = spec.parser.parse_args(ns.args)
    given = vars(args)
    grid = parse_grid_args(given.pop("grid"))
    executor, address, max_parallel = given.pop("executor"), given.pop("address"), given.pop("max_parallel")
    res = _sweep(spec, grid, executor, address, max_parallel, False, given)
    print(res.table())
    counts = ", ".join(f"{sum(r['status'] == s for r in res.rows)} {s}" for s in ("done", "cached", "failed"))
    print(f"\n{len(res.rows)} cells ({counts}) in {res.wall_s:.1f} s; summary: {res.path}")
    if res.failed:
        err = SweepFailed(res)
        print(f"superalign: error: {err}", file=sys.stderr)
        return 1
    return 0
