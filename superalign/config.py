"""Typed config dataclasses and the argparse CLI generated from them.

Every job has one dataclass; each field carries its help text in ``metadata["help"]`` and validation lives in
``__post_init__`` (raising :class:`SuperalignError`). :func:`add_dataclass_args` turns such a dataclass into
command-line flags, so the CLI and the Python API cannot drift apart.
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


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per dataclass field (underscores become dashes); help from the field's
    ``metadata["help"]`` or its docstring."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = (f.metadata.get("help") or docs.get(f.name, "")).replace("%", "%%") + f" (default: {default})"
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        if tp is bool:
            kwargs.update(type=_str2bool, nargs="?", const=True, metavar="BOOL")
        elif tp is dict or typing.get_origin(tp) is dict:
            kwargs.update(type=json.loads, metavar="JSON")
        else:
            kwargs.update(type=tp)
            if is_list:
                kwargs["nargs"] = "+"
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def from_args(cls: type[T], ns: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from parsed args: only flags the user gave override the dataclass defaults."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kw = {k: v for k, v in vars(ns).items() if k in names}
    kw.update(overrides)
    return cls(**kw)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
