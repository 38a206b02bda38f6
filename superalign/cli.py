"""The `superalign` command line: one command per research pillar (w2s, rlhf, interp, debate), each job's flags
generated from its config dataclass, plus `runs`, `report`, `tasks` and `models`."""

from __future__ import annotations

import argparse
import errno
import json
import math
import sys
import time
from pathlib import Path

from .config import add_dataclass_args, from_args
from .errors import SuperalignError


def print_run(r: dict) -> None:
    """The default way a job's result is shown: scalar metrics, the last samples, examples, artefacts, run id."""
    m = r["metrics"]
    scal = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    width = max(map(len, scal), default=0)
    for k, v in scal.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    for s in m.get("samples", [])[-4:]:
        print("sample:", json.dumps(s, ensure_ascii=False))
    for s in m.get("examples", []):
        print("example:", json.dumps(s, ensure_ascii=False))
    for k, v in r["artefacts"].items():
        print(f"{k}: {v}")
    print(f"\nrun {r['id']} ({'already done: stored result' if r.get('cached') else 'stored'}); "
          "see `superalign runs show` and `superalign report`.")


def _job(ns: argparse.Namespace) -> int:
    """Run one job of any pillar: build its config from the flags, run it, show the result."""
    from .pillars import resolve

    job = ns._pillar_job
    result = resolve(job.run)(from_args(job.config_class(), ns))
    (resolve(job.show) if job.show is not None else print_run)(result)
    return 0


def _runs(ns: argparse.Namespace) -> int:
    from .runs import RunStore

    store = RunStore(ns.home, create=False)  # read only: a missing store lists as empty, nothing is created
    if ns.runs_cmd == "list":
        rows = store.list(kind=ns.kind, status=ns.status)
        if not rows:
            print(f"no runs in {store.db_path}")
            return 0
        wid, wkind, wstat = (max(len(h), *(len(r[k]) for r in rows)) for h, k in
                             (("id", "id"), ("kind", "kind"), ("status", "status")))
        print(f"{'id':<{wid}} {'kind':<{wkind}} {'status':<{wstat}} {'created':<19} summary")
        for r in rows:
            print(f"{r['id']:<{wid}} {r['kind']:<{wkind}} {r['status']:<{wstat}} "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['created_at'] or 0))} {_summary(r)}")
        return 0
    r = store.get(ns.id) or store.find(ns.id)
    if r is None:
        raise SuperalignError(f"no run with id {ns.id!r} in {store.db_path}", "see `superalign runs list`")
    print(json.dumps(r, indent=2, default=str))
    return 0


def _summary(r: dict) -> str:
    """Key config and headline metrics of a run, as its pillar declares them for its kind."""
    from .pillars import headline_metrics, key_config

    def show(v) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.4g}"
        return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    cfg = " ".join(f"{k}={show(v)}" for k, v in key_config(r, limit=6))
    met = " ".join(f"{k}={show(v)}" for k, v in headline_metrics(r, limit=6))
    err = f" error: {r['error'].splitlines()[-1][:120]}" if r.get("error") else ""
    return f"{cfg} | {met}{err}" if cfg and met else f"{cfg}{met}{err}"


def _report(ns: argparse.Namespace) -> int:
    from .runs import RunStore
    from .runs.report import write_report

    store = RunStore(ns.home, create=False)  # read only: a missing store reports as empty, nothing is created
    out = write_report(store, ns.out, kinds=ns.kind)
    print(f"wrote {out}")
    return 0


