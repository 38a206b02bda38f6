import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field

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
    args = ["--home", str(home), "--task", "textblob-polarity", "--weak", "bow", "--strong", "minilm-l2", "--loss", "xent",
            "--seed", "0", "--max-examples", "600", "--epochs", "5", "--n-boot", "100", "--progress", "false"]
    assert main(["w2s", "run", *args]) == 0
    out = capsys.readouterr().out
    assert "PGR acc" in out and "stored:" in out and "weak-wrong" in out
    assert main(["runs", "list", "--home", str(home), "--kind", "w2s"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("w2s-")][0]
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
