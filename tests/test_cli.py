import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest

from superalign.cli import main
from superalign.config import add_dataclass_args, from_args


@dataclass
class Toy:
    """A toy config."""

    a: int = field(default=1, metadata={"help": "an int"})
    names: list[str] = field(default_factory=lambda: ["x"], metadata={"help": "names"})
    flag: bool = field(default=False, metadata={"help": "a flag"})
    opt: str | None = field(default=None, metadata={"help": "optional"})
    m: dict | None = field(default=None, metadata={"help": "json"})


def test_cli_generated_from_dataclass():
    p = argparse.ArgumentParser()
    add_dataclass_args(p, Toy)
    assert from_args(Toy, p.parse_args([])) == Toy()
    t = from_args(Toy, p.parse_args(["--a", "3", "--names", "p", "q", "--flag", "--opt", "z", "--m", '{"k": 1}']))
    assert t == Toy(3, ["p", "q"], True, "z", {"k": 1})
    assert from_args(Toy, p.parse_args(["--flag", "false"])).flag is False
    assert "an int (default: 1)" in p.format_help()


def test_cli_run_list_show_report(home, tmp_path, capsys):
    args = ["--home", str(home), "--task", "textblob-polarity", "--weak", "bow", "--strong", "minilm-l2",
            "--loss", "xent", "--seed", "0", "--max-examples", "600", "--epochs", "5", "--n-boot", "100",
            "--progress", "false"]
    assert main(["w2s", "run", *args]) == 0
    out = capsys.readouterr().out
    assert "PGR acc" in out and "stored:" in out and "weak-wrong" in out
    assert main(["runs", "list", "--home", str(home), "--kind", "w2s"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("w2s-")][0]
    rid = line.split()[0]
    assert main(["runs", "show", rid[:10], "--home", str(home)]) in (0, 2)
    capsys.readouterr()
    assert main(["runs", "show", rid, "--home", str(home)]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == rid
    out_html = tmp_path / "r.html"
    assert main(["report", "--home", str(home), "--out", str(out_html)]) == 0
    assert out_html.exists() and "<html" in out_html.read_text().lower()


def test_cli_errors_exit_nonzero_one_line(tmp_path, capsys):
    assert main(["w2s", "run", "--home", str(tmp_path / "h"), "--weak", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("superalign: error: unknown model 'nope'") and "\n" not in err
    assert not (tmp_path / "h").exists()
    assert main(["runs", "show", "missing", "--home", str(tmp_path / "h2")]) == 2
    with pytest.raises(SystemExit):
        main(["w2s", "run", "--mode", "bogus"])


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "superalign", "tasks"], capture_output=True, text=True)
    assert r.returncode == 0 and "textblob-polarity" in r.stdout


# ------------------------------------------------------------------------------------------------ --help everywhere

def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (command path, parser) of the argparse tree."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


def test_help_renders_for_every_command_and_subcommand(capsys):
    from superalign.cli import build_parser

    paths = [path for path, _ in _walk(build_parser())]
    assert ("debate",) in paths and ("debate", "report") in paths and ("rlhf", "overopt") in paths
    assert ("w2s", "run") in paths and ("interp", "sae") in paths and ("runs", "list") in paths
    for path in paths:
        with pytest.raises(SystemExit) as e:
            main([*path, "--help"])
        assert e.value.code == 0, f"superalign {' '.join(path)} --help failed"
        assert capsys.readouterr().out.startswith("usage: superalign")


# ------------------------------------------------------------------------------------------------ flag generation

@dataclass
class Inner:
    """A library config."""

    width: int = field(default=4, metadata={"help": "width"})
    coef: float = field(default=0.125, metadata={"help": "weight of the extra term"})
    kind: Literal["a", "b"] = field(default="a", metadata={"help": "which kind"})


@dataclass
class Wrapper:
    """A job wrapping a library config."""

    width: int = field(default=8, metadata={"help": "the job's own width"})
    mode: str = field(default="fast", metadata={"help": "speed", "choices": ("fast", "slow")})
    tags: list[Literal["x", "y"]] = field(default_factory=lambda: ["x"], metadata={"help": "tags"})
    share: float = field(default=0.5, metadata={"help": "share in % of 100% (default 50%)"})
    pct: str = field(default="5%", metadata={"help": "a default with a percent sign"})
    lib: Inner = field(default_factory=Inner, metadata={"help": "the library config (100%)", "skip": ("width",)})


def test_choices_listed_in_help_and_enforced():
    p = argparse.ArgumentParser()
    add_dataclass_args(p, Wrapper)
    text = " ".join(p.format_help().split())
    assert "speed (choices: fast, slow; default: fast)" in text              # metadata choices
    assert "tags (choices: x, y; default: x)" in text                        # list of a Literal
    assert "which kind (choices: a, b; default: a)" in text                  # Literal in a nested config
    assert "share in % of 100% (default 50%) (default: 0.5)" in text and "(default: 5%)" in text  # %-safe
    assert "the library config (100%)" in text and "%%" not in text
    for bad in (["--mode", "medium"], ["--tags", "z"], ["--kind", "c"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    assert from_args(Wrapper, p.parse_args(["--tags", "x", "y", "--mode", "slow"])).tags == ["x", "y"]


def test_nested_config_flattened_and_rebuilt():
    p = argparse.ArgumentParser()
    add_dataclass_args(p, Wrapper)
    assert from_args(Wrapper, p.parse_args([])) == Wrapper()
    w = from_args(Wrapper, p.parse_args(["--width", "16", "--coef", "0.25", "--kind", "b"]))
    assert w.width == 16 and w.lib == Inner(width=4, coef=0.25, kind="b")  # the inner width is not a flag
    assert "--lib" not in p.format_help() and "lib (Inner)" in p.format_help()

    @dataclass
    class Clash:
        width: int = 1
        lib: Inner = field(default_factory=Inner)

    with pytest.raises(TypeError, match="clash"):
        add_dataclass_args(argparse.ArgumentParser(), Clash)

    @dataclass
    class Prefixed:
        width: int = 1
        lib: Inner = field(default_factory=Inner, metadata={"prefix": "lib"})

    q = argparse.ArgumentParser()
    add_dataclass_args(q, Prefixed)
    assert from_args(Prefixed, q.parse_args(["--lib-width", "3", "--width", "2"])) == Prefixed(2, Inner(width=3))


def test_w2s_run_takes_one_weak_and_one_strong_sweep_several(capsys):
    from superalign.cli import build_parser

    p = build_parser()
    ns = p.parse_args(["w2s", "run", "--weak", "bow", "--strong", "minilm-l2"])
    assert ns.weak == ["bow"] and ns.strong == ["minilm-l2"]
    for extra in (["--weak", "bow", "minilm-l1"], ["--strong", "minilm-l2", "minilm-l6"]):
        with pytest.raises(SystemExit):
            p.parse_args(["w2s", "run", *extra])
    assert "unrecognized arguments" in capsys.readouterr().err
    assert p.parse_args(["w2s", "sweep", "--weak", "bow", "minilm-l1"]).weak == ["bow", "minilm-l1"]
    run_help = " ".join(p._subparsers._group_actions[0].choices["w2s"]._subparsers._group_actions[0]
                        .choices["run"].format_help().split())
    assert "[--weak WEAK]" in run_help and "(exactly one here)" in run_help
    assert "[--weak WEAK [WEAK ...]]" not in run_help


# ------------------------------------------------------------------------------------------------ storage errors

@dataclass
class ReadJob:
    """Read a file the way jobs read their inputs."""

    path: str = field(default="", metadata={"help": "file"})
    how: str = field(default="text", metadata={"help": "text, json, safetensors or bug"})


def run_read(job: ReadJob) -> dict:
    from pathlib import Path

    path = Path(job.path)
    if job.how == "json":
        json.loads(path.read_text(encoding="utf-8"))
    elif job.how == "safetensors":
        from safetensors.numpy import load_file
        load_file(str(path))
    elif job.how == "bug":
        return {}["metrics"]
    else:
        path.read_text(encoding="utf-8")
    return {"id": "x", "metrics": {}, "artefacts": {}}


@pytest.fixture()
def reader():
    from superalign.pillars import Job, Pillar, register_pillar, unregister_pillar

    register_pillar(Pillar("readtest", "Read test", "reads a file", jobs=(Job("read", ReadJob, run_read, "read"),)))
    yield
    unregister_pillar("readtest")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("superalign: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_storage_and_file_errors_are_one_line(reader, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["readtest", "read", "--path", str(folder)]) == 2
    err = _one_line_error(capsys)
    assert str(folder) in err and "is a folder" in err and "; pass a file path" in err
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    assert main(["readtest", "read", "--path", str(latin)]) == 2
    err = _one_line_error(capsys)
    assert f"{latin} is not UTF-8" in err
    broken = tmp_path / "cfg.json"
    broken.write_text('{"a": ')
    assert main(["readtest", "read", "--path", str(broken), "--how", "json"]) == 2
    assert f"{broken} is not valid JSON" in _one_line_error(capsys)
    st = tmp_path / "w.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    assert main(["readtest", "read", "--path", str(st), "--how", "safetensors"]) == 2
    err = _one_line_error(capsys)
    assert f"{st} cannot be read as safetensors" in err and "rerun the job that wrote it" in err
    # the report written over a folder: the OSError's file name and a fix
    assert main(["report", "--home", str(tmp_path / "none"), "--out", str(folder)]) == 2
    err = _one_line_error(capsys)
    assert f"report output {folder} is a folder; pass --out {folder / 'superalign_report.html'}" in err


def test_corrupt_run_store_is_one_line(tmp_path, capsys):
    home = tmp_path / "h"
    home.mkdir()
    (home / "runs.db").write_bytes(b"this is not a sqlite database at all" * 100)
    assert main(["runs", "list", "--home", str(home)]) == 2
    err = _one_line_error(capsys)
    assert str(home / "runs.db") in err and ("corrupt" in err or "not a database" in err)


def test_permission_denied_and_full_disk_messages():
    import errno
    import sqlite3

    from superalign.cli import storage_error

    msg = storage_error(PermissionError(errno.EACCES, "Permission denied", "/x/runs.db"))
    assert msg.startswith("/x/runs.db: permission denied") and "; check its permissions" in msg
    assert "read-only file system" in storage_error(OSError(errno.EROFS, "Read-only file system", "/ro/r.html"))
    assert "no space left" in storage_error(OSError(errno.ENOSPC, "No space left on device", "/full/a.db"))
    ns = argparse.Namespace(home="/some/home")
    assert storage_error(sqlite3.DatabaseError("file is not a database"), ns).startswith(
        "run store /some/home/runs.db is corrupt or not a database")
    assert storage_error(ZeroDivisionError("bug")) is None


def test_real_bugs_keep_their_traceback(reader, tmp_path):
    with pytest.raises(KeyError):
        main(["readtest", "read", "--how", "bug"])


def test_interp_sae_sets_nested_topk_config_from_flags():
    from superalign.cli import build_parser
    from superalign.interp.jobs import SAEJob
    from superalign.interp.sae import SAEConfig

    ns = build_parser().parse_args(["interp", "sae", "--cache", "c", "--k", "16", "--aux-k", "64",
                                    "--multi-topk-coef", "0.25"])
    job = from_args(SAEJob, ns)
    assert job.k == 16 and job.topk.aux_k == 64 and job.topk.multi_topk_coef == 0.25
    assert job.key()["topk"] == {"aux_k": 64, "multi_topk_coef": 0.25}
    # at the library defaults the nested config adds nothing to the run's identity (older run ids stay valid)
    assert "topk" not in from_args(SAEJob, build_parser().parse_args(["interp", "sae", "--cache", "c"])).key()
    assert SAEJob(cache="c").topk == SAEConfig()
    assert main(["interp", "sae", "--cache", "c", "--aux-k", "0"]) == 2  # the library config's own validation


def test_interp_sae_nested_flags_reach_the_checkpoint(tiny_bert, tmp_path, capsys):
    from pathlib import Path

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(f'{{"text": "sentence number {i} about food and hotels"}}\n' for i in range(20)))
    home = ["--home", str(tmp_path / "h"), "--progress", "false"]
    assert main(["interp", "cache", *home, "--model", f"hf:{tiny_bert}", "--texts", str(corpus),
                 "--hook", "layers.1"]) == 0
    cache = capsys.readouterr().out.split("cache: ")[1].split()[0]
    assert main(["interp", "sae", *home, "--cache", cache, "--n-latents", "32", "--k", "4", "--epochs", "1",
                 "--batch-size", "64", "--multi-topk", "2", "--multi-topk-coef", "0.5", "--aux-k", "8"]) == 0
    sae_dir = capsys.readouterr().out.split("sae: ")[1].split()[0]
    cfg = json.loads((Path(sae_dir) / "cfg.json").read_text())
    assert cfg["aux_k"] == 8 and cfg["multi_topk_coef"] == 0.5 and cfg["multi_topk"] == 2 and cfg["n_latents"] == 32


def test_bad_command_lines_are_one_line(capsys):
    cases = [(["rlhf", "sft", "--lr", "fast"], "rlhf sft: argument --lr: invalid float value: 'fast'",
              "superalign rlhf sft --help"),
             (["w2s", "run", "--weak", "bow", "minilm-l1"], "w2s run: unrecognized arguments: minilm-l1",
              "superalign w2s run --help"),
             (["debate"], "debate: the following arguments are required: COMMAND", "superalign debate --help"),
             (["w2s", "run", "--mode", "bogus"], "invalid choice: 'bogus'", "superalign w2s run --help")]
    for argv, problem, fix in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "\n" not in err and err.startswith("superalign: error: "), err
        assert problem in err and err.endswith(f"; see `{fix}`"), err
