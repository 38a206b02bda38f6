"""Robustness checks of the latent-knowledge probes (superalign/monitor): built-in tasks as contrast pairs, the
misleading few-shot prefix (Burns et al. 2022), the banana/shed distractor (Farquhar et al. 2023), what CCS found,
the `monitor pairs` command and the probe job end to end with both checks on."""

import json

import numpy as np
import pytest
import torch

from superalign.errors import SuperalignError
from superalign.monitor.pairs import (
    AMBIGUOUS_RATING,
    Template,
    add_distractor,
    load_pairs,
    make_pairs,
    misleading_prefix,
    parse_columns,
)

T = Template("claim", "Claim: {text}\nTrue? {answer}", ("no", "yes"))
ROWS = [{"text": f"statement {i}", "label": i % 2} for i in range(8)]


@pytest.fixture
def claims(tmp_path):
    f = tmp_path / "claims.jsonl"
    f.write_text("".join(json.dumps({"claim": r["text"], "truth": r["label"]}) + "\n" for r in ROWS))
    return f


def test_distractor_golden_construction():
    plain = make_pairs(ROWS, T)
    dp = add_distractor(plain, "banana-shed", seed=3)
    d = np.random.default_rng(3).integers(0, 2, len(ROWS)).tolist()  # one fair coin per pair, from the seed
    assert dp.distractor == d and 0 < sum(d) < len(d)
    for i, k in enumerate(d):
        banana_pos = plain.pos[i] + " Banana.", plain.neg[i] + " Shed."
        banana_neg = plain.pos[i] + " Shed.", plain.neg[i] + " Banana."
        assert (dp.pos[i], dp.neg[i]) == (banana_pos if k else banana_neg)
    # labels, prompts unchanged; the zero-shot scores the answer only (the texts before the distractor word)
    assert dp.labels == plain.labels and dp.prompts == plain.prompts and dp.scored == (plain.neg, plain.pos)
    fps = {plain.fingerprint, dp.fingerprint, add_distractor(plain, "banana-shed", seed=4).fingerprint}
    assert len(fps) == 3 and add_distractor(plain, "none", 3) is plain


def test_misleading_prefix_golden_and_disjoint_from_the_evaluated_rows(claims):
    cols = {"claim": "text", "truth": "label"}
    plain = load_pairs(str(claims), T, limit=5, columns=cols)
    mis = load_pairs(str(claims), T, limit=5, columns=cols, prefix="misleading", prefix_k=2)
    # rows 5 (label 1) and 6 (label 0) after the 5 evaluated ones, each with its WRONG answer
    assert mis.prefix == "Claim: statement 5\nTrue? no\n\nClaim: statement 6\nTrue? yes\n\n"
    assert mis.prefix == misleading_prefix(ROWS[5:7], T)
    assert mis.labels == plain.labels == [0, 1, 0, 1, 0]  # the same evaluated rows as without a prefix
    assert mis.pos == [mis.prefix + t for t in plain.pos] and mis.neg == [mis.prefix + t for t in plain.neg]
    assert mis.prompts == [mis.prefix + p for p in plain.prompts]
    evaluated = {r["text"] for r in ROWS[:5]}
    assert not any(t in mis.prefix for t in evaluated) and mis.fingerprint != plain.fingerprint
    all_rows = load_pairs(str(claims), T, columns=cols, prefix="misleading", prefix_k=3)  # no limit: the last 3
    assert len(all_rows) == 5 and "statement 7" in all_rows.prefix and "statement 4" not in all_rows.prefix


@pytest.mark.parametrize("make, match", [
    (lambda f: load_pairs(str(f), T, limit=5, columns={"claim": "text", "truth": "label"}, prefix="confusing"),
     "unknown prefix 'confusing'"),
    (lambda f: load_pairs(str(f), T, limit=5, columns={"claim": "text", "truth": "label"}, prefix="misleading",
                          prefix_k=4), "asks for 4 demonstrations beyond the 5 evaluated rows, but .* only 8 rows"),
    (lambda f: add_distractor(make_pairs(ROWS, T), "apple-pear", 0), "unknown distractor 'apple-pear'"),
    (lambda f: load_pairs("vadr"), r"unknown dataset 'vadr' \(did you mean vader\?\)"),
    (lambda f: load_pairs("textblob-subjectivity"), "has no built-in template"),
    (lambda f: parse_columns(["claim:text"]), "not file_column=field"),
])
def test_bad_robustness_input_is_one_clear_error(claims, make, match):
    with pytest.raises(SuperalignError, match=match):
        make(claims)


