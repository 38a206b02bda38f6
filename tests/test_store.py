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
