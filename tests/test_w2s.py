"""End-to-end weak-to-strong runs on real data and real MiniLM features (small and fast)."""

import math

import numpy as np
import pytest

from superalign import w2s
from superalign.errors import SuperalignError
from superalign.runs import RunStore
from superalign.w2s.pipeline import Experiment, cell_run_id, cells

FAST = dict(task="textblob-polarity", max_examples=600, epochs=5, n_boot=200, progress=False)


def test_run_end_to_end(home):
    res = w2s.run(home=str(home), weak="bow", strong="minilm-l2", loss=["xent", "aux_conf"], seed=[0, 1], **FAST)
    assert set(res.pgr) == {"xent", "aux_conf"}
    for est in res.pgr.values():
        assert est.metric == "acc" and len(est.per_seed) == 2
        assert math.isnan(est.value) or est.ci_low <= est.ci_high
    row = res.rows[0]
    assert 0.5 < row["ceiling_acc"] <= 1 and 0.5 < row["weak_acc"] < row["ceiling_acc"]
    assert "PGR acc" in res.table()
    store = RunStore(home)
    rec = store.get(res.records[0]["id"])
    assert rec["status"] == "done" and rec["compute"]["flops_total"] > 0 and rec["compute"]["wall_s"] > 0
    assert {"weak_acc", "student_acc", "ceiling_acc", "pgr_acc", "agree_weak_wrong",
            "diag_gt_es_student_acc"} <= set(rec["metrics"])
    group = store.get(res.group_id)
    assert group["kind"] == "w2s-sweep" and len(group["artefacts"]["runs"]) == 4


