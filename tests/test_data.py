import json

import numpy as np
import pandas as pd
import pytest

from superalign.data import TaskSpec, list_tasks, load_task, make_splits
from superalign.errors import SuperalignError


def test_vader_task_is_real_lexicon_with_single_rater():
    t = load_task("vader")
    assert len(t) > 7000 and set(np.unique(t.labels)) == {0, 1}
    ratings = np.array(t.meta["ratings"])
    assert ratings.shape == (len(t), 10)
    # ground truth = sign of the mean of ten raters; weak = rater 0's sign (ties at 0 → ½)
    assert np.array_equal(t.labels, (ratings.mean(1) > 0).astype(int))
    r0 = ratings[:, 0]
    assert np.array_equal(t.human_weak, np.where(r0 > 0, 1.0, np.where(r0 < 0, 0.0, 0.5)))
    i = t.texts.index("beauteous")
    assert t.labels[i] == 1


def test_textblob_tasks():
    p = load_task("textblob-polarity")
    assert 1500 < len(p) < 2918 and ":" in p.texts[0]
    s = load_task("textblob-subjectivity")
    assert len(s) > len(p)
    assert "vader" in list_tasks() and "sst2" in list_tasks()


def test_splits_balanced_disjoint_deterministic():
    y = np.array([1] * 700 + [0] * 300)
    s = make_splits(y, seed=3)
    parts = s.as_dict()
    allidx = np.concatenate(list(parts.values()))
    assert len(allidx) == 600 and len(set(allidx.tolist())) == 600  # balanced: 300 + 300, disjoint
    assert y[allidx].mean() == 0.5
    assert [len(v) for v in parts.values()] == [180, 240, 60, 120]
    s2 = make_splits(y, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts.values(), s2.as_dict().values()))
    assert not np.array_equal(make_splits(y, seed=4).test, s.test)
    assert len(np.concatenate(list(make_splits(y, 0, max_examples=100).as_dict().values()))) == 100
    with pytest.raises(SuperalignError, match="fractions"):
        make_splits(y, 0, fractions=(0.5, 0.5, 0.1, 0.1))


def _write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    df = pd.DataFrame(rows)
    if name.endswith(".jsonl"):
        p.write_text("\n".join(json.dumps(r) for r in rows))
    elif name.endswith(".csv"):
        df.to_csv(p, index=False)
    else:
        df.to_parquet(p)
    return p


ROWS = [{"sentence": f"text {i}", "y": i % 2, "extra": "x"} for i in range(50)]


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.parquet"])
def test_local_files_with_column_mapping(tmp_path, name):
    p = _write(tmp_path, ROWS, name)
    t = load_task(TaskSpec(f"file:{p}", text_col=["sentence", "extra"], label_col="y"))
    assert len(t) == 50 and t.texts[0] == "text 0 [SEP] x" and t.labels.tolist()[:3] == [0, 1, 0]


def test_label_map(tmp_path):
    p = _write(tmp_path, [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(10)])
    t = load_task(TaskSpec(str(p), label_map={"neg": 0, "pos": 1}))
    assert t.labels.tolist()[:2] == [0, 1]
    with pytest.raises(SuperalignError, match="not numeric"):
        load_task(TaskSpec(str(p)))


@pytest.mark.parametrize("rows,match", [
    ([{"text": "a", "label": 0}], "only one class"),
    ([{"text": "a", "label": 0}, {"text": "b", "label": 2}], "binary"),
    ([{"text": "a", "label": 0}, {"text": "b", "label": None}], "NaN"),
    ([{"text": "a", "label": 0}, {"text": "", "label": 1}], "empty"),
    ([{"txt": "a", "label": 0}], "missing column"),
])
def test_bad_input_errors(tmp_path, rows, match):
    p = _write(tmp_path, rows)
    with pytest.raises(SuperalignError, match=match):
        load_task(TaskSpec(f"file:{p}"))


def test_empty_and_unknown(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("")
    with pytest.raises(SuperalignError, match="no rows|missing column"):
        load_task(f"file:{p}")
    with pytest.raises(SuperalignError, match="unknown task"):
        load_task("nope")
    with pytest.raises(SuperalignError, match="does not exist"):
        load_task("file:/nonexistent/x.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(SuperalignError, match="line 2"):
        load_task(f"file:{bad}")


def test_shared_task_needs_data_dir(monkeypatch):
    monkeypatch.delenv("SUPERALIGN_DATA", raising=False)
    with pytest.raises(SuperalignError, match="--data"):
        load_task("sst2")


def test_shared_datasets(shared_data):
    for name in ("sst2", "cola", "boolq", "sciq"):
        t = load_task(TaskSpec(name, data=str(shared_data)))
        assert len(t) > 3000 and 0.3 < t.labels.mean() < 0.75, name
    sciq = load_task(TaskSpec("sciq", data=str(shared_data)))
    assert sciq.texts[0].startswith("Q: ") and " A: " in sciq.texts[0]
    assert sciq.fingerprint() == load_task(TaskSpec("sciq", data=str(shared_data))).fingerprint()


def test_hf_datasets_local_folder_and_offline_error(tmp_path, monkeypatch):
    d = tmp_path / "myds"
    d.mkdir()
    _write(d, [{"sentence": f"s{i}", "label": i % 2} for i in range(20)], "train.jsonl")
    t = load_task(TaskSpec(f"hf:{d}", text_col=["sentence"]))
    assert len(t) == 20
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SuperalignError, match="HF_HUB_OFFLINE"):
        load_task("hf:superalign-test/does-not-exist-anywhere")


def test_paper_dataset_expanders():
    from superalign.data.tasks import expand_cosmos_qa, expand_preferences, expand_sciq

    sciq = pd.DataFrame([{"question": "q?", "correct_answer": "a", "distractor1": "d1", "distractor2": "d2",
                          "distractor3": "d3", "support": ""}])
    assert expand_sciq(sciq).to_dict("records") == [{"text": "Q: q? A: a", "label": 1, "group": "q?", "question": 0},
                                                    {"text": "Q: q? A: d1", "label": 0, "group": "q?", "question": 0}]
    cq = pd.DataFrame([{"context": "c", "question": "q", "answer0": "a0", "answer1": "a1", "answer2": "a2",
                        "answer3": "a3", "label": 3}])
    assert expand_cosmos_qa(cq)["text"].tolist() == ["c Q: q A: a3", "c Q: q A: a0"]
    hh = pd.DataFrame([{"chosen": "good", "rejected": "bad"}])
    assert expand_preferences(hh).to_dict("records") == [{"text": "good", "label": 1, "group": 0, "question": 0},
                                                         {"text": "bad", "label": 0, "group": 0, "question": 0}]


def test_anthropic_hh_shared(shared_data):
    t = load_task(TaskSpec("anthropic_hh", data=str(shared_data)))
    assert len(t) > 4000 and abs(t.labels.mean() - 0.5) < 0.01 and t.texts[0].startswith("Human: ")
