"""The over-optimization study across methods: per-method numbers against hand computations, fits, the DPO
evaluation hook, the run id of the old two-method study, an end-to-end CLI run of all six methods, bad input."""

import json
import math

import numpy as np
import pytest
import torch

from superalign.cli import main
from superalign.errors import SuperalignError
from superalign.rlhf import testbed as tb
from superalign.rlhf.bon import kl_bon
from superalign.rlhf.overopt import (
    METHODS,
    OveroptJob,
    fit_curves,
    no_penalty_beta,
    run_summary,
    summarize,
)
from superalign.runs.store import run_id

TINY = tb.TestbedLMConfig(n_layer=1, n_embd=32, n_head=2, n_sentences=1000, batch_size=64, lr=5e-3)  # quality moot


def traj(method, beta, kl, gold, proxy, x=None):
    x = x if x is not None else list(range(len(kl)))
    return {"method": method, "beta": beta, "x": x, "progress": [i / (len(kl) - 1) for i in range(len(kl))],
            "kl": kl, "d": [math.sqrt(k) for k in kl], "gold": gold, "proxy": proxy}


# ----------------------------------------------------------------------------- golden: the per-method numbers


def test_run_summary_by_hand():
    # gold rises 0.2 → 0.7 at KL 4 (index 2), then falls to 0.5 while the proxy keeps rising 1.5 → 2.5
    t = traj("ppo", 0.0, [0.0, 1.0, 4.0, 9.0, 16.0], [0.2, 0.5, 0.7, 0.6, 0.5], [0.0, 1.0, 1.5, 2.0, 2.5])
    s = run_summary(t, tol=0.05)
    assert s["peak_gold_gain"] == pytest.approx(0.5)
    assert (s["peak_x"], s["peak_kl"], s["peak_d"], s["peak_progress"]) == (2, 4.0, 2.0, 0.5)
    assert s["gain_per_nat"] == pytest.approx(0.5 / 4)
    assert s["gain_per_sqrt_nat"] == pytest.approx(0.5 / 2)
    assert s["final_gold_gain"] == pytest.approx(0.3)
    assert s["drop_from_peak"] == pytest.approx(0.2)
    assert s["peak_proxy_gain"] == pytest.approx(1.5) and s["final_proxy_gain"] == pytest.approx(2.5)
    assert s["proxy_rise_after_peak"] == pytest.approx(1.0)
    assert s["overoptimized"] and s["final_kl"] == 16.0
    assert s["onset_d"] == 3.0 and s["onset_progress"] == 0.75  # 0.6 ≤ 0.7 − 0.05 first at index 3
    assert s["peak_is_last"] is False


def test_run_summary_needs_a_fall_beyond_tol_a_rising_proxy_and_a_gain_first():
    rising = traj("ppo", 0.05, [0, 1, 4], [0.2, 0.5, 0.7], [0, 1, 2])
    assert not run_summary(rising, 0.05)["overoptimized"] and run_summary(rising, 0.05)["onset_d"] is None
    small_dip = traj("ppo", 0.05, [0, 1, 4], [0.2, 0.7, 0.68], [0, 1, 2])
    assert not run_summary(small_dip, 0.05)["overoptimized"]
    assert run_summary(small_dip, 0.01)["overoptimized"]
    proxy_falls_too = traj("ppo", 0.05, [0, 1, 4], [0.2, 0.7, 0.5], [0, 2, 1])  # collapse, not over-optimization
    assert not run_summary(proxy_falls_too, 0.05)["overoptimized"]
    never_better = traj("ppo", 0.0, [0, 1, 4], [0.2, 0.1, 0.0], [0, 1, 2])  # gold never rose above SFT
    s = run_summary(never_better, 0.05)
    assert not s["overoptimized"] and s["peak_gold_gain"] == 0 and s["gain_per_nat"] is None


def test_no_penalty_beta():
    assert no_penalty_beta("ppo", [0.05, 0.0]) == 0.0
    assert no_penalty_beta("grpo", [0.05]) is None  # no β = 0 run: no answer rather than the wrong run
    assert no_penalty_beta("dpo", [0.5, 0.05, 0.1]) == 0.05


