"""benchmarks/w2s_vs_openai.py: skips cleanly without a checkout; with one, their train_simple.py halves are exactly
superalign's weak-train / weak-label rows (no training: only their data path runs)."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import w2s_vs_openai as bench  # noqa: E402

REPO = os.environ.get("W2S_OPENAI_REPO")


def test_skips_without_checkout(tmp_path, capsys):
    assert bench.main(["--openai-repo", str(tmp_path / "absent"), "--work", str(tmp_path)]) is None
    assert "skipped: no openai/weak-to-strong checkout" in capsys.readouterr().out
    assert not (tmp_path / "models").exists()  # nothing built


@pytest.mark.skipif(not REPO or not Path(REPO, "train_simple.py").exists(), reason="set W2S_OPENAI_REPO to a checkout")
def test_their_halves_are_superalign_splits(tmp_path):
    from superalign.data import make_splits

    n = 120
    texts = [f"row {i}" for i in range(n)]
    labels = np.arange(n) % 2
    their = bench.TheirSide(Path(REPO), {}, tmp_path)
    for seed in (0, 3):
        s = make_splits(labels, seed, (0.25, 0.25, 0.1, 0.4))
        name = f"unit_seed{seed}"
        n_docs = their.register_rows(name, texts, labels, seed, s.weak_train, s.weak_label, s.test)
        # exactly what their train_simple.main does with a dataset before training
        ds = their.ds.load_dataset(name, seed=seed, split_sizes=dict(train=n_docs, test=len(s.test)))
        halves = ds["train"].train_test_split(test_size=0.5, seed=seed)
        assert list(halves["train"]["txt"]) == [texts[i] for i in s.weak_train]
        assert list(halves["test"]["txt"]) == [texts[i] for i in s.weak_label]
        assert sorted(ds["test"]["txt"]) == sorted(texts[i] for i in s.test)
        assert [int(x) for x in halves["train"]["hard_label"]] == list(labels[s.weak_train])
