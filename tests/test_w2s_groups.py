"""Group-aware splits, multiple-choice accuracy, PGR only above chance, label maps, truncation counts."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from superalign import w2s
from superalign.data import TaskSpec, load_task, make_splits
from superalign.errors import SuperalignError
from superalign.w2s.pgr import bootstrap_pgr, chance_level, multiple_choice_accuracy, pgr_checked
from superalign.w2s.pipeline import Experiment
from superalign.w2s.summary import format_table


def _groups_of(splits, groups):
    return [set(groups[v].tolist()) for v in splits.as_dict().values()]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_group_spans_two_splits(seed):
    rng = np.random.default_rng(0)
    # multiple-choice shape (1 right + 3 wrong per question) and ragged groups
    mc_groups, mc_y = np.repeat(np.arange(300), 4), np.tile([1, 0, 0, 0], 300)
    sizes = rng.integers(1, 6, size=200)
    rg_groups = np.repeat(np.arange(200), sizes)
    rg_y = rng.integers(0, 2, size=len(rg_groups))
    for groups, y in ((mc_groups, mc_y), (rg_groups, rg_y)):
        s = make_splits(y, seed, max_examples=400, groups=groups)
        sets = _groups_of(s, groups)
        assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])
        idx = np.concatenate(list(s.as_dict().values()))
        assert len(idx) == len(set(idx.tolist())) and len(idx) <= 400
        assert y[idx].sum() * 2 == len(idx)  # balanced: majority rows dropped within groups
        assert s.n_dropped_balance > 0
        again = make_splits(y, seed, max_examples=400, groups=groups)  # deterministic given the seed
        assert all(np.array_equal(a, b) for a, b in zip(s.as_dict().values(), again.as_dict().values()))
        n = [len(v) for v in s.as_dict().values()]
        assert abs(n[1] / len(idx) - 0.4) < 0.05 and all(k > 0 for k in n)


def test_ungrouped_splits_unchanged():
    # identical to the splits before groups existed (README numbers depend on them)
    y = np.array([1] * 700 + [0] * 300)
    s = make_splits(y, seed=3)
    assert s.n_dropped_balance == 400 and s.n_dropped_cap == 0
    assert s.test[:5].tolist() == make_splits(y, seed=3, groups=None).test[:5].tolist()
    assert [len(v) for v in s.as_dict().values()] == [180, 240, 60, 120]


def _pairs_file(tmp_path, n=150):
    """Preference pairs from real TextBlob glosses: chosen = a positive sense, rejected = a negative one."""
    tb = load_task("textblob-polarity")
    pos = [t for t, y in zip(tb.texts, tb.labels) if y == 1][:n]
    neg = [t for t, y in zip(tb.texts, tb.labels) if y == 0][:n]
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(json.dumps({"chosen": a, "rejected": b}) for a, b in zip(pos, neg)))
    return p


def test_convert_on_local_file_groups_rows(tmp_path):
    p = _pairs_file(tmp_path, 30)
    t = load_task(TaskSpec(f"file:{p}", convert="preferences"))
    assert len(t) == 60 and t.groups is not None and len(set(t.groups.tolist())) == 30
    assert t.labels[t.groups == 0].tolist() == [1, 0]
    sciq = tmp_path / "sciq.csv"
    pd.DataFrame([{"question": f"q{i}?", "correct_answer": "a", "distractor1": "b", "distractor2": "c",
                   "distractor3": "d"} for i in range(10)]).to_csv(sciq, index=False)
    t = load_task(TaskSpec(f"file:{sciq}", convert="sciq"))
    assert len(t) == 20 and len(set(t.groups.tolist())) == 10
    with pytest.raises(SuperalignError, match="needs column"):
        load_task(TaskSpec(f"file:{p}", convert="cosmos_qa"))
    with pytest.raises(SuperalignError, match="builds the text"):
        load_task(TaskSpec(f"file:{p}", convert="preferences", text_col=["chosen"]))


def test_grouped_run_end_to_end(tmp_path, tiny_bert):
    p = _pairs_file(tmp_path)
    res = w2s.run(task=f"file:{p}", convert="preferences", home=str(tmp_path / "h"), weak="bow",
                  strong=f"hf:{tiny_bert}", loss=["xent"], seed=[0], max_examples=300, epochs=3, n_boot=20,
                  progress=False)
    exp = Experiment(res.cfg)
    sets = _groups_of(exp.splits(0), exp.task.groups)
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])
    m = res.records[0]["metrics"]
    for k in ("weak_mc_acc", "student_mc_acc", "ceiling_mc_acc"):
        assert 0 <= m[k] <= 1
    assert m["n_mc_questions"] > 0
    assert m["n_weak_train"] + m["n_weak_label"] + m["n_val"] + m["n_test"] <= 300
    table = res.table()
    assert "ceiling MC acc" in table and "n wt/wl/val/test" in table


def test_multiple_choice_accuracy():
    y = np.array([1, 0, 0, 0, 1, 1, 0])
    p = np.array([0.9, 0.2, 0.5, 0.5, 0.5, 0.1, 0.2])
    q = np.array([0, 0, 1, 1, 1, 2, 2])
    acc, n = multiple_choice_accuracy(y, p, q)
    assert n == 3 and acc == pytest.approx((1 + 1 / 3 + 0) / 3)  # tie of three: a third of a point


# ------------------------------------------------------------------------------------------------ PGR and chance


def test_pgr_undefined_when_weak_not_above_chance():
    y = np.array([0, 1] * 100)
    # weak 0.52 on 200 examples is within the binomial margin of chance (0.5 + 0.058): no PGR although the gap is big
    value, note = pgr_checked(y, 0.52, 0.8, 0.95, "acc", min_gap=0.02)
    assert math.isnan(value) and "weak acc 0.520 not above chance" in note
    value, note = pgr_checked(y, 0.7, 0.8, 0.9, "acc")
    assert value == pytest.approx(0.5) and note == ""
    # majority-class rate is the chance level: 80% positives, a ceiling at 0.79 is below it
    y8 = np.array([1] * 160 + [0] * 40)
    assert chance_level(y8, "acc")[0] == 0.8
    assert "ceiling acc" in pgr_checked(y8, 0.9, 0.85, 0.79, "acc")[1]
    value, note = pgr_checked(y, 0.7, 0.6, 0.52, "auroc")
    assert math.isnan(value) and "ceiling auroc" in note


def test_bootstrap_pgr_reports_chance_per_seed_and_pooled():
    rng = np.random.default_rng(0)
    seeds = []
    for _ in range(3):
        y = rng.integers(0, 2, 300)
        seeds.append({"y": y, "p_weak": rng.random(300),  # weak at chance
                      "p_student": np.where(rng.random(300) < 0.8, y, 1 - y).astype(float),
                      "p_ceiling": np.where(rng.random(300) < 0.9, y, 1 - y).astype(float)})
    for metric in ("acc", "auroc"):
        est = bootstrap_pgr(seeds, metric, n_boot=50)
        assert math.isnan(est.value) and all(math.isnan(v) for v in est.per_seed)
        assert math.isnan(est.ci_low) and "not above chance" in est.note
    rows = [{"task": "t", "weak": "w", "strong": "s", "loss": "xent", "seeds": [0, 1, 2], "weak_acc": 0.5,
             "student_acc": 0.8, "ceiling_acc": 0.9, "weak_auroc": 0.5, "student_auroc": 0.8, "ceiling_auroc": 0.9,
             "pgr_acc": est.value, "pgr_acc_ci": [est.ci_low, est.ci_high], "pgr_acc_per_seed": est.per_seed,
             "pgr_acc_note": est.note, "pgr_auroc": est.value, "pgr_auroc_ci": [est.ci_low, est.ci_high],
             "pgr_auroc_per_seed": est.per_seed, "n_weak_train": 90, "n_weak_label": 120, "n_val": 30, "n_test": 60,
             "n_dropped_balance": 12}]
    table = format_table(rows)
    assert "n/a [n/a, n/a]" in table and "not above chance" in table and "90/120/30/60" in table


# ------------------------------------------------------------------------------------------------ label maps


def _labels_file(tmp_path, labels):
    p = tmp_path / "l.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(len(labels))], "label": labels}).to_csv(p, index=False)
    return p


def test_label_map_matches_integer_labels_by_string_and_null_drops(tmp_path):
    p = _labels_file(tmp_path, [0, 1, 2] * 10)
    t = load_task(TaskSpec(f"file:{p}", label_map={"0": 0, "2": 1, "1": None}))  # as JSON from the CLI gives it
    assert len(t) == 20 and t.labels.tolist()[:2] == [0, 1] and t.meta["label_map_dropped"] == 10
    assert load_task(TaskSpec(f"file:{p}", label_map={0: 0, 2: 1, 1: None})).labels.tolist() == t.labels.tolist()
    with pytest.raises(SuperalignError, match=r"labels \['1'\] not in --label-map"):
        load_task(TaskSpec(f"file:{p}", label_map={"0": 0, "2": 1}))
    with pytest.raises(SuperalignError, match="0, 1, or null"):
        load_task(TaskSpec(f"file:{p}", label_map={"0": 0, "1": 2, "2": 1}))
    pb = _labels_file(tmp_path, [True, False] * 5)
    assert load_task(TaskSpec(f"file:{pb}", label_map={"true": 1, "false": 0})).labels.tolist()[:2] == [1, 0]


def test_label_map_from_cli_json(tmp_path):
    from superalign.cli import build_parser

    p = _labels_file(tmp_path, [0, 1, 2] * 20)
    ns = build_parser().parse_args(["w2s", "run", "--task", f"file:{p}", "--label-map", '{"0": 0, "2": 1, "1": null}'])
    cfg = w2s.W2SConfig(**{k: v for k, v in vars(ns).items() if k in w2s.W2SConfig.__dataclass_fields__})
    assert cfg.label_map == {"0": 0, "2": 1, "1": None}
    from superalign.w2s.pipeline import task_spec
    assert len(load_task(task_spec(cfg))) == 40


# ------------------------------------------------------------------------------------------------ truncation


def test_truncation_counted_and_warned(tmp_path, tiny_bert):
    from superalign.models.features import TruncationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = w2s.run(home=str(tmp_path), weak="bow", strong=f"hf:{tiny_bert}", mode="last-n", loss=["xent"], seed=[0],
                      task="textblob-polarity", max_examples=120, ft_epochs=1, n_boot=20, progress=False, max_length=8)
    m = res.records[0]["metrics"]
    assert m["n_truncated_strong"] > 50 and m["n_truncated_weak"] == 0
    assert any(issubclass(w.category, TruncationWarning) and "longer than --max-length 8" in str(w.message)
               for w in caught)
    # the probe path warns from the encoder as it encodes
    with pytest.warns(TruncationWarning, match="encode"):
        w2s.run(home=str(tmp_path), weak="bow", strong=f"hf:{tiny_bert}", loss=["xent"], seed=[0],
                task="textblob-polarity", max_examples=120, n_boot=20, progress=False, max_length=6)