def test_stages_cached_and_sweep_resumes(home, monkeypatch):
    cfg = w2s.W2SConfig(home=str(home), weak=["minilm-l1"], strong=["minilm-l2", "minilm-l3"], loss=["xent", "product"],
                        seed=[0], **FAST)
    exp = Experiment(cfg)
    calls = {"n": 0}
    real = Experiment.run_cell

    def flaky(self, cell):  # interrupt the sweep on its third cell
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, cell)

    monkeypatch.setattr(Experiment, "run_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        w2s.sweep(cfg)
    store = RunStore(home)
    ids = [cell_run_id(cfg, c) for c in cells(cfg)]
    status = [store.get(i)["status"] if store.get(i) else None for i in ids]
    assert status[:2] == ["done", "done"] and status[2] == "failed"
    finished = {i: store.get(i)["finished_at"] for i in ids[:2]}
    monkeypatch.setattr(Experiment, "run_cell", real)
    res = w2s.sweep(cfg)
    assert all(store.get(i)["status"] == "done" for i in ids)
    assert {i: store.get(i)["finished_at"] for i in ids[:2]} == finished  # finished runs were not redone
    assert store.get(res.group_id)["metrics"]["n_new"] == 2
    # the weak stage was cached for the second strong model and for the resumed cells
    later = store.get(ids[3])
    assert "weak" in later["compute"]["cached_stages"] and later["compute"]["flops"]["weak"] == 0
    assert len(res.rows) == 4 and isinstance(next(iter(res.pgr)), tuple)
    # a full rerun does nothing new
    assert store.get(w2s.sweep(cfg).group_id)["metrics"]["n_new"] == 0
    del exp


def test_deterministic_given_seed(tmp_path):
    kw = dict(weak="minilm-l1", strong="minilm-l2", loss=["aux_conf"], seed=[3], **FAST)
    a = w2s.run(home=str(tmp_path / "a"), **kw).records[0]["metrics"]
    b = w2s.run(home=str(tmp_path / "b"), **kw).records[0]["metrics"]
    assert a["student_acc"] == b["student_acc"] and a["weak_acc"] == b["weak_acc"]


def test_human_weak_supervisor_and_bootstrapping(home):
    res = w2s.run(home=str(home), task="vader", weak="human", strong="minilm-l2", loss=["xent"], seed=[0],
                  max_examples=600, epochs=3, n_boot=100, progress=False)
    assert 0.8 < res.rows[0]["weak_acc"] <= 1.0  # one rater of ten
    res = w2s.run(home=str(home), weak="bow", strong="minilm-l3", bootstrap_via=["minilm-l1"], loss=["xent"], seed=[0],
                  **FAST)
    rec = res.records[0]
    assert rec["compute"]["flops"]["bootstrap"] > 0 and rec["config"]["bootstrap_via"] == ["minilm-l1"]
    assert not math.isnan(rec["metrics"]["student_acc"])


@pytest.mark.parametrize("mode", ["last-n", "full", "lora"])
def test_finetune_modes_on_tiny_model(tmp_path, tiny_bert, mode):
    res = w2s.run(home=str(tmp_path), weak="bow", strong=f"hf:{tiny_bert}", mode=mode, loss=["aux_conf"], seed=[0],
                  task="textblob-polarity", max_examples=120, ft_epochs=1, ft_lr=1e-3, n_boot=50, progress=False,
                  max_length=32)
    m = res.records[0]["metrics"]
    assert 0 <= m["student_acc"] <= 1 and res.records[0]["compute"]["flops"]["student"] > 0


def test_causal_lm_student(tmp_path, tiny_gpt2):
    res = w2s.run(home=str(tmp_path), weak="bow", strong=f"hf:{tiny_gpt2}", loss=["xent"], seed=[0],
                  task="textblob-polarity", max_examples=120, n_boot=50, progress=False)
    assert res.records[0]["status"] == "done"


def test_bad_input_leaves_nothing(tmp_path):
    for kw, match in (({"weak": "nope"}, "unknown model"), ({"task": "nope"}, "unknown task"),
                      ({"loss": ["bad"]}, "unknown loss"), ({"strong": "bow"}, "transformer"),
                      ({"weak": "human"}, "no human weak labels"),
                      ({"strong": "hf:superalign-test/not-a-real-model"}, "could not load model")):
        with pytest.raises(SuperalignError, match=match):
            w2s.run(home=str(tmp_path / "h"), progress=False, **kw)
    assert not (tmp_path / "h").exists()
    with pytest.raises(SuperalignError, match="one --weak"):
        w2s.run(home=str(tmp_path / "h"), weak=["bow", "minilm-l1"], progress=False)


def test_ray_executor(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        res = w2s.sweep(home=str(tmp_path), weak=["bow"], strong=["minilm-l2"], loss=["xent"], seed=[0, 1],
                        executor="ray", **FAST)
    finally:
        ray.shutdown()
    assert [r["status"] for r in res.records] == ["done", "done"]
    local = w2s.sweep(home=str(tmp_path / "local"), weak=["bow"], strong=["minilm-l2"], loss=["xent"], seed=[0, 1],
                      **FAST)
    np.testing.assert_allclose([r["metrics"]["student_acc"] for r in res.records],
                               [r["metrics"]["student_acc"] for r in local.records])


@pytest.mark.parametrize("kw,match", [
    ({"seed": [-1]}, "--seed -1"), ({"seed": [2**32]}, "--seed"), ({"seed": [0, 0]}, "repeats a seed"),
    ({"lr": 0.0}, "--lr"), ({"lr": float("nan")}, "--lr"), ({"ft_lr": -1e-5}, "--ft-lr"),
    ({"ft_lr": float("inf")}, "--ft-lr"),
    ({"epochs": 0}, "--epochs"), ({"ft_epochs": 0}, "--ft-epochs"), ({"batch_size": 0}, "--batch-size"),
    ({"n_boot": 0}, "--n-boot"), ({"max_examples": 10}, "--max-examples"), ({"max_length": 0}, "--max-length"),
    ({"lora_rank": 0}, "--lora-rank"), ({"n_train_layers": 0}, "--n-train-layers"),
    ({"split_fracs": [0.5, 0.5]}, "--split-fracs"), ({"split_fracs": [0.5, 0.5, 0.1, 0.1]}, "--split-fracs"),
    ({"split_fracs": [0.0, 0.5, 0.3, 0.2]}, "--split-fracs"), ({"split_fracs": [1.5, 0.1, 0.1, 0.1]}, "--split-fracs"),
    ({"min_gap": -0.1}, "--min-gap"), ({"min_gap": float("nan")}, "--min-gap"),
    ({"aux_alpha": 1.5}, "--aux-alpha"), ({"aux_warmup": -0.1}, "--aux-warmup"),
    ({"product_beta": -1.0}, "--product-beta"), ({"weight_decay": float("nan")}, "--weight-decay"),
    ({"device": "cuda:99"}, "--device"), ({"device": "tpu"}, "--device"), ({"device": "cuda:x"}, "--device"),
    ({"convert": "nope"}, "--convert"), ({"group_col": "q"}, "--group-col"),
])
def test_config_validation(tmp_path, kw, match):
    with pytest.raises(SuperalignError, match=match) as e:
        w2s.run(home=str(tmp_path / "h"), progress=False, **kw)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "h").exists()


def test_split_fracs_may_sum_below_one():
    from superalign.data import make_splits

    y = np.array([0, 1] * 200)
    s = make_splits(y, 0, fractions=(0.2, 0.2, 0.1, 0.1))
    assert [len(v) for v in s.as_dict().values()] == [80, 80, 40, 40] and s.n_dropped_cap == 160
    w2s.W2SConfig(split_fracs=[0.2, 0.2, 0.1, 0.1])


def test_numpy_numbers_become_plain():
    cfg = w2s.W2SConfig(seed=list(np.arange(2)), epochs=np.int64(3), lr=np.float32(0.01), progress=False)
    assert cfg.seed == [0, 1] and type(cfg.seed[0]) is int and type(cfg.epochs) is int and type(cfg.lr) is float
