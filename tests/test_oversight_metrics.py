import json

import numpy as np
import pytest

from superalign.errors import SuperalignError
from superalign.oversight.metrics import accuracy_ci, ece, read_transcript, reliability, transcript_metrics


def test_ece_and_bins_golden():
    conf = [0.9, 0.8, 0.6, 0.55, 0.65]
    correct = [1, 0, 1, 1, 0]
    bins = reliability(conf, correct, n_bins=10)
    assert [b.count for b in bins] == [0, 0, 0, 0, 0, 1, 2, 0, 1, 1]
    b6 = bins[6]  # 0.6 (right) and 0.65 (wrong)
    assert (b6.lo, b6.hi) == (0.6, 0.7) and b6.confidence == pytest.approx(0.625) and b6.accuracy == 0.5
    # by hand: (1·|1−.55| + 2·|.5−.625| + 1·|0−.8| + 1·|1−.9|) / 5 = (.45 + .25 + .8 + .1) / 5 = 0.32
    assert ece(conf, correct, 10) == pytest.approx(0.32)
    # two bins: [0, .5) empty, [.5, 1]: acc 3/5, conf 3.5/5 → |.6 − .7| = .1
    assert ece(conf, correct, 2) == pytest.approx(0.1)
    assert reliability([1.0], [1], 10)[9].count == 1  # 1.0 falls in the last bin
    assert ece([1.0, 1.0], [1, 1]) == 0.0


def test_accuracy_ci_golden():
    e = accuracy_ci([1, 1, 1, 1])
    assert e == (1.0, 1.0, 1.0, 4)
    e = accuracy_ci([1, 0] * 50, n_boot=2000, seed=1)
    assert e.value == 0.5 and e.n == 100
    # normal approximation by hand: 0.5 ± 1.96·sqrt(.25/100) = 0.5 ± 0.098
    assert e.lo == pytest.approx(0.402, abs=0.02) and e.hi == pytest.approx(0.598, abs=0.02)
    assert accuracy_ci([1, 0] * 50, n_boot=2000, seed=1) == e  # seeded
    assert np.isnan(accuracy_ci([]).value)


def test_transcript_file(tmp_path):
    p = tmp_path / "t.jsonl"
    rows = [{"judge": 3, "answer": 3, "probability": 0.9, "extra": "x"},
            {"judge": "a", "answer": "b", "probability": 0.8}, {"judge": 1, "answer": 1, "probability": 0.6},
            {"judge": 2, "answer": 2, "probability": 0.55}, {"judge": 0, "answer": 5, "probability": 0.65}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    correct, conf = read_transcript(p)
    assert correct.tolist() == [True, False, True, True, False]
    m = transcript_metrics(p, n_bins=10, n_boot=200)
    assert m.accuracy.value == 0.6 and m.ece == pytest.approx(0.32)
    assert "judge accuracy 60.0%" in m.table() and "ECE 0.3200" in m.table()


def test_transcript_errors(tmp_path):
    with pytest.raises(SuperalignError, match="transcript not found"):
        read_transcript(tmp_path / "missing.jsonl")
    p = tmp_path / "bad.jsonl"
    p.write_text('{"judge": 1, "answer": 1, "probability": 0.5}\n{"judge": 1}\n')
    with pytest.raises(SuperalignError, match="bad.jsonl:2") as e:
        read_transcript(p)
    assert "\n" not in str(e.value)
    p.write_text('{"judge": 1, "answer": 1, "probability": 1.5}\n')
    with pytest.raises(SuperalignError, match="not in"):
        read_transcript(p)
    p.write_text("\n")
    with pytest.raises(SuperalignError, match="no transcript lines"):
        read_transcript(p)