def test_job_config_rejects_unknown_conditions():
    from superalign.monitor.jobs import ProbeJob

    for kw, match in (({"prefix": "confusing"}, "--prefix must be one of none, misleading"),
                      ({"distractor": "apple"}, "--distractor must be one of"), ({"prefix_k": 0}, "prefix-k")):
        with pytest.raises(SuperalignError, match=match):
            ProbeJob(**kw)
    from superalign.runs.store import run_id

    ids = {run_id("monitor-probe", ProbeJob(dataset="vader", **kw).key())
           for kw in ({}, {"prefix": "misleading"}, {"prefix": "misleading", "prefix_k": 2},
                      {"distractor": "banana-shed"})}
    assert len(ids) == 4  # each condition is a run of its own


def test_vader_task_pairs_binarised_ambiguous_dropped_and_stable():
    from superalign.data.tasks import load_task

    p = load_pairs("vader", limit=60)
    assert len(p) == 60 and set(p.labels) == {0, 1} and p.source.startswith("task:vader#")
    assert p.pos[0].startswith('The word "') and p.pos[0].endswith('" is positive.')
    task = load_task("vader")
    means: dict[str, list[float]] = {}
    for t, r in zip(task.texts, task.meta["ratings"]):
        means.setdefault(t, []).append(float(np.mean(r)))
    words = [t[len('The word "'):-len('" is positive.')] for t in p.pos]
    assert len(set(words)) == len(words)
    for w, y in zip(words, p.labels):
        assert all(abs(m) >= AMBIGUOUS_RATING for m in means[w])  # near-neutral words dropped
        assert all((m > 0) == bool(y) for m in means[w])  # binarised by the sign of the mean, no conflicting copy
    assert load_pairs("vader", limit=60).fingerprint == p.fingerprint  # fixed shuffle: the same rows every run


def test_one_pass_features_equal_hidden_states_and_zero_shot(tiny_gpt2):
    from superalign.models.lm import load_lm
    from superalign.monitor.extract import hidden_states, pair_features, zero_shot

    tok, model = load_lm(tiny_gpt2, require_eos=False)
    tok.padding_side = "right"
    plain = make_pairs(ROWS[:5], T, prefix="Claim: x\nTrue? no\n\n")
    pairs = add_distractor(plain, "banana-shed", 1)
    h_neg, h_pos, p = pair_features(model, tok, pairs, batch_size=3, max_batch_tokens=20)
    np.testing.assert_allclose(h_neg, hidden_states(model, tok, pairs.neg), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h_pos, hidden_states(model, tok, pairs.pos), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p, zero_shot(model, tok, plain), rtol=1e-4)  # the distractor is not scored


def test_vectorised_bootstrap_equals_scoring_each_resample():
    from superalign.monitor.jobs import _scores
    from superalign.train.metrics import accuracy, auroc, percentile_ci

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 9), np.round(rng.random(9), 1)  # few pairs: ties and one-class resamples occur
    res = _scores(y, p, seed=5, n_boot=300)
    idx = np.random.default_rng(5).integers(0, 9, (300, 9))
    assert res["acc_ci"] == pytest.approx(percentile_ci(np.array([accuracy(y[i], p[i]) for i in idx])))
    assert res["auroc_ci"] == pytest.approx(percentile_ci(np.array([auroc(y[i], p[i]) for i in idx])))
    assert res["acc"] == accuracy(y, p) and res["auroc"] == auroc(y, p)


def _planted(truth_scale, distractor_scale, n=160, d=12, seed=0):
    """Hidden states where the truth and a distractor each flip a direction with the answer side."""
    rng = np.random.default_rng(seed)
    y, z = rng.integers(0, 2, n), rng.integers(0, 2, n)
    u, v = np.linalg.qr(rng.normal(size=(d, 2)))[0].T
    base = rng.normal(size=(n, d))
    s_t, s_d = (2 * y - 1)[:, None] * truth_scale, (2 * z - 1)[:, None] * distractor_scale
    x_pos = base + s_t * u + s_d * v + 0.3 * rng.normal(size=(n, d))
    x_neg = base - s_t * u - s_d * v + 0.3 * rng.normal(size=(n, d))
    return np.stack([x_neg, x_neg]), np.stack([x_pos, x_pos]), y, z


