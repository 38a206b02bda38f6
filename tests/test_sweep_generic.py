"""`superalign sweep <pillar> <job> --grid …`: grid expansion and value parsing, bad inputs (one line, nothing
written), a real job end to end through the CLI with resume, a failing cell, and the Ray executor."""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from superalign.cli import main
from superalign.errors import SuperalignError
from superalign.pillars import Job, Pillar, RunKind, register_pillar, unregister_pillar
from superalign.runs import RunStore
from superalign.runs.jobs import JobBase, _f, run_job
from superalign.runs.sweep import SweepFailed, _job_spec, command, expand_grid, parse_grid_args, sweep_job
from superalign.validate import check_int

# the cheapest real job: the debate judge on 64 of scikit-learn's 8×8 digits, one epoch
JUDGE = ["--dataset", "digits", "--epochs", "1", "--threads", "1", "--max-train", "64", "--max-test", "32",
         "--batch-size", "32", "--progress", "false"]


@dataclass
class ToyJob(JobBase):
    """A job with one field of each kind the CLI converts; cell x=2 fails inside its run."""

    x: int = _f(1, "a count ≥ 0")
    mode: str = _f("a", "a or b", choices=("a", "b"))
    flag: bool = _f(False, "a switch")
    limit: int | None = _f(None, "an optional limit")
    max_len: int = _f(8, "a length")
    rate: float = _f(0.5, "a rate")

    def __post_init__(self):
        check_int("x", self.x, minimum=0, example=1)


def run_toy(job: ToyJob) -> dict:
    def body(store, out):
        if job.x == 2:
            raise RuntimeError("x=2 cannot be computed")
        return {"y": job.x * 10 + job.max_len, "z": job.rate}, {}
    return run_job("toy-run", job, body)


@pytest.fixture
def toy():
    register_pillar(Pillar(name="toy", title="Toy", help="a test pillar",
                           jobs=(Job("run", ToyJob, run_toy, help="a toy job"),),
                           kinds=(RunKind("toy-run", ("x",), ("y",)),)))
    yield
    unregister_pillar("toy")


def test_grid_expansion_and_values_golden(toy):
    spec = _job_spec("toy", "run")
    grid = parse_grid_args(["mode=a,b", "max-len=4,16", "rate=1e-4,0.3"])
    assert grid == {"mode": ["a", "b"], "max-len": ["4", "16"], "rate": ["1e-4", "0.3"]}
    cells, parsed, fixed = expand_grid(spec, {"mode": ["a", "b"], "max-len": ["4", "16", "32"]},
                                       {"flag": "yes", "limit": "none", "x": 3, "progress": False})
    assert parsed == {"mode": ["a", "b"], "max_len": [4, 16, 32]}
    assert fixed == {"flag": True, "limit": None, "x": 3, "progress": False}
    assert len(cells) == 6
    assert [(c.config.mode, c.config.max_len) for c in cells] == [("a", 4), ("a", 16), ("a", 32), ("b", 4),
                                                                   ("b", 16), ("b", 32)]
    assert all(isinstance(c.config, ToyJob) and c.config.flag is True and c.config.limit is None and c.config.x == 3
               for c in cells)
    assert cells[4].values == {"mode": "b", "max_len": 16} and cells[4].label == "mode=b max_len=16"
    # typed values (Python API), floats, bools and an optional int
    cells, parsed, _ = expand_grid(spec, {"rate": [1e-4, "3e-4"], "flag": ["false", True], "limit": ["none", "7"]},
                                   {})
    assert parsed == {"rate": [1e-4, 3e-4], "flag": [False, True], "limit": [None, 7]}
    assert len(cells) == 8 and cells[-1].config.limit == 7 and cells[0].config.rate == 1e-4


