import json
from pathlib import Path

import pytest
import torch

from superalign.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # the jobs set --threads


def test_debate_cli_train_run_report(tmp_path, capsys):
    home = str(tmp_path / "h")
    assert main(["debate", "train-judge", "--home", home, "--dataset", "digits", "--epochs", "1", "--lr", "1e-3",
                 "--k", "4", "--threads", "1", "--progress", "false"]) == 0
    out = capsys.readouterr().out
    judge = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("judge: ")][0]
    assert (Path(judge) / "model.safetensors").exists() and "judge_acc" in out
    assert main(["debate", "run", "--home", home, "--judge", judge, "--k", "4", "--n-images", "3",
                 "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "debate_acc" in out and "judge_alone_acc" in out and "consultancy_acc" in out
    tr = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("transcript: ")][0]
    rows = [json.loads(line) for line in Path(tr).read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["moves"]) == 4 for r in rows)
    assert all(r["shape"] == [8, 8] for r in rows)
    assert main(["debate", "report", tr]) == 0
    assert "judge accuracy" in capsys.readouterr().out
    # the run store's HTML report: judges, debates, reliability diagram and the deciding games
    assert main(["report", "--home", home, "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "Scalable oversight: debate" in html and "Sparse-pixel judges" in html and "Deciding games" in html
    assert html.count("<img") >= 2


def test_debate_cli_errors(tmp_path, capsys):
    assert main(["debate", "train-judge", "--home", str(tmp_path / "h"), "--k", "0"]) == 2
    assert "k must be ≥ 1" in capsys.readouterr().err
    assert main(["debate", "train-judge", "--home", str(tmp_path / "h"), "--data", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("superalign: error: MNIST file not found") and "\n" not in err
    assert main(["debate", "run", "--home", str(tmp_path / "h"), "--judge", str(tmp_path)]) == 2
    assert "no judge checkpoint" in capsys.readouterr().err
    assert main(["debate", "report", str(tmp_path / "none.jsonl")]) == 2
    # too few nonzero pixels for k: refused before a store is created
    home = tmp_path / "h2"
    assert main(["debate", "train-judge", "--home", str(home), "--dataset", "digits", "--epochs", "1", "--k", "4",
                 "--threads", "1", "--progress", "false"]) == 0
    out = capsys.readouterr().out
    judge = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("judge: "))
    n_runs = len(list((home / "artefacts").iterdir()))
    assert main(["debate", "run", "--home", str(home), "--judge", judge, "--k", "70", "--n-images", "2"]) == 2
    assert "fewer than k=70" in capsys.readouterr().err
    assert len(list((home / "artefacts").iterdir())) == n_runs
