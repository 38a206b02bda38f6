"""Run identities and stage-cache keys: edited inputs are new runs; each stage key covers exactly its inputs."""

import dataclasses
import hashlib
import json
import os
import time

import pytest

from superalign import w2s
from superalign.data import TaskSpec, load_task
from superalign.data import fingerprint as fpmod
from superalign.data.tasks import task_fingerprint
from superalign.runs.cache import content_hash
from superalign.w2s.pipeline import Experiment, cell_run_id, cells

# ------------------------------------------------------------------------------------------------ fingerprints


@pytest.fixture(autouse=True)
def _side_file(tmp_path, monkeypatch):
    monkeypatch.setenv(fpmod.ENV, str(tmp_path / "fps.sqlite"))
    fpmod.forget()


def _age(path, seconds=60):
    """Backdate a file's mtime so it is out of the 'racy' window and its hash may be remembered."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_file_fingerprint_is_sha256_and_remembered(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    p.write_bytes(b"hello")
    _age(p)
    assert fpmod.file_fingerprint(p) == hashlib.sha256(b"hello").hexdigest()
    fpmod.forget()
    calls = []
    monkeypatch.setattr(fpmod, "_sha256", lambda q: calls.append(q) or "x")
    assert fpmod.file_fingerprint(p) == hashlib.sha256(b"hello").hexdigest()  # from the side file, no rehash
    assert calls == []
    p.write_bytes(b"HELLO")  # same size, new mtime: rehashed
    _age(p, 30)
    assert fpmod.file_fingerprint(p) == "x" and len(calls) == 1


def test_recently_modified_file_is_always_rehashed(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"one")
    first = fpmod.file_fingerprint(p)
    st = p.stat()
    p.write_bytes(b"two")  # same size; within one timestamp tick the mtime could even be unchanged
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fpmod.file_fingerprint(p) != first


ROWS = [{"text": f"{w} item {i}", "label": int(w == "good"), "label2": i % 2, "text2": f"x{i}", "grp": i // 2,
         "chosen": f"yes {i}", "rejected": f"no {i}"} for i, w in enumerate(["good", "bad"] * 60)]


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_edited_file_changes_task_and_run_identity(tmp_path):
    p = _write(tmp_path / "data.jsonl", ROWS)
    cfg = w2s.W2SConfig(task=f"file:{p}", home=str(tmp_path / "h"), weak=["bow"], strong=["minilm-l1"], loss=["xent"],
                        seed=[0], progress=False)
    cell = cells(cfg)[0]
    fp0, rid0 = task_fingerprint(TaskSpec(f"file:{p}")), cell_run_id(cfg, cell)
    assert cell_run_id(cfg, cell) == rid0  # stable while nothing changes
    _write(p, ROWS[:-2])
    assert task_fingerprint(TaskSpec(f"file:{p}")) != fp0
    assert cell_run_id(cfg, cell) != rid0
    # an edit that keeps texts, labels and size (only an unused column) is still a new input
    rows = [{**r, "text2": r["text2"].upper()} for r in ROWS[:-2]]
    fp1, rid1 = task_fingerprint(TaskSpec(f"file:{p}")), cell_run_id(cfg, cell)
    _write(p, rows)
    assert task_fingerprint(TaskSpec(f"file:{p}")) != fp1 and cell_run_id(cfg, cell) != rid1


def test_edited_file_gives_fresh_results_not_stale(tmp_path, tiny_bert):
    from superalign.data import load_task as lt

    tb = lt("textblob-polarity")
    rows = [{"text": t, "label": int(y)} for t, y in zip(tb.texts[:400], tb.labels[:400].tolist())]
    p = _write(tmp_path / "data.jsonl", rows)
    kw = dict(task=f"file:{p}", home=str(tmp_path / "h"), weak="bow", strong=f"hf:{tiny_bert}", loss=["xent"], seed=[0],
              max_examples=200, epochs=3, n_boot=20, progress=False)
    a = w2s.run(**kw).records[0]
    _write(p, [{"text": r["text"], "label": 1 - r["label"]} for r in rows[:300]])  # flipped labels, fewer rows
    b = w2s.run(**kw).records[0]
    assert a["id"] != b["id"]
    assert b["metrics"]["n_test"] != a["metrics"]["n_test"] or b["metrics"]["weak_acc"] != a["metrics"]["weak_acc"]


def test_hf_local_folder_identity_is_its_content(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    _write(d / "train.jsonl", [{"sentence": f"s{i}", "label": i % 2} for i in range(20)])
    spec = TaskSpec(f"hf:{d}", text_col=["sentence"])
    t = load_task(spec)
    assert any(str(d) in k for k in t.meta["sources"])
    fp = t.fingerprint()
    _write(d / "extra.txt", [{"note": 1}])  # any file of the folder counts, even one the loader ignores
    assert load_task(spec).fingerprint() != fp


def test_interp_cache_identity_includes_corpus_content(tmp_path):
    from superalign.interp.jobs import CacheJob

    p = tmp_path / "corpus.jsonl"
    _write(p, [{"text": "alpha"}, {"text": "beta"}])
    k0 = CacheJob(texts=str(p), home=str(tmp_path / "h")).key()
    assert CacheJob(texts=str(p), home=str(tmp_path / "h")).key() == k0
    _write(p, [{"text": "alpha"}, {"text": "gamma"}])
    assert CacheJob(texts=str(p), home=str(tmp_path / "h")).key() != k0
    assert CacheJob(texts="vader").key()["texts"].startswith("vader@")


# ------------------------------------------------------------------------------------------------ stage keys

STAGES = ("split", "weak", "boot", "ceiling")
ALL = {"run", *STAGES}
# field → (changed value, what must change, base overrides). Finetuning base: weak last-n, student lora, bootstrap
# via minilm-l1, loss aux_conf. Every W2SConfig field must be listed: a new field needs a decision here.
CASES = {
    "task": ("OTHER", ALL, {}),
    "weak": (["minilm-l3"], {"run", "weak", "boot"}, {}),
    "strong": (["minilm-l3"], {"run", "ceiling"}, {}),
    "loss": (["product"], {"run", "boot"}, {}),
    "seed": ([1], ALL, {}),
    "data": ("/elsewhere", set(), {}),
    "text_col": (["text2"], ALL, {}),
    "label_col": ("label2", ALL, {}),
    "label_map": ({"0": 1, "1": 0}, ALL, {}),
    "hf_split": ("test", {"run"}, {}),
    "group_col": ("grp", ALL, {}),
    "convert": ("preferences", ALL, {}),
    "max_examples": (60, ALL, {}),
    "split_fracs": ([0.25, 0.45, 0.1, 0.2], ALL, {}),
    "mode": ("full", {"run", "boot", "ceiling"}, {}),
    "weak_mode": ("full", {"run", "weak", "boot"}, {}),
    "n_train_layers": (2, {"run", "weak", "boot"}, {}),
    "lora_rank": (4, {"run", "boot", "ceiling"}, {}),
    "epochs": (3, {"run", "weak", "boot", "ceiling"}, {"mode": "probe", "weak_mode": "probe"}),
    "lr": (1e-2, {"run", "weak", "boot", "ceiling"}, {"mode": "probe", "weak_mode": "probe"}),
    "ft_epochs": (3, {"run", "weak", "boot", "ceiling"}, {}),
    "ft_lr": (1e-4, {"run", "weak", "boot", "ceiling"}, {}),
    "batch_size": (16, {"run", "weak", "boot", "ceiling"}, {}),
    "weight_decay": (0.1, {"run", "weak", "boot", "ceiling"}, {}),
    "aux_alpha": (0.5, {"run", "boot"}, {}),
    "aux_warmup": (0.1, {"run", "boot"}, {}),
    "product_beta": (0.5, {"run", "boot"}, {"loss": ["product"]}),
    "bootstrap_via": (["minilm-l3"], {"run", "boot"}, {}),
    "hard_weak_labels": (True, {"run"}, {}),
    "max_length": (64, {"run", "weak", "boot", "ceiling"}, {}),
    "device": ("cuda:0", set(), {}),
    # features are encoded and transformers finetuned in the dtype: every stage with a transformer (not the split)
    "dtype": ("bf16", {"run", "weak", "boot", "ceiling"}, {}),
    "n_boot": (7, set(), {}),
    "min_gap": (0.3, set(), {}),
    "home": ("OTHER_HOME", set(), {}),
    "executor": ("ray", set(), {}),
    "address": ("ray://x:1", set(), {}),
    "trust_remote_code": (True, set(), {}),
    "progress": (True, set(), {}),
}
# Values the changed config cannot be validated with here (no GPU): set after construction.
UNVALIDATED = {"device"}


def test_field_decisions_are_exhaustive():
    assert set(CASES) == {f.name for f in dataclasses.fields(w2s.W2SConfig)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("id")
    return _write(d / "a.jsonl", ROWS), _write(d / "b.jsonl", ROWS[::-1]), d


def _identity(cfg, home):
    exp = Experiment(cfg)
    c = cells(cfg)[0]
    keys = {"split": exp.split_key(c.seed), "weak": exp.weak_key(c.seed, c.weak),
            "boot": exp.boot_key(c.seed, c.weak, c.loss), "ceiling": exp.ceiling_key(c.seed, c.strong)}
    return {"run": cell_run_id(cfg, c), **{k: content_hash(v) for k, v in keys.items()}}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_field_changes_exactly_its_keys(name, files):
    a, b, d = files
    value, expected, over = CASES[name]
    base = {**dict(task=f"file:{a}", home=str(d / "h"), weak=["minilm-l1"], strong=["minilm-l2"], loss=["aux_conf"],
                   seed=[0], weak_mode="last-n", mode="lora", bootstrap_via=["minilm-l1"], max_examples=100,
                   progress=False), **over}
    value = {"OTHER": f"file:{b}", "OTHER_HOME": str(d / "h2")}.get(value, value) if isinstance(value, str) else value
    before = _identity(w2s.W2SConfig(**base), d)
    if name in UNVALIDATED:
        cfg = w2s.W2SConfig(**base)
        setattr(cfg, name, value)
    else:
        cfg = w2s.W2SConfig(**{**base, name: value})
    after = _identity(cfg, d)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == expected, f"{name}: changed {sorted(changed)}, expected {sorted(expected)}"