@pytest.mark.parametrize("argv, match", [
    (["--grid", "nope=1,2"], "has no config field of that name"),
    (["--grid", "x="], "--grid x has no values"),
    (["--grid", "x=1,,2"], "has an empty value"),
    (["--grid", "x"], "is not KEY=V1,V2"),
    (["--grid", "x=1,2", "--x", "3"], "--grid x is also given as a fixed flag --x"),
    (["--grid", "x=1", "--grid", "x=2"], "--grid x is given twice"),
    (["--grid", "x=1,1"], "--grid x lists 1 twice"),
    (["--grid", "x=1,two"], "'two' is not a valid int"),
    (["--grid", "flag=maybe"], "is not a valid boolean"),
    (["--grid", "mode=a,c"], "'c' is not one of the choices"),
    (["--grid", "x=1,-1"], "sweep cell x=-1: --x must be an integer ≥ 0"),
    (["--grid", "x=1", "--device", "cuda:99"], "sweep cell x=1:"),
    (["--x", "1"], "no --grid given"),
    (["--grid", "x=1", "--max-parallel", "2"], "--max-parallel applies to --executor ray"),
    (["--grid", "x=1", "--bogus", "2"], "unrecognized arguments: --bogus"),
])
def test_bad_inputs_one_line_nothing_written(toy, tmp_path, argv, match):
    home = tmp_path / "h"
    # `superalign sweep`'s own entry point: main() would also build every pillar's parser, ~2 s a call here
    with pytest.raises(SuperalignError) as e:
        command(argparse.Namespace(pillar="toy", job="run", args=["--home", str(home), "--progress", "false", *argv]))
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not home.exists()  # no store, no summary: every cell is validated before any run


