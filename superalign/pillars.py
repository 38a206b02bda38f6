"""The pillar registry: each research pillar (w2s, rlhf, interp, debate) declares itself in one place, and the CLI,
`superalign runs list` and `superalign report` loop over the registered pillars.

A pillar declares

- its **jobs**: a subcommand each, ``superalign <pillar> <job> --flags``, the flags generated from a config dataclass
  (:func:`superalign.config.add_dataclass_args`), run by a function taking that config;
- its other **commands** (own argparse arguments, e.g. ``superalign debate report FILE``);
- its **run kinds**: the ``kind`` of the runs it records, with the key config fields and headline metrics that
  ``runs list`` and the report's table of runs show;
- its **report section**: a function from its runs (records of the run store) to an HTML fragment.

Declarations name heavy objects as ``"module:attribute"`` strings, imported only when used, so listing pillars or
rendering a report does not import torch. Adding a pillar::

    # superalign/mypillar/pillar.py
    from superalign.pillars import Job, Pillar, RunKind, register_pillar

    register_pillar(Pillar(
        name="mypillar", title="My pillar", help="one line for `superalign --help`",
        jobs=(Job("train", "superalign.mypillar.jobs:TrainJob", "superalign.mypillar.jobs:run_train",
                  help="train the thing"),),
        kinds=(RunKind("mypillar-train", config=("model", "seed"), metrics=("acc",)),),
        section="superalign.mypillar.report:mypillar_section"))

and list the module in :data:`BUILTIN` (a package installed separately registers through the
``superalign.pillars`` entry point group instead). A test or notebook can also call :func:`register_pillar` at
run time; :func:`unregister_pillar` removes it again.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BUILTIN = ("superalign.w2s.pillar", "superalign.rlhf.pillar", "superalign.interp.pillar",
           "superalign.oversight.pillar", "superalign.monitor.pillar")
"""modules that declare the built-in pillars, imported (in this order) the first time the registry is read"""

ENTRY_POINT_GROUP = "superalign.pillars"
"""installed packages register pillars by an entry point in this group pointing at their declaration module"""

RESERVED = frozenset({"runs", "report", "tasks", "models", "sweep"})
"""top-level commands of the CLI itself, not available as pillar names"""

MAX_GENERIC = 12
"""how many scalar config values / metrics a run of an undeclared kind shows"""


def resolve(ref: Any) -> Any:
    """An object, or the object a ``"package.module:attribute"`` string names (imported now)."""
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep or not attr:
        raise ValueError(f"{ref!r} is not a 'module:attribute' reference")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Job:
    """A subcommand ``superalign <pillar> <name>`` whose flags come from a config dataclass."""

    name: str
    """the subcommand"""
    config: type | str
    """the config dataclass (or ``"module:Class"``); one flag per field"""
    run: Callable[[Any], Any] | str
    """called with the config built from the flags; returns the result that ``show`` prints"""
    help: str
    """one line in the pillar's list of subcommands"""
    description: str | None = None
    """the text atop ``--help`` (default: the config's docstring, else ``help``)"""
    show: Callable[[Any], None] | str | None = None
    """prints the result (default: a stored job's metrics, samples and artefacts, then its run id)"""
    single: tuple[str, ...] = ()
    """list fields this subcommand takes exactly once (stored as a one-element list)"""

    def config_class(self) -> type:
        return resolve(self.config)


@dataclass(frozen=True)
class Command:
    """A subcommand ``superalign <pillar> <name>`` with its own argparse arguments."""

    name: str
    add_arguments: Callable[[Any], None] | str
    """called with the subcommand's ``argparse.ArgumentParser``"""
    run: Callable[[Any], int] | str
    """called with the parsed ``argparse.Namespace``; returns the exit status"""
    help: str
    description: str | None = None


@dataclass(frozen=True)
class RunKind:
    """A kind of run a pillar records in the run store, and what a one-line summary of such a run shows."""

    name: str
    """the ``kind`` column of the run store (e.g. ``"rlhf-ppo"``)"""
    config: tuple[str, ...] = ()
    """key config fields, in display order"""
    metrics: tuple[str, ...] = ()
    """headline metrics, in display order"""
    help: str = ""