def test_summarize_by_hand():
    n = [1, 2, 4, 8]
    bon = traj("bon", None, [float(k) for k in kl_bon(np.array(n))], [0.2, 0.4, 0.5, 0.55], [0, 0.5, 0.9, 1.2], x=n)
    runs = [
        bon,
        # PPO β=0: peak +0.5 at KL 4 (d 2), falls to +0.1 with the proxy rising → over-optimizes, turns at d = 2
        traj("ppo", 0.0, [0, 1, 4, 9], [0.2, 0.5, 0.7, 0.3], [0, 1, 2, 3]),
        # PPO β=0.05: peak +0.6 at KL 1 (d 1), no fall → the best PPO run: 0.6 per nat
        traj("ppo", 0.05, [0, 1, 1], [0.2, 0.8, 0.8], [0, 1, 1]),
        # GRPO β=0: peak +0.4 at KL 9 (d 3), falls to +0.1 → over-optimizes, turns later than PPO (d 3 > 2)
        traj("grpo", 0.0, [0, 4, 9, 16], [0.2, 0.4, 0.6, 0.3], [0, 1, 2, 3]),
        traj("grpo", 0.05, [0, 0.25, 1], [0.2, 0.3, 0.5], [0, 0.5, 1]),
        # DPO: the smallest β (0.1) is its no-penalty run; peak +0.3 at KL 0.25 (d 0.5) then a fall: first
        traj("dpo", 0.1, [0, 0.25, 4], [0.2, 0.5, 0.1], [0, 1, 2]),
        traj("dpo", 1.0, [0, 0.04, 0.09], [0.2, 0.25, 0.3], [0, 0.1, 0.2]),
    ]
    s = summarize(runs, tol=0.05)
    assert len(s["runs"]) == 7
    by = {p["method"]: p for p in s["methods"]}
    assert list(by) == ["bon", "ppo", "grpo", "dpo"]
    # best-of-n: its one curve peaks at n = 8 with gain 0.35 at KL_bon(8) = log 8 − 7/8
    assert by["bon"]["peak_gold_gain"] == pytest.approx(0.35)
    assert by["bon"]["gain_per_nat"] == pytest.approx(0.35 / (math.log(8) - 7 / 8))
    assert by["bon"]["no_penalty_overoptimized"] is False and by["bon"]["no_penalty_beta"] is None
    assert by["ppo"]["best_beta"] == 0.05 and by["ppo"]["peak_gold_gain"] == pytest.approx(0.6)
    assert by["ppo"]["gain_per_nat"] == pytest.approx(0.6) and by["ppo"]["gain_per_sqrt_nat"] == pytest.approx(0.6)
    assert by["ppo"]["no_penalty_beta"] == 0.0 and by["ppo"]["no_penalty_overoptimized"] is True
    assert by["ppo"]["no_penalty_drop"] == pytest.approx(0.4) and by["ppo"]["no_penalty_peak_d"] == 2.0
    assert by["grpo"]["best_beta"] == 0.0 and by["grpo"]["gain_per_nat"] == pytest.approx(0.4 / 9)
    assert by["dpo"]["no_penalty_beta"] == 0.1 and by["dpo"]["no_penalty_peak_d"] == 0.5
    a = s["answers"]
    # gain per nat at each method's best run: bon 0.35/1.204 = 0.29, ppo 0.6, grpo 0.044, dpo 0.3/0.25 = 1.2
    assert a["best_gain_per_nat"] == "dpo"
    assert a["first_to_overoptimize"] == "dpo" and a["overoptimize_ranking"] == ["dpo", "ppo", "grpo"]
    g = {x["beta"]: x for x in a["group_baseline"]}
    assert g[0.0]["ppo_peak_d"] == 2.0 and g[0.0]["grpo_peak_d"] == 3.0 and g[0.0]["grpo_minus_ppo"] == 1.0
    assert g[0.05]["ppo_peak_d"] == 1.0 and g[0.05]["grpo_minus_ppo"] == 0.0
    assert g[0.05]["grpo_peak_is_last"] and not g[0.0]["grpo_peak_is_last"] and g[0.05]["ppo_peak_is_last"] is False


def test_fits_recover_the_functional_forms_and_need_enough_points():
    d = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    bon = {"d": list(d), "gold": list(0.3 + d * (0.6 - 0.15 * d)), "proxy": list(d * (1.5 - 0.3 * d))}
    dl = np.where(d > 0, d * np.log(np.where(d > 0, d, 1)), 0)
    rl = [{"method": "ppo", "d": list(d), "gold": list(0.3 + 0.4 * d - 0.2 * dl), "proxy": list(0.9 * d - 0.1 * dl)}]
    few = [{"method": "grpo", "d": [0.0, 1.0, 2.0], "gold": [0.0, 0.1, 0.2], "proxy": [0.0, 0.1, 0.2]}]
    bon_traj = {"method": "bon", **{k: bon[k] for k in ("d", "gold", "proxy")}}  # as run_overopt passes it
    f = fit_curves(bon, [bon_traj] + rl + few)
    assert (f["bon_gold"]["alpha"], f["bon_gold"]["beta"]) == (pytest.approx(0.6), pytest.approx(0.15))
    assert (f["ppo_gold"]["alpha"], f["ppo_gold"]["beta"]) == (pytest.approx(0.4), pytest.approx(0.2))
    assert f["ppo_gold"]["r2"] == pytest.approx(1.0)
    assert "grpo_gold" not in f  # two points with d > 0: not enough for a two-parameter fit with an R²
    assert f["rl_gold"]["r2"] < 1  # pooled over the online runs