def test_bad_input_exit_2_through_main(toy, tmp_path, capsys):
    home = tmp_path / "h"
    assert main(["sweep", "toy", "run", "--grid", "x=1,2,-1", "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "superalign: error: sweep cell x=-1: --x must be an integer ≥ 0, got -1; pass e.g. --x 1"
    assert not home.exists()


def test_bad_pillar_and_job():
    with pytest.raises(SuperalignError, match="no pillar named 'nope'; choose one of: w2s, rlhf"):
        command(argparse.Namespace(pillar="nope", job="run", args=["--grid", "x=1"]))
    with pytest.raises(SuperalignError, match="`superalign debate report` is a command without a config, not a job"):
        command(argparse.Namespace(pillar="debate", job="report", args=["--grid", "x=1"]))
    with pytest.raises(SuperalignError, match="has no job named 'x'"):
        sweep_job("debate", "x", {"k": [1]})


def test_failing_cell_goes_on_and_is_listed(toy, tmp_path, capsys):
    home = tmp_path / "h"
    assert main(["sweep", "toy", "run", "--grid", "x=1,2,3", "--home", str(home), "--progress", "false"]) == 1
    cap = capsys.readouterr()
    assert "1 of 3 sweep cells failed (x=2: RuntimeError: x=2 cannot be computed)" in cap.err
    lines = cap.out.splitlines()
    assert lines[0].split() == ["x", "status", "y", "wall_s", "run"]
    assert lines[1].split()[:3] == ["1", "done", "18"] and lines[3].split()[:3] == ["3", "done", "38"]
    assert lines[2].split()[:2] == ["2", "failed"]
    store = RunStore(home)
    assert sorted(r["status"] for r in store.list(kind="toy-run")) == ["done", "done", "failed"]
    summary = json.loads(Path(cap.out.rsplit("summary: ", 1)[1].strip()).read_text())
    assert (summary["n_done"], summary["n_cached"], summary["n_failed"]) == (2, 0, 1)
    failed = summary["rows"][1]
    assert failed["status"] == "failed" and store.get(failed["run_id"])["status"] == "failed"
    assert "RuntimeError" in failed["traceback"]
    # the Python API raises after the other cells, with every row
    with pytest.raises(SweepFailed) as e:
        sweep_job("toy", "run", {"x": [1, 2]}, home=str(home), progress=False)
    assert [r["status"] for r in e.value.result.rows] == ["cached", "failed"]


def test_real_job_through_cli_then_all_cached(tmp_path, capsys):
    home = tmp_path / "h"
    argv = ["sweep", "debate", "train-judge", "--grid", "k=3,4", "--grid", "seed=0,1", "--home", str(home), *JUDGE]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[1:5]]
    assert out.splitlines()[0].split() == ["k", "seed", "status", "judge_acc", "n_train", "wall_s", "run"]
    assert [r[:3] for r in rows] == [["3", "0", "done"], ["3", "1", "done"], ["4", "0", "done"], ["4", "1", "done"]]
    store = RunStore(home)
    runs = store.list(kind="debate-judge")
    assert len(runs) == 4 and {(r["config"]["k"], r["config"]["seed"]) for r in runs} == {(3, 0), (3, 1), (4, 0),
                                                                                           (4, 1)}
    path = Path(out.rsplit("summary: ", 1)[1].strip())
    assert path.parent == home / "sweeps" and path.name.startswith("debate-train-judge-")
    first = json.loads(path.read_text())
    assert first["n_done"] == 4 and first["grid"] == {"k": [3, 4], "seed": [0, 1]}
    assert all(r["wall_s"] > 0 and 0 <= r["metrics"]["judge_acc"] <= 1 for r in first["rows"])
    assert all((Path(r["artefacts"]["judge"]) / "model.safetensors").exists() for r in first["rows"])
    finished = {r["id"]: r["finished_at"] for r in runs}

    assert main(argv) == 0  # rerun: every cell from the store, nothing recomputed
    out = capsys.readouterr().out
    assert [line.split()[2] for line in out.splitlines()[1:5]] == ["cached"] * 4
    assert {r["id"]: r["finished_at"] for r in store.list(kind="debate-judge")} == finished
    assert json.loads(path.read_text())["n_cached"] == 4


@pytest.mark.slow  # starting a local Ray instance alone takes ~20 s on a busy 2-core machine
def test_ray_executor(toy, tmp_path):
    ray = pytest.importorskip("ray")
    import sys

    # Ray workers cannot import this test module: ship the toy job's class and function by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    home = tmp_path / "h"
    try:
        with pytest.raises(SweepFailed) as e:
            sweep_job("toy", "run", {"x": [1, 2, 3]}, executor="ray", max_parallel=2, home=str(home), progress=False)
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    res = e.value.result
    assert [r["status"] for r in res.rows] == ["done", "failed", "done"]
    assert [r["metrics"] for r in res.rows] == [{"y": 18}, {}, {"y": 38}]
    assert "x=2 cannot be computed" in res.rows[1]["error"]
    store = RunStore(home)  # the workers claimed and recorded their runs in the driver's store
    assert sorted(r["status"] for r in store.list(kind="toy-run")) == ["done", "done", "failed"]
    local = sweep_job("toy", "run", {"x": [1, 3]}, home=str(home), progress=False)
    assert [r["status"] for r in local.rows] == ["cached", "cached"]


TWO_SWEEPS = """
import os, sys, time
from dataclasses import dataclass
from superalign.pillars import Job, Pillar, RunKind, register_pillar
from superalign.runs.jobs import JobBase, _f, run_job
from superalign.runs.sweep import sweep_job

@dataclass
class SlowJob(JobBase):
    x: int = _f(0, "a cell")

def run_slow(job):
    def body(store, out):
        with open(os.environ["SWEEP_LOG"], "a") as f:
            f.write(f"{job.x} {os.getpid()}\\n")
        time.sleep(1.5)
        return {"y": job.x}, {}
    return run_job("slow-run", job, body)

register_pillar(Pillar(name="slow", title="Slow", help="two sweeps at once",
                       jobs=(Job("run", SlowJob, run_slow, help="a slow job"),), kinds=(RunKind("slow-run"),)))
res = sweep_job("slow", "run", {"x": [0, 1, 2, 3]}, home=sys.argv[1], progress=False)
print(" ".join(r["status"] for r in res.rows))
"""


@pytest.mark.slow  # two processes each import torch (the job's device is resolved): ~20 s on a busy machine
def test_two_identical_sweeps_at_once_compute_each_cell_once(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "sweep_twice.py"
    script.write_text(TWO_SWEEPS)
    env = {**os.environ, "SWEEP_LOG": str(tmp_path / "computed.log")}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "h")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    statuses = [out.split() for out, _ in outs]
    computed = sorted(int(line.split()[0]) for line in (tmp_path / "computed.log").read_text().splitlines())
    assert computed == [0, 1, 2, 3]  # every cell computed once, by one of the two sweeps
    for cell in range(4):  # the other sweep took that cell's finished run from the store
        assert sorted(s[cell] for s in statuses) == ["cached", "done"], statuses
    assert [r["status"] for r in RunStore(tmp_path / "h").list(kind="slow-run")] == ["done"] * 4
