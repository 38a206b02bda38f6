"""One source of truth for config defaults: a CLI job's default that differs from its library config's is listed
beside the job (``CLI_OVERRIDES = {field: (library, cli, why)}``, TRL style) and shown in its ``--help``; any other
difference fails here. Also: every config field documents itself the one way (``metadata["help"]``)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from superalign.config import field_docs
from superalign.pillars import pillars, resolve
from superalign.runs.jobs import JobBase


def _jobs() -> list[tuple[str, type]]:
    out = []
    for p in pillars():
        for job in p.jobs:
            out.append((f"{p.name} {job.name}", resolve(job.config)))
    return out


JOBS = _jobs()


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _library_bases(cls: type) -> tuple[type, ...]:
    """The library configs a job builds on: those it names (``CLI_BASES``), else its dataclass bases other than
    JobBase."""
    named = getattr(cls, "CLI_BASES", None)
    if named:
        return tuple(named)
    return tuple(b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b) and b is not JobBase
                 and not issubclass(JobBase, b))


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)


def differences(cls: type) -> dict[str, tuple]:
    """{field: (library default, CLI default)} for every field whose default differs from its library config's."""
    out = {}
    bases = _library_bases(cls)
    for f in dataclasses.fields(cls):
        for base in bases:
            lib = {g.name: g for g in dataclasses.fields(base)}.get(f.name)
            if lib is None:
                continue
            if not _same(_default(lib), _default(f)):
                out[f.name] = (_default(lib), _default(f))
            break
    return out


def test_the_walk_covers_every_command():
    names = {n for n, _ in JOBS}
    assert {"w2s run", "rlhf sft", "rlhf rm", "rlhf ppo", "rlhf dpo", "rlhf bon", "rlhf overopt", "interp cache",
            "interp sae", "interp explain", "interp score", "debate train-judge", "debate run"} <= names


@pytest.mark.parametrize("name, cls", JOBS, ids=[n for n, _ in JOBS])
def test_every_cli_default_that_differs_from_the_library_is_documented(name, cls):
    diffs = differences(cls)
    documented = getattr(cls, "CLI_OVERRIDES", {})
    undocumented = {k: v for k, v in diffs.items() if k not in documented}
    assert not undocumented, (f"`superalign {name}` defaults differ from the library without notice: {undocumented}; "
                              f"make them equal or list them in {cls.__name__}'s CLI_OVERRIDES")
    stale = sorted(set(documented) - set(diffs))
    assert not stale, f"{cls.__name__}.CLI_OVERRIDES lists {stale}, which no longer differ: drop them"
    for k, (lib, cli, why) in documented.items():
        assert _same(lib, diffs[k][0]) and _same(cli, diffs[k][1]), \
            f"{cls.__name__}.CLI_OVERRIDES[{k!r}] says {lib!r} → {cli!r}, the code has {diffs[k]}"
        assert why.strip(), f"{cls.__name__}.CLI_OVERRIDES[{k!r}] gives no reason"


@pytest.mark.parametrize("name, cls", [(n, c) for n, c in JOBS if getattr(c, "CLI_OVERRIDES", None)],
                         ids=[n for n, c in JOBS if getattr(c, "CLI_OVERRIDES", None)])
def test_overrides_are_shown_in_help(name, cls, capsys):
    from superalign.cli import main

    with pytest.raises(SystemExit):
        main([*name.split(), "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for k in cls.CLI_OVERRIDES:
        assert f"--{k.replace('_', '-')} " in text and "differ from the library" in text, (name, k)


def test_the_known_differences_are_listed():
    """The differences the reviewer found (DPO lr 5e-6 vs 1e-4, SAE batch 4096 vs 1024) are the documented ones."""
    from superalign.interp.jobs import SAEJob
    from superalign.rlhf.jobs import DPOJob

    assert DPOJob.CLI_OVERRIDES["lr"][:2] == (5e-6, 1e-4)
    assert SAEJob.CLI_OVERRIDES["batch_size"][:2] == (4096, 1024)


def test_a_new_undocumented_difference_fails():
    """The check itself: a job that re-declares a library default without listing it is caught."""
    from superalign.rlhf.sft import SFTConfig

    @dataclasses.dataclass
    class Sneaky(SFTConfig, JobBase):
        batch_size: int = 7

    assert differences(Sneaky) == {"batch_size": (32, 7)}


def _all_configs() -> list[type]:
    """Every config dataclass a command is built from, with its library bases."""
    seen: list[type] = []
    for _, cls in JOBS:
        for c in (cls, *_library_bases(cls), *[b for b in cls.__mro__ if dataclasses.is_dataclass(b)]):
            if c not in seen:
                seen.append(c)
    return seen


@pytest.mark.parametrize("cls", _all_configs(), ids=lambda c: c.__name__)
def test_one_field_doc_style(cls):
    """Every field has its help in metadata["help"] (validate.help_field / runs.jobs._f); no attribute docstrings."""
    missing = [f.name for f in dataclasses.fields(cls) if f.init and not f.metadata.get("help")]
    assert not missing, f"{cls.__name__}: fields without metadata['help']: {missing}"
    own = set(cls.__dict__.get("__annotations__", {}))
    docstring_style = sorted(own & set(field_docs(cls)))
    assert not docstring_style, f"{cls.__name__}: attribute docstrings under {docstring_style}; use help_field"
