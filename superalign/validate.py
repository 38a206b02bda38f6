"""Small checks shared by every config's ``__post_init__``: each raises a one-line :class:`SuperalignError` that names
the flag (``--batch-size``, from the field name) and a fix, before anything touches the run store.

Also :func:`help_field`, the one way configs document their fields (``metadata["help"]``, shown by ``--help``), and
:func:`document_cli_overrides`, which lists where a CLI job's default differs from its library config.

    from superalign.validate import check_positive, check_seed, help_field

    @dataclass
    class MyConfig:
        lr: float = help_field(1e-4, "Adam learning rate")
        seed: int = help_field(0, "seed of the initialisation")

        def __post_init__(self):
            check_positive("lr", self.lr)
            check_seed("seed", self.seed)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import SuperalignError

SEED_LIMIT = 2 ** 32
"""seeds must be below this (numpy's and torch's generators take 32-bit seeds on every platform)"""


def flag(name: str) -> str:
    """The command-line flag of a config field: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


def help_field(default: Any, help_: str, **metadata: Any) -> Any:
    """A dataclass field with its help text in ``metadata["help"]``; list, dict and set defaults become a
    ``default_factory`` (tuples stay as given)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help_, **metadata})
    return dataclasses.field(default=default, metadata={"help": help_, **metadata})


def _fail(name: str, what: str, value: Any, example: Any = None) -> None:
    fix = f"pass e.g. {flag(name)} {example}" if example is not None else f"pass {what} to {flag(name)}"
    raise SuperalignError(f"{flag(name)} must be {what}, got {value!r}", fix)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_finite(name: str, value: Any, example: Any = None) -> None:
    """A real number, not NaN or ±inf."""
    if not _is_number(value) or not math.isfinite(value):
        _fail(name, "a finite number", value, example)


def check_positive(name: str, value: Any, example: Any = None, none_ok: bool = False) -> None:
    """A finite number > 0 (learning rates, temperatures, β); ``None`` allowed when ``none_ok``."""
    if value is None and none_ok:
        return
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        _fail(name, "a finite number > 0", value, example)


def check_nonnegative(name: str, value: Any, example: Any = None, none_ok: bool = False) -> None:
    """A finite number ≥ 0 (coefficients that 0 turns off)."""
    if value is None and none_ok:
        return
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        _fail(name, "a finite number ≥ 0", value, example)


def check_range(name: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False,
                example: Any = None) -> None:
    """A finite number in the interval [low, high], with either end open when asked."""
    ok = _is_number(value) and math.isfinite(value) and (value > low if low_open else value >= low) \
        and (value < high if high_open else value <= high)
    if not ok:
        _fail(name, f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}", value, example)


def check_fraction(name: str, value: Any, example: Any = 0.1, allow_zero: bool = False) -> None:
    """A split fraction in (0, 1) (or [0, 1) with ``allow_zero``)."""
    check_range(name, value, 0.0, 1.0, low_open=not allow_zero, high_open=True, example=example)


def check_int(name: str, value: Any, minimum: int = 1, example: Any = None, none_ok: bool = False,
              maximum: int | None = None) -> None:
    """An integer ≥ ``minimum`` (sizes, epochs, steps, limits: minimum 1; counts that 0 turns off: minimum 0);
    ``None`` allowed when ``none_ok`` (documented as "none: no limit" in the field's help)."""
    if value is None and none_ok:
        return
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        what = f"an integer ≥ {minimum}" + (f" and ≤ {maximum}" if maximum is not None else "")
        example = example if example is not None else max(minimum, 1)
        if maximum is not None and isinstance(example, int):
            example = max(minimum, min(example, maximum))
        _fail(name, what, value, example)


def check_seed(name: str, value: Any) -> None:
    """An integer in [0, 2**32)."""
    if not _is_int(value) or not 0 <= value < SEED_LIMIT:
        _fail(name, "an integer in [0, 2**32)", value, 0)


def check_seeds(name: str, values: Iterable[Any]) -> None:
    """A non-empty list of distinct seeds, each in [0, 2**32)."""
    values = list(values)
    if not values:
        raise SuperalignError(f"{flag(name)} is empty", f"pass e.g. {flag(name)} 0 1 2")
    for v in values:
        check_seed(name, v)
    dup = sorted({v for v in values if values.count(v) > 1})
    if dup:
        raise SuperalignError(f"{flag(name)} repeats {', '.join(map(str, dup))}", "pass each seed once")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise SuperalignError(f"{flag(name)} must be one of {', '.join(map(str, choices))}, got {value!r}",
                              f"pass e.g. {flag(name)} {choices[0]}")


def check_at_most(name: str, value: Any, other: str, other_value: Any) -> None:
    """``value ≤ other_value`` (e.g. a minibatch no larger than its batch)."""
    if value > other_value:
        raise SuperalignError(f"{flag(name)} ({value}) must be ≤ {flag(other)} ({other_value})",
                              f"lower {flag(name)} or raise {flag(other)}")


def check_device(name: str, value: Any) -> None:
    """cpu, auto, cuda, cuda:<i> or mps, and present on this machine (``auto`` picks one at run time)."""
    if not isinstance(value, str) or not value:
        _fail(name, "cpu, cuda, cuda:<i>, mps or auto", value, "cpu")
    if value in ("cpu", "auto"):
        return
    kind, _, index = value.partition(":")
    if kind not in ("cuda", "mps") or (index and not index.isdigit()) or (kind == "mps" and index):
        raise SuperalignError(f"{flag(name)}: unknown device {value!r}",
                              f"pass {flag(name)} cpu, cuda, cuda:<i> or auto")
    import torch

    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SuperalignError(f"{flag(name)} {value}: no MPS device on this machine", f"pass {flag(name)} cpu")
        return
    if not torch.cuda.is_available():
        raise SuperalignError(f"{flag(name)} {value}: no CUDA GPU on this machine", f"pass {flag(name)} cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise SuperalignError(f"{flag(name)} {value}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                              f"pass {flag(name)} cuda:0 … cuda:{torch.cuda.device_count() - 1}")


def check_nonempty(name: str, value: Any, example: str) -> None:
    """A required string or list that was left empty."""
    if not value:
        raise SuperalignError(f"no {flag(name)} given", f"pass {flag(name)} {example}")


def check_output_file(name: str, path: str | os.PathLike) -> Path:
    """An output file path: not a folder, in a folder that exists (or can be made). Returns it as a Path."""
    p = Path(path)
    if p.is_dir():
        raise SuperalignError(f"{flag(name)} {p} is a folder", f"pass a file path, e.g. {flag(name)} {p / 'out.html'}")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SuperalignError(f"{flag(name)} {p}: {parent} is a file, not a folder", f"pass another {flag(name)}")
    if not os.access(parent, os.W_OK):
        raise SuperalignError(f"{flag(name)} {p}: cannot write in {parent}", f"pass a writable {flag(name)} path")
    return p


def check_input_file(name: str, path: str | os.PathLike, what: str = "file") -> Path:
    """An input file that exists and is a file."""
    p = Path(path)
    if not p.exists():
        raise SuperalignError(f"{flag(name)}: {what} {p} not found", f"check the path given to {flag(name)}")
    if p.is_dir():
        raise SuperalignError(f"{flag(name)}: {p} is a folder, not a {what}", f"pass the {what} itself")
    return p


def read_text_utf8(path: str | os.PathLike, what: str = "file") -> str:
    """A text file's contents; a missing, unreadable or non-UTF-8 file is a one-line error naming it."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuperalignError(f"{what} {p} not found", "check the path") from None
    except IsADirectoryError:
        raise SuperalignError(f"{what} {p} is a folder", "pass the file itself") from None
    except UnicodeDecodeError as e:
        raise SuperalignError(f"{what} {p} is not UTF-8 text (byte {e.start})", "re-save it as UTF-8") from None
    except OSError as e:
        raise SuperalignError(f"cannot read {what} {p}: {e.strerror or e}",
                              "check the file and its permissions") from None


def read_json_file(path: str | os.PathLike, what: str = "JSON file", fix: str = "") -> Any:
    """A JSON file's contents; missing, non-UTF-8 or corrupt JSON is a one-line error naming the file."""
    import json

    p = Path(path)
    text = read_text_utf8(p, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SuperalignError(f"{what} {p} is corrupt (invalid JSON at line {e.lineno}: {e.msg})",
                              fix or "restore it or recreate the folder") from None


def load_safetensors(path: str | os.PathLike, what: str = "checkpoint", fix: str = "") -> dict:
    """``safetensors.torch.load_file`` with a missing, truncated or garbage file as a one-line error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise SuperalignError(f"{what} {p} not found", fix or "pass a complete checkpoint folder")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SuperalignError(f"{what} {p} is truncated or corrupt ({str(e).splitlines()[0][:120]})",
                              fix or "recreate it (rerun the command that wrote it)") from None


def checkpoint_kind(folder: str | os.PathLike) -> str:
    """What a superalign checkpoint folder holds, by its files, for messages like "X is an SAE checkpoint, not a
    reward model" ('' for anything else)."""
    p = Path(folder)
    if not p.is_dir():
        return ""
    if (p / "sae.safetensors").exists():
        return "an SAE checkpoint"
    if (p / "reward_head.safetensors").exists():
        return "a reward model"
    if (p / "config.json").exists():  # a Hugging Face model folder (a policy): whatever else it holds
        return ""
    if (p / "model.safetensors").exists() and (p / "cfg.json").exists():
        return "a debate judge"
    if (p / "meta.json").exists() and any(p.glob("*.safetensors")):
        return "an activation cache"
    if (p / "explanations.jsonl").exists():
        return "an explain run's folder"
    return ""


def document_cli_overrides(base: type | tuple[type, ...], overrides: dict[str, tuple[Any, Any, str]]):
    """Class decorator for a CLI job built on library configs (``base``: one dataclass or several, the first that
    has a field gives its library default): appends to the job's docstring (its ``--help`` description) each default
    that differs from the library's, ``{field: (library, cli, why)}``, and keeps them as ``cls.CLI_BASES`` and
    ``cls.CLI_OVERRIDES`` (tests/test_config_defaults.py checks the list is complete and true)."""
    bases = base if isinstance(base, tuple) else (base,)

    def owner(name: str) -> str:
        return next((b.__name__ for b in bases if name in {f.name for f in dataclasses.fields(b)}), "?")

    def deco(cls):
        cls.CLI_OVERRIDES = dict(overrides)
        cls.CLI_BASES = bases
        if overrides:
            lines = "; ".join(f"{flag(k)} {cli!r} (library {owner(k)}: {lib!r}; {why})"
                              for k, (lib, cli, why) in overrides.items())
            cls.__doc__ = (cls.__doc__ or "").rstrip() + f" CLI defaults that differ from the library: {lines}."
        return cls
    return deco