# ----------------------------------------------------------------------------- the job's id and input checks


def test_the_old_two_method_study_keeps_its_run_id():
    """Computed with the code before GRPO/RLOO/DPO/IPO joined: `rlhf overopt` with its then defaults."""
    old = OveroptJob(methods=["bon", "ppo"], n_max=256, bon_prompts=64, kl_coefs=[0.01], updates=80, device="cpu")
    assert run_id("rlhf-overopt", old.key()) == "rlhf-overopt-6d2d4038a811da06"
    new = OveroptJob(device="cpu")
    assert run_id("rlhf-overopt", new.key()) != run_id("rlhf-overopt", old.key())
    assert "dpo_betas" not in OveroptJob(methods=["ppo"], device="cpu").key()  # fields of methods not run
    assert OveroptJob(device="cpu", tol=0.1).key() == new.key()  # tol only classifies


@pytest.mark.parametrize("kw, msg", [
    ({"methods": ["bon", "sft"]}, r"unknown method 'sft'"),
    ({"methods": []}, r"no methods"),
    ({"methods": ["dpo", "dpo"]}, r"repeats a method"),
    ({"dpo_betas": []}, r"no values in --dpo-betas"),
    ({"kl_coefs": []}, r"no values in --kl-coefs"),
    ({"dpo_betas": [0.0]}, r"--dpo-betas"),
    ({"batch_size": 30, "group_size": 4}, r"not a multiple of --group-size"),
    ({"updates": 1, "batch_size": 8, "n_max": 64}, r"smaller than --n-max"),
])
def test_bad_config_is_one_line(kw, msg):
    with pytest.raises(SuperalignError, match=msg) as e:
        OveroptJob(**kw)
    assert "\n" not in str(e.value)


def test_an_empty_list_for_methods_not_run_is_fine():
    assert OveroptJob(methods=["ppo"], dpo_betas=[]).dpo_betas == []


@pytest.mark.parametrize("args, msg", [
    (["--methods", "bon", "sft"], "invalid choice: 'sft'"),
    (["--dpo-betas"], "--dpo-betas"),
    (["--kl-coefs"], "--kl-coefs"),
    (["--methods", "bon", "--n-max", "3"], "n_max"),
])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(args, msg, tmp_path, capsys):
    home = tmp_path / "home"
    try:  # argparse's own errors (a choice, a missing value) exit; the config's checks return 2
        rc = main(["rlhf", "overopt", "--home", str(home), "--progress", "false", *args])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err
    assert not home.exists()