@dataclass(frozen=True)
class Pillar:
    """One research pillar: its commands, its run kinds and its section of the report."""

    name: str
    """the top-level command (``superalign <name> …``)"""
    title: str
    """the heading of its report section"""
    help: str
    """one line in ``superalign --help``"""
    jobs: tuple[Job, ...] = ()
    commands: tuple[Command, ...] = ()
    kinds: tuple[RunKind, ...] = ()
    section: Callable[[list[dict]], str] | str | None = None
    """its runs (already filtered to its kinds and the report's ``--kind``) → an HTML fragment ("" for none)"""

    def kind_names(self) -> set[str]:
        return {k.name for k in self.kinds}

    def subcommands(self) -> list[str]:
        return [j.name for j in self.jobs] + [c.name for c in self.commands]


_registry: dict[str, Pillar] = {}
_loaded = False


def _load() -> None:
    """Import the built-in declarations and installed entry points once; each registers its pillar."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # before importing: the declaration modules call register_pillar, which calls _load
    for module in BUILTIN:
        importlib.import_module(module)
    try:
        from importlib.metadata import entry_points
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # noqa: BLE001 - broken package metadata must not take the CLI down
        eps = ()
    for ep in eps:
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - a broken third-party pillar is skipped, named in the log
            log.warning("pillar entry point %s could not be loaded: %s", ep.name, e)


def register_pillar(pillar: Pillar, replace: bool = False) -> Pillar:
    """Add ``pillar`` to the registry (its declaration module calls this at import). A second pillar of the same
    name, a reserved name, or two subcommands of one name are errors unless ``replace``."""
    _load()
    if pillar.name in RESERVED:
        raise ValueError(f"pillar name {pillar.name!r} is a built-in command ({', '.join(sorted(RESERVED))})")
    if pillar.name in _registry and not replace:
        raise ValueError(f"pillar {pillar.name!r} is already registered (pass replace=True to replace it)")
    names = pillar.subcommands()
    if len(set(names)) != len(names):
        raise ValueError(f"pillar {pillar.name!r} declares a subcommand twice: {names}")
    others = {k: p.name for p in _registry.values() if p.name != pillar.name for k in p.kind_names()}
    clash = sorted(k for k in pillar.kind_names() if k in others)
    if clash:
        raise ValueError(f"pillar {pillar.name!r} declares run kinds {clash}, already declared by {others[clash[0]]!r}")
    _registry[pillar.name] = pillar
    return pillar


def unregister_pillar(name: str) -> Pillar | None:
    """Remove a pillar from the registry (tests, notebooks); returns it, or None when it was not registered."""
    _load()
    return _registry.pop(name, None)


def pillars() -> list[Pillar]:
    """Every registered pillar, built-in ones first, in registration order."""
    _load()
    return list(_registry.values())


def get_pillar(name: str) -> Pillar:
    _load()
    return _registry[name]


def run_kind(kind: str) -> RunKind | None:
    """The declaration of a run kind, or None when no pillar declares it."""
    for p in pillars():
        for k in p.kinds:
            if k.name == kind:
                return k
    return None


def known_kinds() -> list[str]:
    return [k.name for p in pillars() for k in p.kinds]


def _scalars(d: dict) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None]


def key_config(run: dict, limit: int = MAX_GENERIC) -> list[tuple[str, Any]]:
    """(field, value) pairs that identify a run at a glance: its kind's declared key config fields, or up to
    ``limit`` scalar config values for an undeclared kind."""
    cfg = run.get("config") or {}
    k = run_kind(run.get("kind", ""))
    if k is not None and k.config:
        return [(name, cfg[name]) for name in k.config if name in cfg]
    return _scalars(cfg)[:limit]


def headline_metrics(run: dict, limit: int = MAX_GENERIC) -> list[tuple[str, Any]]:
    """(metric, value) pairs a summary shows: its kind's declared headline metrics, or up to ``limit`` scalar
    metrics for an undeclared kind."""
    m = run.get("metrics") or {}
    k = run_kind(run.get("kind", ""))
    if k is not None and k.metrics:
        return [(name, m[name]) for name in k.metrics if name in m]
    return _scalars(m)[:limit]
