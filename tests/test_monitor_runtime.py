"""Run-time monitors end to end: probe → one-state monitor (golden), the mean-difference monitor, `superalign monitor
watch` on a tiny GPT-2, the monitor hooks of `rlhf ppo` / `rlhf bon` / HFLocalLLM, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from superalign.cli import main
from superalign.models.watch import LinearMonitor
from superalign.monitor.probes import Normalizer, Probe, fit_mass_mean
from superalign.monitor.runtime import mean_difference_monitor, pair_logit, probe_monitor
from superalign.runs.store import RunStore


def _score(mon: LinearMonitor, x) -> np.ndarray:
    import torch

    return mon.token_scores(torch.as_tensor(np.asarray(x, dtype=np.float32))).double().numpy()


def test_probe_monitor_hand_example():
    # w = [1, 2], b = .5, μ⁺ = [1, 0], μ⁻ = [0, 1], σ = [1, 2] on both sides → v = w/σ = [1, 1], c = [.5, .5],
    # κ = b − w·(μ⁺ − μ⁻)/σ = .5 − (1 − 1) = .5. Pair x⁺ = [2, 2], x⁻ = [0, 0]: x̃⁺ = [1, 1], x̃⁻ = [0, −.5],
    # ℓ = 1·1 + 2·1.5 + .5 = 4.5; score(x⁺) = 3, score(x⁻) = −1: 3 − (−1) + κ = 4.5
    norm = Normalizer(np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    probe = Probe("mass_mean", np.array([1.0, 2.0]), 0.5, norm)
    mon = probe_monitor(probe, layer=3, flag_label=1)
    assert np.allclose(mon.direction, [1, 1]) and np.allclose(mon.center, [0.5, 0.5])
    assert mon.meta["pair_offset"] == pytest.approx(0.5) and mon.layer == 3
    assert pair_logit(probe, [[2, 2]], [[0, 0]])[0] == pytest.approx(4.5)
    assert _score(mon, [[2, 2]])[0] == pytest.approx(3) and _score(mon, [[0, 0]])[0] == pytest.approx(-1)


@pytest.mark.parametrize("method", ["logreg", "mass_mean", "ccs"])
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("flag_label", [0, 1])
def test_probe_monitor_pair_difference_is_the_probe_logit(method, sign, flag_label):
    rng = np.random.default_rng(0)
    d, n = 6, 40
    sd = rng.uniform(0.5, 2.0, d)  # equal spreads on both sides: the identity is exact
    norm = Normalizer(rng.normal(size=d), rng.normal(size=d), sd, sd.copy())
    probe = Probe(method, rng.normal(size=d), float(rng.normal()), norm, sign=sign)
    xp, xn = rng.normal(size=(n, d)) * 3, rng.normal(size=(n, d)) * 3
    mon = probe_monitor(probe, layer=1, flag_label=flag_label)
    f = 1 if flag_label == 1 else -1
    ell = pair_logit(probe, xp, xn)
    assert np.allclose(f * (_score(mon, xp) - _score(mon, xn)) + mon.meta["pair_offset"], ell, atol=1e-4)
    if method != "ccs":  # σ(ℓ) is the linear probes' P(true): pair_logit is their logit
        assert np.allclose(1 / (1 + np.exp(-ell)), probe.predict(xp, xn))


def test_fitted_probe_monitor_orders_pairs_like_the_probe():
    rng = np.random.default_rng(1)
    d, n = 8, 300
    y = rng.integers(0, 2, n)
    truth = np.outer(2 * y - 1, rng.normal(size=d))
    xp, xn = rng.normal(size=(n, d)) + truth + 1.0, rng.normal(size=(n, d)) * 1.1 - truth  # unequal spreads
    probe = fit_mass_mean(xp, xn, y)
    mon = probe_monitor(probe, layer=0, flag_label=1)
    diff, ell = _score(mon, xp) - _score(mon, xn), pair_logit(probe, xp, xn)
    assert np.corrcoef(diff, ell)[0, 1] > 0.99
    # flagging label 0 reverses the orientation
    assert np.allclose(probe_monitor(probe, 0, flag_label=0).direction, -mon.direction)


def test_mean_difference_monitor_golden():
    h_flag = np.array([[2.0, 0.0], [4.0, 2.0]])  # mean [3, 1]
    h_clean = np.array([[1.0, 1.0], [-1.0, 1.0]])  # mean [0, 1]; Δ = [3, 0], c = [1.5, 1], v = 2Δ/9
    mon = mean_difference_monitor(h_flag, h_clean, layer=2, pool="max", whiten=False)
    assert np.allclose(mon.direction, [2 / 3, 0]) and np.allclose(mon.center, [1.5, 1.0]) and mon.pool == "max"
    assert np.allclose(_score(mon, [[3, 1], [0, 1], [1.5, 7]]), [1, -1, 0])
    with pytest.raises(Exception, match="same mean"):
        mean_difference_monitor(h_clean, h_clean, 0)


def test_whitened_mean_difference_monitor_golden():
    # flag [[0, 0], [2, 4]]: mean [1, 2]; clean [[-1, -4], [-1, 4]]: mean [-1, 0]; Δ = [2, 2], c = [0, 1]
    # centred: flag ±[1, 2], clean ±[0, 4] → pooled variances [(1 + 1 + 0 + 0)/4, (4 + 4 + 16 + 16)/4] = [.5, 10]
    # u = Δ/var = [4, .2], u·Δ = 8.4 → direction = 2u/8.4
    mon = mean_difference_monitor([[0, 0], [2, 4]], [[-1, -4], [-1, 4]], layer=0)
    assert np.allclose(mon.direction, np.array([4, 0.2]) * 2 / 8.4, rtol=1e-5) and np.allclose(mon.center, [0, 1])
    assert np.allclose(_score(mon, [[1, 2], [-1, 0]]), [1, -1], atol=1e-5)


# ----------------------------------------------------------------------------- CLI on a tiny GPT-2


@pytest.fixture(scope="module")
def tiny_eos(tiny_gpt2, tmp_path_factory):
    """The tiny GPT-2 with an EOS token (generation stops there), plus prompt and fitting files."""
    import shutil

    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("mon_rt")
    shutil.copytree(tiny_gpt2, d / "lm")
    tok = AutoTokenizer.from_pretrained(d / "lm")
    tok.eos_token = "[SEP]"
    tok.save_pretrained(d / "lm")
    (d / "clean.jsonl").write_text("".join(json.dumps({"prompt": f"the food was good {i}"}) + "\n" for i in range(8)))
    (d / "bad.jsonl").write_text("".join(json.dumps({"prompt": f"awful terrible day {i}"}) + "\n" for i in range(8)))
    (d / "fit.jsonl").write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n"
                                         for i, t in enumerate(["bad awful", "good nice", "terrible", "great"] * 3)))
    (d / "rl.jsonl").write_text("".join(json.dumps({"prompt": f"the movie {i}"}) + "\n" for i in range(8)))
    return d


def _watch_args(d, home, *extra):
    return ["monitor", "watch", "--home", str(home), "--progress", "false", "--model", str(d / "lm"),
            "--dataset", str(d / "fit.jsonl"), "--n-fit", "12", "--clean", str(d / "clean.jsonl"),
            "--flagged", str(d / "bad.jsonl"), "--n-prompts", "8", "--max-new-tokens", "5", "--n-boot", "20",
            "--batch-size", "8", *extra]


@pytest.fixture(scope="module")
def watched(tiny_eos, tmp_path_factory):
    home = tmp_path_factory.mktemp("mon_home") / "home"
    assert main(_watch_args(tiny_eos, home, "--fpr", "0.25")) == 0
    (run,) = RunStore(home).list(kind="monitor-watch")
    return home, run


def test_watch_cli_end_to_end(tiny_eos, watched, capsys):
    home, run = watched
    m = run["metrics"]
    for k in ("auroc", "tpr_at_25pct", "fpr_at_25pct", "monitor_share_of_generation", "monitor_flops_share"):
        assert 0 <= m[k] <= 1, k
    for tag in ("1pct", "5pct"):  # 4 calibration samples cannot set a 1% or 5% threshold: n/a with the reason
        assert m[f"tpr_at_{tag}"] is None and "n/a: 4 clean calibration samples" in m[f"tpr_at_{tag}_na"]
    assert m["samples_identical"] is True and m["n_calib"] == 4 and m["n_clean_eval"] == 4 and m["n_flagged"] == 8
    assert m["monitor_flops_per_token"] == 3 * 32 and m["generated_tokens"] > 0 and m["layer"] == 1
    assert run["compute"]["flops"].get("monitor", 0) > 0
    mon = LinearMonitor.load(run["artefacts"]["monitor"])
    assert mon.threshold == pytest.approx(m["threshold_at_25pct"]) and mon.meta["fpr_target"] == 0.25
    rows = [json.loads(x) for x in open(run["artefacts"]["samples"])]
    assert len(rows) == 16 and sum(r["flag"] for r in rows[:8]) <= 8
    # the same config is the same run; an edited prompt file is a new one
    assert main(_watch_args(tiny_eos, home, "--fpr", "0.25")) == 0
    assert "already done" in capsys.readouterr().out
    # the saved monitor watches the local LLM backend: one score per completion, equal to the job's
    from superalign.interp.llm import HFLocalLLM

    llm = HFLocalLLM(str(tiny_eos / "lm"), device="cpu", batch_size=8, watch=mon)
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    llm.generate(prompts, 5, 0.7, seed=0)
    assert np.allclose(llm.monitor_scores, [r["score"] for r in rows], atol=1e-5)
    assert llm.monitor_flags.tolist() == [r["flag"] for r in rows]


def test_watch_fits_a_contrast_pair_probe(tiny_eos, tmp_path):
    home = tmp_path / "home"
    tmpl = ["--fit", "mass_mean", "--template-text", "{text} Mood: {answer}", "--answers", "sad", "happy"]
    assert main(_watch_args(tiny_eos, home, *tmpl, "--layer", "2")) == 0
    (run,) = RunStore(home).list(kind="monitor-watch")
    assert run["metrics"]["layer"] == 2 and LinearMonitor.load(run["artefacts"]["monitor"]).meta["method"] == \
        "mass_mean"


def test_watch_with_a_saved_monitor(tiny_eos, watched, tmp_path):
    home = tmp_path / "home"
    assert main(_watch_args(tiny_eos, home, "--monitor", watched[1]["artefacts"]["monitor"])) == 0
    (run,) = RunStore(home).list(kind="monitor-watch")
    assert run["metrics"]["auroc"] == watched[1]["metrics"]["auroc"]  # same monitor, same samples
    assert run["config"]["monitor_fingerprint"] and "data_fingerprint" not in run["config"]


def test_ppo_and_bon_with_a_monitor(tiny_eos, watched, tmp_path):
    home, mon_dir = tmp_path / "home", watched[1]["artefacts"]["monitor"]
    lm, base = str(tiny_eos / "lm"), ["--home", str(tmp_path / "home"), "--progress", "false"]
    assert main(["rlhf", "ppo", *base, "--policy", lm, "--reward", lm, "--prompts", str(tiny_eos / "rl.jsonl"),
                 "--updates", "2", "--batch-size", "2", "--minibatch-size", "2", "--ppo-epochs", "1",
                 "--response-len", "3", "--monitor", mon_dir]) == 0
    (run,) = RunStore(home).list(kind="rlhf-ppo")
    hist = run["metrics"]["history"]
    assert all("monitor/score" in h and 0 <= h["monitor/flag_rate"] <= 1 for h in hist)
    assert run["config"]["monitor_fingerprint"]
    bon = ["rlhf", "bon", *base, "--policy", lm, "--reward", lm, "--prompts", str(tiny_eos / "rl.jsonl"),
           "--n", "4", "--n-prompts", "3", "--response-len", "4", "--monitor", mon_dir]
    assert main(bon) == 0 and main([*bon, "--drop-flagged", "true"]) == 0
    plain, dropped = sorted(RunStore(home).list(kind="rlhf-bon"), key=lambda r: "drop_flagged" in r["config"])
    assert 0 <= plain["metrics"]["flag_rate"] <= 1 and "dropped_share" not in plain["metrics"]
    m = dropped["metrics"]
    assert m["dropped_share"] == plain["metrics"]["flag_rate"]  # same samples (same seed), the same ones flagged
    assert m["best_flag_rate"] <= m["prompts_all_flagged"] + 1e-12  # a flagged sample wins only when all are
    rows = [json.loads(x) for x in open(dropped["artefacts"]["best_of_n"])]
    assert all(len(r["monitor_scores"]) == 4 and r["monitor"] in r["monitor_scores"] for r in rows)


def _bad_monitor(tmp_path, d_model: int, layer: int = 1):
    return str(LinearMonitor(layer=layer, direction=np.ones(d_model), threshold=0.0).save(tmp_path / f"m{d_model}"))


@pytest.mark.parametrize("case", ["missing_monitor", "hidden_size", "layer", "monitor_layer", "empty_prompts",
                                  "fpr_zero", "fpr_one"])
def test_watch_bad_input_is_one_line_and_writes_nothing(tiny_eos, tmp_path, capsys, case):
    home = tmp_path / "home"
    (tmp_path / "empty.jsonl").write_text("")
    extra = {"missing_monitor": ["--monitor", str(tmp_path / "nope")],
             "hidden_size": ["--monitor", _bad_monitor(tmp_path, 7)],
             "layer": ["--layer", "5"],
             "monitor_layer": ["--monitor", _bad_monitor(tmp_path, 32, layer=9)],
             "empty_prompts": ["--clean", str(tmp_path / "empty.jsonl")],
             "fpr_zero": ["--fpr", "0"], "fpr_one": ["--fpr", "1"]}[case]
    assert main(_watch_args(tiny_eos, home, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err, err
    want = {"missing_monitor": "not a saved monitor", "hidden_size": "hidden size 7", "layer": "out of range",
            "monitor_layer": "out of range", "empty_prompts": "", "fpr_zero": "fpr", "fpr_one": "fpr"}[case]
    assert want in err
    assert not home.exists()


def test_rlhf_monitor_bad_input(tiny_eos, tmp_path, capsys):
    home, lm = tmp_path / "home", str(tiny_eos / "lm")
    base = ["--home", str(home), "--progress", "false", "--policy", lm, "--reward", lm,
            "--prompts", str(tiny_eos / "rl.jsonl")]
    assert main(["rlhf", "ppo", *base, "--monitor", str(tmp_path / "nope")]) == 2
    assert "not a saved monitor" in capsys.readouterr().err
    assert main(["rlhf", "bon", *base, "--monitor", _bad_monitor(tmp_path, 7)]) == 2
    assert "hidden size 7" in capsys.readouterr().err
    assert main(["rlhf", "bon", *base, "--drop-flagged", "true"]) == 2
    assert "--drop-flagged needs --monitor" in capsys.readouterr().err
    assert not home.exists()


def test_watch_run_id_follows_file_contents(tiny_eos, tmp_path):
    from superalign.monitor.watch_job import WatchJob

    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps({"prompt": "a"}) + "\n")
    mon = _bad_monitor(tmp_path, 32)
    job = WatchJob(model=str(tiny_eos / "lm"), clean=str(clean), flagged="demo-negative", monitor=mon)
    k0 = job.key()
    assert "clean" in k0["prompt_fingerprints"] and "flagged" not in k0["prompt_fingerprints"]
    clean.write_text(json.dumps({"prompt": "b"}) + "\n")
    k1 = job.key()
    assert k1["prompt_fingerprints"] != k0["prompt_fingerprints"] and k1["monitor_fingerprint"] == \
        k0["monitor_fingerprint"]
    LinearMonitor(layer=1, direction=np.ones(32), threshold=0.5).save(mon)  # recalibrated: a new run
    assert job.key()["monitor_fingerprint"] != k0["monitor_fingerprint"]


def test_local_llm_rejects_a_monitor_of_another_model(tiny_eos, tmp_path):
    from superalign.errors import SuperalignError
    from superalign.interp.llm import HFLocalLLM

    with pytest.raises(SuperalignError, match="hidden size 7"):
        HFLocalLLM(str(tiny_eos / "lm"), device="cpu", watch=LinearMonitor.load(_bad_monitor(tmp_path, 7)))


def test_tpr_at_an_fpr_the_calibration_set_cannot_resolve_is_na():
    from superalign.monitor.watch_job import calibrate_and_evaluate

    rng = np.random.default_rng(0)
    flagged = rng.normal(2, 1, 50)
    for n_clean, has_1pct in ((200, True), (198, False)):  # calib_frac ½: 100 vs 99 calibration samples
        r = calibrate_and_evaluate(rng.normal(0, 1, n_clean), flagged, 0.5, (0.01, 0.05), seed=0, n_boot=20)
        assert (r["tpr_at_1pct"] is not None) is has_1pct
        assert r["tpr_at_5pct"] is not None  # 20 calibration samples suffice for 5%
        if not has_1pct:
            why = r["tpr_at_1pct_na"]
            assert why.startswith("n/a: 99 clean calibration samples") and "≥ 100" in why