def _list(ns: argparse.Namespace) -> int:
    if ns.cmd == "tasks":
        from .data import list_tasks
        items = list_tasks()
    else:
        from .models import list_models
        items = list_models()
    for k, v in items.items():
        print(f"{k:<24} {v}")
    return 0


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad command lines (unknown flag, a value of the wrong type, a choice not offered) are one line
    ``superalign: error: <command>: <problem>; see `<command> --help``` and exit status 2, like every other bad input
    (argparse would print the whole usage first). Subcommand parsers inherit the class."""

    def error(self, message: str):
        where = self.prog.removeprefix("superalign").strip()
        line = " ".join(f"{where + ': ' if where else ''}{message}".split())
        self.exit(2, f"superalign: error: {line}; see `{self.prog} --help`\n")


def _help(text: str) -> str:
    """argparse %-formats help strings: a literal % must be doubled."""
    return text.replace("%", "%%")


def _add_pillar(sub, pillar) -> None:
    """`superalign <pillar> <job|command>`: one subcommand per declared job (flags from its config) or command."""
    from .pillars import resolve

    pp = sub.add_parser(pillar.name, help=_help(pillar.help), description=pillar.help)
    psub = pp.add_subparsers(dest=f"{pillar.name.replace('-', '_')}_cmd", required=True, metavar="COMMAND")
    for job in pillar.jobs:
        cls = job.config_class()
        doc = (job.description or (cls.__doc__ or "").strip() or job.help)
        sp = psub.add_parser(job.name, help=_help(job.help), description=doc)
        add_dataclass_args(sp, cls, single=job.single)
        sp.set_defaults(fn=_job, _pillar_job=job)
    for cmd in pillar.commands:
        sp = psub.add_parser(cmd.name, help=_help(cmd.help), description=cmd.description or cmd.help)
        resolve(cmd.add_arguments)(sp)
        sp.set_defaults(fn=resolve(cmd.run))


def build_parser() -> argparse.ArgumentParser:
    from .pillars import known_kinds, pillars

    p = OneLineErrorParser(prog="superalign", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for pillar in pillars():
        _add_pillar(sub, pillar)

    kinds = ", ".join(known_kinds())
    r = sub.add_parser("runs", help="list or show stored runs")
    rsub = r.add_subparsers(dest="runs_cmd", required=True)
    rl = rsub.add_parser("list", help="one line per run: id, kind, status, key config | headline metrics")
    rl.add_argument("--kind", help=_help(f"only runs of this kind ({kinds}, ...)"))
    rl.add_argument("--status", choices=("running", "done", "interrupted", "failed"))
    rs = rsub.add_parser("show", help="a run's config, metrics, artefacts and compute as JSON")
    rs.add_argument("id", help="run id (or a unique prefix)")
    for sp in (rl, rs):
        sp.add_argument("--home", help="run store folder (else $SUPERALIGN_HOME or ./superalign_runs)")
        sp.set_defaults(fn=_runs)

    rep = sub.add_parser("report", help="one self-contained HTML report of the run store")
    rep.add_argument("--out", default="superalign_report.html", help="output HTML file")
    rep.add_argument("--kind", action="append", help=_help(f"only runs of this kind (repeatable: {kinds}, ...); "
                                                           "default: all"))
    rep.add_argument("--home", help="run store folder (else $SUPERALIGN_HOME or ./superalign_runs)")
    rep.set_defaults(fn=_report)

    for name in ("tasks", "models"):
        sub.add_parser(name, help=f"list registered {name}").set_defaults(fn=_list)

    from .runs.sweep import DESCRIPTION, add_arguments, command
    sw = sub.add_parser("sweep", help="run any pillar's job over a grid of its config values (resumes; local or Ray)",
                        description=DESCRIPTION)
    add_arguments(sw)
    sw.set_defaults(fn=command)
    return p


def _file_in_traceback(tb, suffixes: tuple[str, ...] = ()) -> str | None:
    """The file an exception was raised while reading, when the exception does not name it (JSON, UTF-8 and
    safetensors errors do not): the innermost frame's path-like local (a ``Path``, or a ``str`` under a path-ish
    name) that is an existing file, preferring one with a matching suffix."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    fallback = None
    for frame in reversed(frames):
        for name, v in frame.f_locals.items():
            if isinstance(v, Path) or (isinstance(v, str) and name in ("path", "filename", "file", "fname", "p")
                                       and 0 < len(v) < 4096):
                try:
                    if not Path(v).is_file():
                        continue
                except (OSError, ValueError):
                    continue
                if not suffixes or str(v).endswith(suffixes):
                    return str(v)
                fallback = fallback or str(v)
    return fallback


