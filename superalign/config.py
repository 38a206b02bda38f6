"""Typed config dataclasses and the argparse CLI generated from them.

Every job has one dataclass; each field carries its help text in ``metadata["help"]`` and validation lives in
``__post_init__`` (raising :class:`SuperalignError`). :func:`add_dataclass_args` turns such a dataclass into
command-line flags, so the CLI and the Python API cannot drift apart: enum-like fields (``metadata["choices"]``,
``Literal`` types) list and enforce their choices, a nested config dataclass (a job wrapping a library config) is
flattened into flags and rebuilt by :func:`from_args`, and all help text is safe for argparse's %-formatting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_list) for annotations like ``int``, ``str | None`` or ``list[str]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True
    return tp, False


def _literal_choices(tp: Any) -> tuple | None:
    """The values of a ``Literal[...]`` annotation (None for any other type)."""
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def field_choices(f: dataclasses.Field, hint: Any) -> tuple | None:
    """The allowed values of a field: ``metadata["choices"]`` (a tuple, or a callable returning one, so registries
    can fill it when the parser is built), else the values of a ``Literal`` annotation; None when free."""
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    if choices is None:
        choices = _literal_choices(_base_type(hint)[0])
    return tuple(choices) if choices is not None else None


def _nested_type(hint: Any) -> type | None:
    """The dataclass a field holds (``Inner`` or ``Inner | None``), else None."""
    tp, is_list = _base_type(hint)
    return tp if not is_list and isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if v.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after a field, sparsify style), through the class hierarchy."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _pct_safe(text: str) -> str:
    """Help text for argparse, which %-formats it: a literal % must be doubled."""
    return text.replace("%", "%%")


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _show(v: Any) -> str:
    """A default or choice as the user would type it (lists space-separated, None as none)."""
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v)) if v else "[]"
    return "none" if v is None else str(v)


class _OneAsList(argparse.Action):
    """Store one value as a one-element list (a list field that this command takes exactly once)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [values])


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                       single: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per dataclass field (underscores become dashes); help from the field's
    ``metadata["help"]`` or its docstring, with its choices and default.

    - Enum-like fields (``metadata["choices"]`` or a ``Literal`` type) list their choices and argparse enforces them.
    - ``single`` names list fields that this command takes exactly once (``--weak bow``, stored as ``["bow"]``).
    - A field holding a config dataclass (a job wrapping a library config) is flattened: each of its fields becomes
      a flag of its own name (``metadata["skip"]`` lists inner fields the job sets itself and does not expose;
      ``metadata["prefix"]`` prefixes the inner flags, e.g. ``"sae"`` gives ``--sae-k``). :func:`from_args`
      rebuilds the nested object. A flag name used twice is a programming error (``TypeError``)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    taken: set[str] = set()
    outer = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        dest = f.name
        nested = _nested_type(hints[f.name])
        if nested is not None:
            inner_prefix = f.metadata.get("prefix")
            clash = sorted(outer & {x.name for x in dataclasses.fields(nested)} - set(f.metadata.get("skip", ())))
            if clash and not inner_prefix:
                raise TypeError(f"{cls.__name__}.{f.name}: nested fields {clash} clash with the outer fields; "
                                "list them in metadata['skip'] or give a metadata['prefix']")
            # a group's description is not %-formatted by argparse (unlike help strings): no escaping here
            group = parser.add_argument_group(f"{f.name} ({nested.__name__})",
                                              f.metadata.get("help") or docs.get(f.name, "") or None)
            _add_nested(group, nested, dest, f, taken)
            continue
        _add_flag(parser, f, hints[f.name], docs, dest, "--" + f.name.replace("_", "-"), f.name in single, taken)


def _add_nested(group, nested: type, dest: str, f: dataclasses.Field, taken: set[str]) -> None:
    hints = typing.get_type_hints(nested)
    docs = field_docs(nested)
    inner_skip = set(f.metadata.get("skip", ()))
    prefix = f.metadata.get("prefix")
    for g in dataclasses.fields(nested):
        if not g.init or g.name in inner_skip:
            continue
        if _nested_type(hints[g.name]) is not None:
            raise TypeError(f"{nested.__name__}.{g.name}: configs nest one level deep only")
        name = f"{prefix}_{g.name}" if prefix else g.name
        _add_flag(group, g, hints[g.name], docs, f"{dest}.{g.name}", "--" + name.replace("_", "-"), False, taken)


def _add_flag(parser, f: dataclasses.Field, hint: Any, docs: dict[str, str], dest: str, flag: str, single: bool,
              taken: set[str]) -> None:
    if flag in taken:
        raise TypeError(f"flag {flag} is defined twice (field {dest})")
    taken.add(flag)
    tp, is_list = _base_type(hint)
    default = _default(f)
    choices = field_choices(f, hint)
    text = f.metadata.get("help") or docs.get(f.name, "")
    if single and is_list:
        text += " (exactly one here)"
    notes = ([f"choices: {', '.join(map(_show, choices))}"] if choices else []) + [f"default: {_show(default)}"]
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS,
                              "help": _pct_safe(f"{text} ({'; '.join(notes)})".strip())}
    if tp is bool:
        kwargs.update(type=_str2bool, nargs="?", const=True, metavar="BOOL")
    elif tp is dict or typing.get_origin(tp) is dict:
        kwargs.update(type=json.loads, metavar="JSON")
    else:
        lit = _literal_choices(tp)
        kwargs.update(type=type(lit[0]) if lit else tp)
        if is_list:
            if single:
                kwargs["action"] = _OneAsList
            else:
                kwargs["nargs"] = "+"
        if choices or "." in dest:
            # the choices are listed in the help, so the usage line names the value instead of repeating them all;
            # a nested field is named by its flag, not by its dest (lib.width)
            kwargs["metavar"] = f.name.upper()
        if choices:
            kwargs["choices"] = choices
    parser.add_argument(flag, **kwargs)


def from_args(cls: type[T], ns: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from parsed args: only flags the user gave override the dataclass defaults; a nested config
    dataclass is rebuilt from its default with the inner flags the user gave."""
    given = vars(ns)
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        if f.name in given:
            kw[f.name] = given[f.name]
            continue
        nested = _nested_type(hints[f.name])
        if nested is not None:
            inner = {k[len(f.name) + 1:]: v for k, v in given.items() if k.startswith(f.name + ".")}
            if inner:
                base = _default(f)
                kw[f.name] = dataclasses.replace(base, **inner) if base is not None else nested(**inner)
    kw.update(overrides)
    return cls(**kw)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