# ----------------------------------------------------------------------------- the DPO evaluation hook


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny testbed LM (the policy) and a tiny proxy reward model trained on gold-labelled pairs."""
    from superalign.rlhf import data as rdata
    from superalign.rlhf.reward import RewardTrainConfig, load_reward_model, train_reward_model

    d = tmp_path_factory.mktemp("overopt")
    lm = str(tb.pretrain_testbed_lm(TINY, d / "tiny_lm", progress=False))
    rng, gold, pairs = np.random.default_rng(0), tb.GoldReward(), []
    while len(pairs) < 100:
        p, a = tb.split_sentence(tb.sample_sentence(rng))
        _, b = tb.split_sentence(tb.sample_sentence(rng))
        ga, gb = gold(p, a), gold(p, b)
        if ga != gb:
            pairs.append({"prompt": p, "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
    tok, rm = load_reward_model(lm)
    train_reward_model(rm, tok, rdata.preferences_to_rankings(pairs), RewardTrainConfig(epochs=1, batch_size=16,
                                                                                        lr=3e-3), progress=False)
    rm.save(d / "rm", tok)
    return {"lm": lm, "rm": str(d / "rm"), "pairs": pairs}


def test_dpo_eval_hook_is_called_every_k_steps_and_after_the_last_without_changing_training(tiny):
    from superalign.models.lm import load_lm
    from superalign.rlhf.dpo import DPOConfig, train_dpo

    cfg = DPOConfig(beta=0.1, epochs=1, batch_size=4, lr=1e-3)  # 20 pairs → 5 steps
    pairs = tiny["pairs"][:20]
    tok, ref = load_lm(tiny["lm"])
    seen = []

    def hook(step, model):
        seen.append((step, model))
        return {"kl": float(step), "marker": "x"}

    torch.manual_seed(0)
    _, a = load_lm(tiny["lm"])
    fit = train_dpo(a, ref, tok, pairs, cfg, progress=False, eval_hook=hook, eval_every=2)
    assert [e["step"] for e in fit.evals] == [2, 4, 5]  # every 2nd step, and the trained model at the end
    assert fit.evals[0] == {"step": 2, "kl": 2.0, "marker": "x"}
    assert all(m is a for _, m in seen)
    torch.manual_seed(0)
    _, b = load_lm(tiny["lm"])
    plain = train_dpo(b, ref, tok, pairs, cfg, progress=False)
    assert not plain.evals and plain.losses == fit.losses  # the hook does not change training
    with pytest.raises(SuperalignError, match="--eval-every"):
        train_dpo(b, ref, tok, pairs, cfg, progress=False, eval_hook=hook, eval_every=0)


# ----------------------------------------------------------------------------- end to end


def test_cli_runs_every_method_writes_the_figure_and_json_and_reports(tiny, tmp_path, capsys):
    home = tmp_path / "home"
    argv = ["rlhf", "overopt", "--home", str(home), "--progress", "false", "--policy", tiny["lm"], "--reward",
            tiny["rm"], "--updates", "2", "--batch-size", "8", "--group-size", "4", "--eval-every", "1",
            "--n-prompts", "4", "--eval-samples", "1", "--n-max", "4", "--kl-coefs", "0", "0.1", "--dpo-betas", "0.1",
            "--dpo-batch-size", "4", "--dpo-epochs", "1", "--dpo-eval-every", "2", "--ppo-lr", "3e-3",
            "--dpo-lr", "3e-3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    js = json.loads(open(out.split("json: ")[1].split()[0]).read())
    png = out.split("plot: ")[1].split()[0]
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert js["budget"] == 16 and js["bon"]["prompts"] == 4 and js["dpo_data"]["pairs"] == 8
    got = [(t["method"], t["beta"]) for t in js["trajectories"]]
    assert got == [("bon", None)] + [(m, b) for m in ("ppo", "grpo", "rloo") for b in (0.0, 0.1)] + \
        [("dpo", 0.1), ("ipo", 0.1)]
    for t in js["trajectories"][1:]:
        assert t["kl"][0] == 0 and t["gold"][0] == js["sft_gold"] and all(k >= 0 for k in t["kl"])
        assert t["x"] == ([0, 1, 2] if t["method"] in ("ppo", "grpo", "rloo") else [0, 2])  # SFT, then the evals
    assert [p["method"] for p in js["summary"]["methods"]] == list(METHODS)
    assert {"bon_gold", "bon_proxy"} <= set(js["fits"])
    assert js["first_to_overoptimize"] == js["summary"]["answers"]["first_to_overoptimize"]
    assert set(js["summary"]["answers"]) == {"best_gain_per_nat", "first_to_overoptimize", "overoptimize_ranking",
                                             "group_baseline"}
    assert main(["report", "--home", str(home), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "Over-optimization" in html and "gain / nat" in html and "RLOO" in html


def test_report_renders_a_run_stored_by_the_old_two_method_study():
    """Old runs have best-of-n and PPO curves ("bon", "rl") but no trajectories, summary or per-method fits."""
    from pathlib import Path

    from superalign.rlhf.report import rlhf_section

    old = json.loads((Path(__file__).parents[1] / "benchmarks/results/rlhf_overopt.json").read_text())
    metrics = {k: old[k] for k in ("sft_gold", "sft_proxy", "bon_gold_max", "bon_gold_argmax_n", "rl_gold_max",
                                   "fits", "bon", "rl")}
    html = rlhf_section([{"id": "rlhf-overopt-old", "kind": "rlhf-overopt", "status": "done", "metrics": metrics,
                          "config": {"kl_coefs": [0.0, 0.01, 0.05]}}])
    assert "Over-optimization" in html and "PPO" in html and "<img" in html
    assert "First to over-optimize without a penalty" in html and "<b>PPO</b>" in html  # its β = 0 run fell