_OS_FIXES = {
    errno.EACCES: ("permission denied", "check its permissions or pass another path (--home, --out)"),
    errno.EPERM: ("operation not permitted", "check its permissions or pass another path (--home, --out)"),
    errno.EISDIR: ("is a folder where a file is expected", "pass a file path, or move the folder away"),
    errno.ENOTDIR: ("has a file where a folder is expected in its path", "pass a path made of folders"),
    errno.EROFS: ("is on a read-only file system", "pass a writable location (--home, --out)"),
    errno.ENOSPC: ("no space left on the device", "free some space or pass another --home / --out"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or pass another --home / --out"),
    errno.ENOENT: ("does not exist", "check the path"),
    errno.ENAMETOOLONG: ("name is too long", "pass a shorter path"),
}


def storage_error(e: BaseException, ns: argparse.Namespace | None = None) -> str | None:
    """A one-line ``<problem naming the file>; <fix>`` for storage and file errors (the environment, not a bug in
    superalign), or None for anything else, which keeps its traceback."""
    import sqlite3

    if isinstance(e, OSError):
        name = e.filename or _file_in_traceback(e.__traceback__)
        if e.filename2:
            name = f"{name} → {e.filename2}"
        problem, fix = _OS_FIXES.get(e.errno, (e.strerror or str(e), "check the path and its permissions"))
        where = f"{name}: " if name else ""
        return f"{where}{problem} ({type(e).__name__}); {fix}"
    if isinstance(e, sqlite3.DatabaseError):
        from .runs.store import default_home
        home = getattr(ns, "home", None)
        db = (Path(home).expanduser() if home else default_home()) / "runs.db"
        if isinstance(e, sqlite3.OperationalError):
            return f"run store {db}: {e}; check the file and its folder, or pass another --home"
        return (f"run store {db} is corrupt or not a database ({e}); move it aside (keep it for recovery) and "
                "rerun, or pass another --home")
    if isinstance(e, UnicodeDecodeError):
        name = _file_in_traceback(e.__traceback__)
        return (f"{name or 'a file read'} is not UTF-8 (byte {e.start}: {e.reason}); save it as UTF-8 text or pass "
                "the right file")
    if isinstance(e, json.JSONDecodeError):
        name = _file_in_traceback(e.__traceback__, (".json", ".jsonl"))
        return (f"{name or 'a JSON input'} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); fix or "
                "re-create the file")
    if type(e).__name__ == "SafetensorError":
        name = _file_in_traceback(e.__traceback__, (".safetensors",))
        return (f"{name or 'a safetensors file'} cannot be read as safetensors ({e}); it is damaged or not a "
                "checkpoint: rerun the job that wrote it, or pass the right folder")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:  # named against the subcommand that got them, not the top-level parser argparse would blame
        cmd = " ".join(x for x in (ns.cmd, getattr(ns, f"{ns.cmd.replace('-', '_')}_cmd", None)) if x)
        parser.exit(2, f"superalign: error: {cmd}: unrecognized arguments: {' '.join(extra)}; "
                       f"see `superalign {cmd} --help`\n")
    try:
        return ns.fn(ns)
    except SuperalignError as e:
        print(f"superalign: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `superalign runs list | head`
        return 0
    except KeyboardInterrupt:
        print("superalign: interrupted; finished runs are saved — rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - storage and file errors become one line; any other is re-raised
        msg = storage_error(e, ns)
        if msg is None:
            raise  # a bug in superalign: keep the traceback
        print(f"superalign: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
