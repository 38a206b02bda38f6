import numpy as np

from superalign.runs import RunStore, StageCache, content_hash


def test_store_lifecycle(tmp_path):
    s = RunStore(tmp_path)
    s.start("r1", "w2s", {"a": 1}, "g")
    assert s.get("r1")["status"] == "running" and not s.is_done("r1")
    s.finish("r1", {"acc": 0.5, "nan": float("nan")}, {"preds": "x"}, {"flops_total": 1e9, "wall_s": 1.0})
    r = s.get("r1")
    assert r["status"] == "done" and r["metrics"]["acc"] == 0.5 and r["compute"]["flops_total"] == 1e9
    assert r["code_version"].startswith("0.")
    s.start("r2", "w2s", {"a": 2})
    s.fail("r2", "boom")
    assert s.get("r2")["status"] == "failed" and s.get("r2")["error"] == "boom"
    assert [x["id"] for x in s.list(kind="w2s")] == ["r1", "r2"]
    assert [x["id"] for x in s.list(status="done")] == ["r1"]
    assert s.find("r1")["id"] == "r1"
    assert RunStore(tmp_path).is_done("r1")  # persisted


def test_stage_cache_roundtrip(tmp_path):
    c = StageCache(tmp_path)
    key = {"b": 2, "a": [1, 2]}
    assert c.get("weak", key) is None
    c.put("weak", key, {"p": np.arange(3.0)}, {"acc": 0.7})
    arr, meta = c.get("weak", {"a": [1, 2], "b": 2})  # key order does not matter
    assert arr["p"].tolist() == [0, 1, 2] and meta == {"acc": 0.7}
    assert content_hash(key) != content_hash({"a": [1, 2], "b": 3})
    assert not list(tmp_path.rglob("*.tmp"))


# ---------------------------------------------------------------- storage errors and read-only stores

import os  # noqa: E402
import sqlite3  # noqa: E402
import stat  # noqa: E402

import pytest  # noqa: E402

from superalign.errors import SuperalignError  # noqa: E402
from superalign.runs import store as store_mod  # noqa: E402


def _cli(*argv):
    from superalign.cli import main
    return main(list(argv))


def test_corrupt_store_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "runs.db").write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(SuperalignError, match=r"runs\.db is corrupt or not a SQLite database.*move it away"):
        RunStore(tmp_path)
    with pytest.raises(SuperalignError, match="corrupt"):
        RunStore(tmp_path, create=False).list()
    assert _cli("runs", "list", "--home", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("superalign: error: run store ") and "runs.db" in err and len(err.splitlines()) == 1


def test_truncated_store_is_one_clear_error(tmp_path):
    s = RunStore(tmp_path)
    for i in range(200):
        s.claim(f"r{i}", "w2s", {"i": i, "pad": "x" * 200})
        s.finish(f"r{i}", {"acc": 0.5})
    with sqlite3.connect(s.db_path) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = s.db_path.read_bytes()
    s.db_path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SuperalignError, match=r"runs\.db is corrupt"):
        RunStore(tmp_path).list()


def test_home_that_is_a_file(tmp_path):
    home = tmp_path / "home"
    home.write_text("not a folder")
    for create in (True, False):
        with pytest.raises(SuperalignError, match=r"run store home .*home is a file, not a folder"):
            RunStore(home, create=create)
    with pytest.raises(SuperalignError, match="part of its path is a file"):
        RunStore(home / "sub")


def test_missing_store_is_read_as_empty_and_not_created(tmp_path, capsys):
    home = tmp_path / "missing"
    s = RunStore(home, create=False)
    assert s.list() == [] and s.get("x") is None and s.find("x") is None and not s.is_done("x")
    with pytest.raises(SuperalignError, match="does not exist"):
        s.claim("x", "t", {})
    assert _cli("runs", "list", "--home", str(home)) == 0
    assert "no runs in" in capsys.readouterr().out
    assert _cli("report", "--home", str(home), "--out", str(tmp_path / "r.html")) == 0
    assert (tmp_path / "r.html").exists() and not home.exists()
    from superalign.runs.jobs import JobBase, stored_result
    assert stored_result("t", JobBase(home=str(home))) is None and not home.exists()


def _fill(home):
    s = RunStore(home)
    s.claim("r1", "job", {"a": 1})
    s.finish("r1", {"acc": 0.5})
    s.claim("r2", "job", {"a": 2})
    s.fail("r2", "boom")
    return s


