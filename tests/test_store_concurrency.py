"""Two processes on one run store: claims are atomic, finished runs are never reset or redone, a dead holder's run
reads as interrupted and is taken over, and two identical w2s sweeps at once both report every seed."""

import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from superalign.errors import SuperalignError
from superalign.runs import store as store_mod
from superalign.runs.jobs import JobBase, run_job
from superalign.runs.store import CLAIMED, DONE, HELD, RunStore

# spawn, not fork: a forked child could inherit a sqlite lock held by the parent's heartbeat thread
CTX = mp.get_context("spawn")


def _claim_and_hold(home, rid, barrier, results, release):
    s = RunStore(home)
    barrier.wait()
    results.put((os.getpid(), s.claim(rid, "t", {"x": 1}).state, s.claim("done-run", "t", {"x": 2}).state))
    release.wait(30)  # stay alive (holding or not) until the parent has seen every claim


def test_concurrent_claims_exactly_one_wins_and_dead_holder_is_taken_over(tmp_path):
    s = RunStore(tmp_path)
    s.claim("done-run", "t", {"x": 2})
    s.finish("done-run", {"acc": 0.9})
    finished_at = s.get("done-run")["finished_at"]
    n = 4
    barrier, results, release = CTX.Barrier(n), CTX.Queue(), CTX.Event()
    procs = [CTX.Process(target=_claim_and_hold, args=(str(tmp_path), "r", barrier, results, release))
             for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in range(n)]
    assert sorted(state for _, state, _ in got) == [CLAIMED] + [HELD] * (n - 1)
    assert {done for _, _, done in got} == {DONE}
    winner = next(pid for pid, state, _ in got if state == CLAIMED)
    row = s.get("r")
    assert row["status"] == "running" and row["pid"] == winner and s.claim("r", "t", {"x": 1}).state == HELD
    release.set()
    for p in procs:
        p.join(30)
    # the holder exited without finishing: its run reads as interrupted (never 'running' forever) ...
    assert s.get("r")["status"] == "interrupted"
    assert [r["id"] for r in s.list(status="interrupted")] == ["r"] and s.list(status="running") == []
    # ... and the next claim takes it over
    c = s.claim("r", "t", {"x": 1})
    assert c.state == CLAIMED and c.before == "interrupted"
    assert s.get("r")["status"] == "running" and s.get("r")["pid"] == os.getpid()
    assert s.finish("r", {"acc": 0.5}) and s.get("r")["status"] == "done"
    # the done run was never reset by any of the claims
    d = s.get("done-run")
    assert d["status"] == "done" and d["metrics"] == {"acc": 0.9} and d["finished_at"] == finished_at


def test_done_run_is_never_reset_and_only_the_holder_writes(tmp_path):
    s = RunStore(tmp_path)
    assert s.start("a", "t", {"x": 1}).claimed
    assert s.finish("a", {"acc": 0.7}, {"p": "x"}, {"wall_s": 1.0})
    before = s.get("a")
    assert s.claim("a", "t", {"x": 1}).state == DONE and s.start("a", "t", {"x": 1}).state == DONE
    assert not s.fail("a", "boom") and not s.finish("a", {"acc": 0.1})
    assert s.get("a") == before
    # a run held by another live process (our parent) is neither finished nor failed from here
    s.claim("b", "t", {"x": 2})
    with sqlite3.connect(s.db_path) as c:
        c.execute("UPDATE runs SET pid=? WHERE id='b'", (os.getppid(),))
    store_mod._release(s, "b")
    assert s.get("b")["status"] == "running" and s.claim("b", "t", {"x": 2}).state == HELD
    assert not s.finish("b", {"acc": 0.3}) and not s.fail("b", "boom")
    assert s.get("b")["status"] == "running" and s.get("b")["metrics"] == {}


def test_heartbeat_and_other_hosts(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "HEARTBEAT_INTERVAL_S", 0.05)
    s = RunStore(tmp_path)
    s.claim("a", "t", {})
    first = s.get("a")["heartbeat_at"]
    deadline = time.time() + 5
    while s.get("a")["heartbeat_at"] == first and time.time() < deadline:
        time.sleep(0.05)
    assert s.get("a")["heartbeat_at"] > first  # the daemon thread refreshes the row while it is held
    s.finish("a", {})
    # a holder on another host is judged by its heartbeat alone
    now = time.time()
    with sqlite3.connect(s.db_path) as c:
        c.execute("INSERT INTO runs (id, kind, status, config, created_at, pid, host, heartbeat_at) VALUES "
                  "('fresh', 't', 'running', '{}', ?, 1, 'elsewhere', ?), "
                  "('stale', 't', 'running', '{}', ?, 1, 'elsewhere', ?)",
                  (now, now, now, now - store_mod.HEARTBEAT_TIMEOUT_S - 1))
    assert s.get("fresh")["status"] == "running" and s.get("stale")["status"] == "interrupted"
    assert s.claim("fresh", "t", {}).state == HELD and s.claim("stale", "t", {}).before == "interrupted"
    s.fail("stale", "x")


