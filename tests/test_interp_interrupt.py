"""Interrupted and damaged activation caches: an interruption leaves no temporary folder behind and keeps the
finished shards, the next run resumes from them and writes exactly what an uninterrupted run writes; stale
temporary folders of dead processes are removed; a truncated or corrupt shard or meta.json is a miss, never a
permanent failure."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from superalign.errors import SuperalignError
from superalign.interp import activations
from superalign.interp.activations import cache_activations, cache_problem, load_activations

WORDS = ["the", "food", "was", "good", "staff", "rude", "hotel", "view", "room", "nice", "slow", "and"]
TEXTS = [" ".join(WORDS[(i * j + i) % len(WORDS)] for j in range(1 + i % 7)) for i in range(24)]
SETTINGS = {"hook": "layers.1", "model_name": "tiny", "batch_size": 3, "shard_tokens": 12, "progress": False}


@pytest.fixture(scope="module")
def bert(tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    return tok, AutoModel.from_pretrained(tiny_bert).eval()


@pytest.fixture(scope="module")
def ref_folder(bert, tmp_path_factory):
    """The cache folder of an uninterrupted run."""
    tok, model = bert
    return cache_activations(model, tok, TEXTS, out_dir=tmp_path_factory.mktemp("ref") / "c", **SETTINGS)


@pytest.fixture(scope="module")
def reference(ref_folder):
    return load_activations(ref_folder)


def assert_same(a, b):
    for x, y in zip(a[:4], b[:4], strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert a.meta == b.meta


def temporaries(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp"))


def interrupt_at(monkeypatch, model, call: int, exc=RuntimeError):
    """Make the ``call``-th forward pass (1-based) raise ``exc``; returns the list of calls made."""
    calls = []
    forward = model.forward

    def counting(*a, **kw):
        calls.append(1)
        if len(calls) == call:
            raise exc("simulated interruption")
        return forward(*a, **kw)

    monkeypatch.setattr(model, "forward", counting)
    return calls


def test_interruption_keeps_finished_shards_and_resume_equals_an_uninterrupted_run(bert, reference, tmp_path,
                                                                                   monkeypatch):
    tok, model = bert
    n_batches = -(-len(TEXTS) // SETTINGS["batch_size"])
    interrupt_at(monkeypatch, model, 6, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(model, tok, TEXTS, out_dir=tmp_path / "c", **SETTINGS)
    assert temporaries(tmp_path) == [] and not (tmp_path / "c").exists()
    progress = json.loads((tmp_path / ".c.partial" / "progress.json").read_text())
    finished = progress["shards"]
    assert finished and finished[-1]["end_batch"] <= 5  # what the five good batches filled is kept
    monkeypatch.undo()
    calls = interrupt_at(monkeypatch, model, 10 ** 9)
    resumed = load_activations(cache_activations(model, tok, TEXTS, out_dir=tmp_path / "c", **SETTINGS))
    assert len(calls) == n_batches - finished[-1]["end_batch"]  # the finished batches were not run again
    assert_same(resumed, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", "c"]  # no partial or temporary folder left
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["meta.json", *reference.meta["shards"]]


def test_an_exception_while_a_shard_is_written_leaves_no_temporary_file(bert, reference, tmp_path, monkeypatch):
    tok, model = bert
    import safetensors.torch

    real_save = safetensors.torch.save_file
    saves = []

    def torn_save(tensors, path, *a, **kw):
        saves.append(path)
        if len(saves) == 2:
            with open(path, "wb") as f:
                f.write(b"half a shard")
            raise OSError("disk full")
        return real_save(tensors, path, *a, **kw)

    monkeypatch.setattr(safetensors.torch, "save_file", torn_save)
    with pytest.raises(OSError, match="disk full"):
        cache_activations(model, tok, TEXTS, out_dir=tmp_path / "c", **SETTINGS)
    assert temporaries(tmp_path) == []
    assert [s["name"] for s in json.loads((tmp_path / ".c.partial/progress.json").read_text())["shards"]] == \
        ["shard_00000.safetensors"]
    monkeypatch.undo()
    assert_same(load_activations(cache_activations(model, tok, TEXTS, out_dir=tmp_path / "c", **SETTINGS)), reference)


def test_a_corrupt_finished_shard_is_recomputed_on_resume(bert, reference, tmp_path, monkeypatch, caplog):
    tok, model = bert
    interrupt_at(monkeypatch, model, 7)
    with pytest.raises(RuntimeError):
        cache_activations(model, tok, TEXTS, out_dir=tmp_path / "c", **SETTINGS)
    monkeypatch.undo()
    shards = json.loads((tmp_path / ".c.partial/progress.json").read_text())["shards"]
    assert len(shards) >= 2
    second = tmp_path / ".c.partial" / shards[1]["name"]
    second.write_bytes(second.read_bytes()[:-7])  # truncated
    calls = interrupt_at(monkeypatch, model, 10 ** 9)
    out = cache_activations(model, tok, TEXTS, out_dir=tmp_path / "c", **SETTINGS)
    assert "unreadable" in caplog.text and len(calls) == 8 - shards[0]["end_batch"]
    assert_same(load_activations(out), reference)


def test_changed_inputs_do_not_resume_from_another_runs_shards(bert, tmp_path, monkeypatch):
    tok, model = bert
    interrupt_at(monkeypatch, model, 6)
    with pytest.raises(RuntimeError):
        cache_activations(model, tok, TEXTS, out_dir=tmp_path / "c", **SETTINGS)
    monkeypatch.undo()
    other = [t + " again" for t in TEXTS]
    got = load_activations(cache_activations(model, tok, other, out_dir=tmp_path / "c", **SETTINGS))
    fresh = load_activations(cache_activations(model, tok, other, out_dir=tmp_path / "fresh", **SETTINGS))
    assert_same(got, fresh)


def test_stale_temporary_folders_of_dead_processes_are_removed(bert, reference, tmp_path):
    tok, model = bert
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now belongs to no process
    stale = tmp_path / f".c.{dead.pid}.tmp"
    (stale / "sub").mkdir(parents=True)
    (stale / "shard_00000.safetensors").write_bytes(b"old")
    alive = tmp_path / f".c.{os.getppid()}.tmp"  # a live process's folder is not ours to delete
    alive.mkdir()
    out = cache_activations(model, tok, TEXTS, out_dir=tmp_path / "c", **SETTINGS)
    assert not stale.exists() and alive.exists()
    assert_same(load_activations(out), reference)
    assert activations.pid_alive(os.getpid()) and not activations.pid_alive(dead.pid)


def test_a_second_writer_of_the_same_cache_is_refused(bert, tmp_path):
    from filelock import FileLock

    tok, model = bert
    with FileLock(str(tmp_path / ".c.lock")):
        with pytest.raises(SuperalignError, match="another process is writing"):
            cache_activations(model, tok, TEXTS, out_dir=tmp_path / "c", **SETTINGS)


@pytest.mark.parametrize("damage", ["truncate shard", "delete shard", "garbage meta", "truncate meta"])
def test_a_damaged_cache_is_named_by_load_and_found_by_cache_problem(ref_folder, reference, tmp_path, damage):
    import shutil

    src = tmp_path / "c"
    shutil.copytree(ref_folder, src)
    assert cache_problem(src) is None
    shard = src / reference.meta["shards"][0]
    if damage == "truncate shard":
        shard.write_bytes(shard.read_bytes()[:100])
    elif damage == "delete shard":
        shard.unlink()
    elif damage == "garbage meta":
        (src / "meta.json").write_bytes(b"\x00\xff not json")
    else:
        (src / "meta.json").write_text((src / "meta.json").read_text()[:20])
    assert cache_problem(src)
    with pytest.raises(SuperalignError, match="is damaged.*interp cache command again"):
        load_activations(src)



@pytest.mark.parametrize("damage", ["truncate shard", "garbage meta"])
def test_interp_cache_recomputes_a_damaged_finished_cache(tiny_bert, tmp_path, damage, caplog):
    from superalign.interp.jobs import CacheJob, run_cache

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    job = CacheJob(home=str(tmp_path / "h"), model=f"hf:{tiny_bert}", texts=str(corpus), hook="layers.1",
                   batch_size=4, progress=False)
    first = run_cache(job)
    folder = first["artefacts"]["cache"]
    before = load_activations(folder)
    assert run_cache(job)["cached"]
    shard = os.path.join(folder, before.meta["shards"][0])
    if damage == "truncate shard":
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) // 2)
    else:
        with open(os.path.join(folder, "meta.json"), "wb") as f:
            f.write(b"{\"model\": ")
    again = run_cache(job)
    assert "is damaged" in caplog.text and again["artefacts"]["cache"] == folder and again["status"] == "done"
    assert_same(load_activations(folder), before)
    assert run_cache(job)["cached"]


def test_interp_cache_job_interrupted_then_rerun_resumes(tiny_bert, tmp_path, monkeypatch):
    """Through the job: the interrupted run is recorded as failed, leaves no temporary folder, and the rerun of the
    same config resumes from the finished shards in the run's artefact folder to the uninterrupted result."""
    import functools

    import safetensors.torch

    from superalign.interp.jobs import CacheJob, run_cache
    from superalign.runs.store import RunStore

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    kw = {"model": f"hf:{tiny_bert}", "texts": str(corpus), "hook": "layers.1", "batch_size": 3, "progress": False}
    monkeypatch.setattr(activations, "cache_activations",
                        functools.partial(activations.cache_activations, shard_tokens=12))
    ref = load_activations(run_cache(CacheJob(home=str(tmp_path / "ref"), **kw))["artefacts"]["cache"])
    real_save, saves = safetensors.torch.save_file, []

    def interrupted_save(*a, **k):
        saves.append(1)
        if len(saves) == 3:
            raise KeyboardInterrupt
        return real_save(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted_save)
    job = CacheJob(home=str(tmp_path / "h"), **kw)
    with pytest.raises(KeyboardInterrupt):
        run_cache(job)
    (row,) = RunStore(job.home).list(kind="interp-cache")
    assert row["status"] in ("failed", "interrupted") and temporaries(tmp_path / "h") == []
    assert (tmp_path / "h" / "artefacts" / row["id"] / ".acts.partial" / "progress.json").exists()
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (saves.append(1), real_save(*a, **k)))
    saves.clear()
    res = run_cache(job)
    assert res["status"] == "done" and len(saves) == len(ref.meta["shards"]) - 2  # two shards were kept
    got = load_activations(res["artefacts"]["cache"])
    assert_same(got._replace(meta={}), ref._replace(meta={}))
    assert {k: v for k, v in got.meta.items() if k != "texts_spec"} == \
        {k: v for k, v in ref.meta.items() if k != "texts_spec"}