def test_probe_layers_says_what_ccs_found():
    from superalign.monitor.jobs import probe_layers

    kw = dict(layers=[1], ccs_restarts=3, ccs_epochs=200)
    threads = torch.get_num_threads()
    h_neg, h_pos, y, z = _planted(0.8, 4.0)  # the distractor dominates: CCS finds it, the supervised probes do not
    m, rec = probe_layers(h_neg, h_pos, np.full(len(y), 0.5), y, distractor=z, **kw)
    assert m["ccs_finds_distractor"] == 1.0 and m["ccs_distractor_acc"] > 0.9 and m["ccs_found_layer"] == 1
    assert m["logreg_best_acc"] > 0.8 and 0.5 <= m["logreg_distractor_acc"] < 0.75
    layer = rec["layers"]["1"]["ccs"]
    assert layer["distractor_acc_any_sign"] == max(layer["vs_distractor"]["acc"], 1 - layer["vs_distractor"]["acc"])
    h_neg, h_pos, y, z = _planted(4.0, 0.0)  # the truth dominates
    m, _ = probe_layers(h_neg, h_pos, np.full(len(y), 0.5), y, distractor=z, **kw)
    assert m["ccs_finds_distractor"] == 0.0 and m["ccs_truth_acc"] > 0.9 and m["ccs_distractor_acc"] < 0.75
    # calibrated zero-shot (golden): a model that always prefers the first answer but ranks the pairs perfectly is
    # at the base rate uncalibrated and exact once thresholded at the median held-out log-odds
    p_zero = np.where(y == 1, 0.4, 0.1) + 1e-3 * np.arange(len(y)) / len(y)  # distinct values, ranked perfectly
    m, rec = probe_layers(h_neg, h_pos, p_zero, y, **kw)  # no distractor: no distractor metrics
    te = np.random.default_rng(0).permutation(len(y))[:len(y) // 2]
    assert m["zero_shot_acc"] == pytest.approx(1 - y[te].mean()) and m["zero_shot_auroc"] == 1.0
    assert m["zero_shot_calibrated_acc"] == pytest.approx(1.0 - abs(y[te].mean() - 0.5))
    assert "ccs_distractor_acc" not in m and "vs_distractor" not in rec["layers"]["1"]["ccs"]
    assert torch.get_num_threads() == threads  # CCS's one-thread section gives the threads back


def test_probe_job_with_misleading_prefix_and_distractor_end_to_end(tmp_path, tiny_gpt2, claims, capsys):
    from superalign.cli import main
    from superalign.runs.store import RunStore

    rng = np.random.default_rng(0)
    words = ["good", "bad", "nice", "awful", "fine", "poor"]
    f = tmp_path / "reviews.jsonl"
    f.write_text("".join(json.dumps({"review": " ".join(rng.choice(words, 3)), "truth": int(i % 2)}) + "\n"
                         for i in range(28)))
    home = tmp_path / "home"
    data = ["--dataset", str(f), "--template-text", "{text} ok? {answer}", "--answers", "no", "yes",
            "--columns", "review=text", "--label-col", "truth", "--n", "24", "--prefix", "misleading",
            "--prefix-k", "2", "--distractor", "banana-shed"]
    main(["monitor", "probe", "--model", tiny_gpt2, *data, "--ccs-restarts", "2", "--ccs-epochs", "20",
          "--layers", "0", "2", "--home", str(home), "--progress", "false"])
    (run,) = RunStore(home).list()
    m = run["metrics"]
    for k in ("zero_shot_acc", "ccs_best_acc", "ccs_truth_acc", "ccs_distractor_acc", "zero_shot_distractor_acc",
              "logreg_distractor_acc", "mass_mean_distractor_acc", "ccs_finds_distractor"):
        assert 0 <= m[k] <= 1, k
    assert m["ccs_found_layer"] in (0, 2) and run["config"]["prefix"] == "misleading"
    per = json.loads(open(run["artefacts"]["per_layer"]).read())
    assert per["distractor"] == "banana-shed" and per["prefix"].count("ok? ") == 2
    assert "vs_distractor" in per["layers"]["2"]["ccs"] and per["example"]["pos"].startswith(per["prefix"])
    from superalign.monitor.report import monitor_section

    html = monitor_section([run])  # the section alone: the table names the conditions, the plot has the curve
    assert "prefix=misleading distractor=banana-shed" in html and "accuracy per layer" in html
    # what is probed, printed and written by `superalign monitor pairs` (same flags)
    out = tmp_path / "pairs.jsonl"
    main(["monitor", "pairs", *data, "--out", str(out), "--show", "1"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 24 and rows[0]["pos"] == per["example"]["pos"] and rows[0]["distractor"] in (0, 1)
    assert "fingerprint " + per["pairs"] in capsys.readouterr().out
    code = main(["monitor", "probe", "--model", tiny_gpt2, *data[:-4], "--prefix-k", "5",
                 "--home", str(tmp_path / "h2"), "--progress", "false"])
    assert code == 2 and not (tmp_path / "h2").exists()  # too many demonstrations: one line, nothing written
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_ccs_benchmark_quick_mode(tmp_path, tiny_gpt2):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "monitor_ccs.py"
    spec = importlib.util.spec_from_file_location("monitor_ccs_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        res = bench.main(["--quick", "--model", tiny_gpt2, "--home", str(tmp_path / "home"),
                          "--out", str(tmp_path / "ccs.json"), "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "ccs.json").read_text())
    assert set(saved["summary"]["vader"]) == {"plain", "misleading", "distractor"}
    assert 0 <= saved["summary"]["vader"]["distractor"]["ccs_distractor_acc"] <= 1
    assert "Misleading prefix" in res["table"] and "| vader | distractor |" in res["table"]