def test_old_store_is_migrated_and_its_running_rows_read_interrupted(tmp_path):
    with sqlite3.connect(tmp_path / "runs.db") as c:  # the schema before holders were recorded
        c.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, group_id TEXT, status TEXT NOT NULL, "
                  "config TEXT NOT NULL, metrics TEXT, artefacts TEXT, compute TEXT, code_version TEXT, "
                  "created_at REAL, finished_at REAL, error TEXT)")
        c.execute("INSERT INTO runs (id, kind, status, config, created_at) VALUES ('old', 'w2s', 'running', '{}', 1)")
    s = RunStore(tmp_path)
    with sqlite3.connect(s.db_path) as c:
        cols = {r[1] for r in c.execute("PRAGMA table_info(runs)")}
    assert {"pid", "host", "heartbeat_at"} <= cols
    assert s.get("old")["status"] == "interrupted" and s.claim("old", "w2s", {}).claimed
    s.fail("old", "x")


def _hold_then_finish(home, ready):
    s = RunStore(home)
    s.claim(store_mod.run_id("test-job", JobBase(home=home).key()), "test-job", JobBase(home=home).key())
    ready.set()
    time.sleep(0.6)
    s.finish(store_mod.run_id("test-job", JobBase(home=home).key()), {"value": 42.0})


def test_run_job_waits_for_another_process_and_does_not_redo(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(store_mod, "WAIT_POLL_S", 0.05)
    ready = CTX.Event()
    p = CTX.Process(target=_hold_then_finish, args=(str(tmp_path), ready))
    p.start()
    assert ready.wait(30)
    r = run_job("test-job", JobBase(home=str(tmp_path)), lambda store, d: pytest.fail("the held run was redone"))
    p.join(30)
    assert r["status"] == "done" and r["metrics"] == {"value": 42.0} and r["cached"]
    assert "waiting for run test-job-" in capsys.readouterr().err


def test_sweep_result_refuses_runs_that_are_not_done(tmp_path):
    from superalign.w2s.sweep import W2SResult

    s = RunStore(tmp_path)
    s.claim("w2s-a", "w2s", {"seed": 0})
    s.fail("w2s-a", "boom")
    with pytest.raises(SuperalignError, match=r"2 of the 2 requested w2s runs are not done: w2s-a \(failed\), "
                                              r"w2s-b \(missing\)"):
        W2SResult(None, [s.get("w2s-a"), {"id": "w2s-b", "status": "missing"}], "g", s)


def test_sweep_fails_loudly_when_a_run_is_not_recorded(tmp_path, monkeypatch):
    import numpy as np

    from superalign import w2s
    from superalign.w2s.pipeline import Experiment

    monkeypatch.setattr(Experiment, "prepare_features", lambda self, seeds=None: None)
    monkeypatch.setattr(Experiment, "run_cell", lambda self, cell: ({"student_acc": 0.7}, {"y": np.zeros(4)},
                                                                     {"history": []}))
    monkeypatch.setattr(RunStore, "finish", lambda self, *a, **k: True)  # a write that is lost
    with pytest.raises(SuperalignError, match="did not end done: w2s-"):
        w2s.sweep(home=str(tmp_path), task="textblob-polarity", weak=["bow"], strong=["minilm-l1"], loss=["xent"],
                  seed=[0], max_examples=200, epochs=1, n_boot=20, progress=False)
    monkeypatch.undo()
    s = RunStore(tmp_path)
    assert [r["status"] for r in s.list(kind="w2s")] == ["failed"]
    assert [r["status"] for r in s.list(kind="w2s-sweep")] == ["failed"]


# ---------------------------------------------------------------- the reviewer's reproduction, end to end

SWEEP = ["w2s", "sweep", "--task", "textblob-polarity", "--weak", "bow", "--strong", "minilm-l1", "--loss", "xent",
         "aux_conf", "--seed", "0", "1", "2", "--max-examples", "200", "--epochs", "3", "--n-boot", "50",
         "--progress", "false"]


@pytest.mark.slow  # two processes each load torch and MiniLM: ~30 s alone, more on a busy machine
def test_two_identical_sweeps_at_once_share_the_work_and_both_report_three_seeds(tmp_path):
    """The reviewer's reproduction: before claims, the second sweep reset the first's runs to 'running' and
    redid all of them, and the first could print a PGR pooled over 2 seeds instead of 3."""
    home = tmp_path / "home"
    RunStore(home)
    with sqlite3.connect(home / "runs.db") as c:  # log every write that finishes a w2s run
        c.execute("CREATE TABLE finish_log (id TEXT, finished_at REAL)")
        c.execute("CREATE TRIGGER log_finish AFTER UPDATE OF finished_at ON runs "
                  "WHEN NEW.kind = 'w2s' AND NEW.status = 'done' "
                  "BEGIN INSERT INTO finish_log VALUES (NEW.id, NEW.finished_at); END")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "superalign", *SWEEP, "--home", str(home)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(1.0)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    for p, (out, err) in zip((first, second), outs):
        assert p.returncode == 0, err[-2000:]
        rows = [ln.split() for ln in out.splitlines() if ln.startswith("textblob-polarity")]
        assert [(r[3], r[4]) for r in rows] == [("xent", "3"), ("aux_conf", "3")], out  # pooled from 3 seeds
    s = RunStore(home)
    runs = s.list(kind="w2s")
    assert len(runs) == 6 and {r["status"] for r in runs} == {"done"}
    with sqlite3.connect(home / "runs.db") as c:
        log = c.execute("SELECT id, count(*) FROM finish_log GROUP BY id").fetchall()
    assert sorted(log) == sorted((r["id"], 1) for r in runs)  # each run finished once: never redone or reset
    assert [r["status"] for r in s.list(kind="w2s-sweep")] == ["done"]