def _check_read_only(home):
    ro = RunStore(home)
    assert ro.read_only
    assert [r["id"] for r in ro.list()] == ["r1", "r2"] and ro.get("r1")["metrics"] == {"acc": 0.5}
    for write in (lambda: ro.claim("r3", "w2s", {}), lambda: ro.artefact_dir("r1"),
                  lambda: ro.record("g", "w2s-sweep", {}, {})):
        with pytest.raises(SuperalignError, match=r"run store .*runs\.db is read-only"):
            write()


def test_read_only_store_can_be_read_not_written(tmp_path, monkeypatch, capsys):
    _fill(tmp_path)
    real = os.access
    monkeypatch.setattr(store_mod.os, "access", lambda p, mode: False if mode & os.W_OK else real(p, mode))
    _check_read_only(tmp_path)  # works as root too: sqlite itself opens the file read-only (mode=ro)
    assert _cli("runs", "list", "--home", str(tmp_path)) == 0
    assert "r1" in capsys.readouterr().out
    assert _cli("report", "--home", str(tmp_path), "--out", str(tmp_path / "report.html")) == 0
    assert (tmp_path / "report.html").stat().st_size > 0


def test_read_only_folder_chmod(tmp_path, capsys):
    home = tmp_path / "home"
    _fill(home)
    home.chmod(stat.S_IRUSR | stat.S_IXUSR)
    (home / "runs.db").chmod(stat.S_IRUSR)
    try:
        if os.access(home, os.W_OK):
            pytest.skip("running as root: chmod does not make the store read-only")
        _check_read_only(home)  # the -shm file cannot be created: sqlite opens it immutable
        assert _cli("runs", "list", "--home", str(home)) == 0
        assert "r2" in capsys.readouterr().out
    finally:
        home.chmod(stat.S_IRWXU)
        (home / "runs.db").chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_runs_list_shows_interrupted_runs(tmp_path, capsys):
    s = RunStore(tmp_path)
    with sqlite3.connect(s.db_path) as c:  # held by a process on another host that stopped beating long ago
        c.execute("INSERT INTO runs (id, kind, status, config, created_at, pid, host, heartbeat_at) "
                  "VALUES ('w2s-x', 'x', 'running', '{}', 1, 1, 'gone-host', 1)")
    assert _cli("runs", "list", "--status", "interrupted", "--home", str(tmp_path)) == 0
    assert "w2s-x" in capsys.readouterr().out and s.list(status="running") == []


def test_corrupt_cache_entry_is_a_miss(tmp_path):
    c = StageCache(tmp_path)
    c.put("weak", {"k": 1}, {"p": np.arange(1000.0)}, {"acc": 0.7})
    p = c.path("weak", {"k": 1})
    p.write_bytes(p.read_bytes()[:200])  # truncated, e.g. by a full disk or an interrupted copy
    with pytest.warns(RuntimeWarning, match=r"stage cache entry .*\.safetensors is unreadable"):
        assert c.get("weak", {"k": 1}) is None
    assert not p.exists()  # deleted, so the stage recomputes and rewrites it
    c.put("weak", {"k": 1}, {"p": np.arange(3.0)}, {"acc": 0.7})
    assert c.get("weak", {"k": 1})[1] == {"acc": 0.7}
    from safetensors.numpy import save_file
    save_file({"p": np.arange(3.0)}, str(p), metadata={"meta": "{not json"})
    with pytest.warns(RuntimeWarning, match="JSONDecodeError"):
        assert c.get("weak", {"k": 1}) is None
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert c.get("weak", {"k": 1}) is None


def test_read_only_store_of_an_older_version_is_readable(tmp_path, monkeypatch):
    with sqlite3.connect(tmp_path / "runs.db") as c:  # the schema before holders (pid, host, heartbeat) were kept
        c.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, group_id TEXT, status TEXT NOT NULL, "
                  "config TEXT NOT NULL, metrics TEXT, artefacts TEXT, compute TEXT, code_version TEXT, "
                  "created_at REAL, finished_at REAL, error TEXT)")
        c.execute("INSERT INTO runs (id, kind, status, config, created_at) VALUES ('a', 'job', 'running', '{}', 1), "
                  "('b', 'job', 'done', '{}', 2)")
    real = os.access
    monkeypatch.setattr(store_mod.os, "access", lambda p, mode: False if mode & os.W_OK else real(p, mode))
    s = RunStore(tmp_path)  # cannot migrate a read-only store: reads work without the new columns
    assert s.read_only and s.statuses(["a", "b", "c"]) == {"a": "interrupted", "b": "done", "c": None}
    assert [r["status"] for r in s.list()] == ["interrupted", "done"] and s.get("a")["pid"] is None
