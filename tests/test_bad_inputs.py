"""Every bad input to every command is one line ``superalign: error: …`` naming the problem and a fix, exit status
2, no traceback, and the run store byte-identical afterwards (a store that did not exist still does not exist).

Each case runs ``superalign.cli.main`` in-process (a few run ``python -m superalign`` in a subprocess, to see what a
user sees) in a fresh working directory holding only the ``--home`` store, so a default ``./superalign_runs`` or a
half-written output file would show up as a changed folder. Cases fail before any model loads: the whole file is
meant to stay well under a minute. ``test_tally`` (last) prints tried / one line / traceback / wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from superalign.cli import main

ROOT = Path(__file__).resolve().parents[1]
TALLY: dict[str, dict] = {}


# ----------------------------------------------------------------------------- bad input files, made once


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Paths of damaged and foreign inputs: checkpoints of the wrong kind, truncated weights, corrupt JSON, …"""
    import numpy as np
    import torch

    from superalign.interp.sae import SAEConfig, TopKSAE
    from superalign.oversight.judge import Judge, JudgeConfig, save_judge

    d = tmp_path_factory.mktemp("bad_inputs")
    f: dict[str, str] = {}

    (d / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "completion": "cr\xe8me"}\n'.encode("latin-1"))
    f["non_utf8_jsonl"] = str(d / "latin1.jsonl")
    (d / "empty.jsonl").write_text("")
    f["empty_jsonl"] = str(d / "empty.jsonl")
    (d / "broken.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n')
    f["broken_jsonl"] = str(d / "broken.jsonl")
    (d / "nocols.jsonl").write_text('{"q": "a", "good": "b", "bad": "c"}\n')
    f["wrong_columns_jsonl"] = str(d / "nocols.jsonl")
    f["missing"] = str(d / "does-not-exist.jsonl")
    (d / "a_folder").mkdir()
    f["folder"] = str(d / "a_folder")

    (d / "garbage.npz").write_bytes(b"PK\x03\x04 this is not a zip archive at all" * 4)
    f["garbage_npz"] = str(d / "garbage.npz")
    np.savez(d / "misshapen.npz", x_train=np.zeros((4, 8), np.uint8), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2, np.int64))
    f["misshapen_npz"] = str(d / "misshapen.npz")
    np.savez(d / "badlabels.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.full(4, 12),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2, np.int64))
    f["bad_labels_npz"] = str(d / "badlabels.npz")

    torch.manual_seed(0)
    judge = save_judge(Judge(8, 8), d / "judge", JudgeConfig(k=4, epochs=1))
    f["judge"] = str(judge)
    for name, damage in (("judge_truncated", "truncate"), ("judge_bad_cfg", "cfg")):
        j = save_judge(Judge(8, 8), d / name, JudgeConfig(k=4, epochs=1))
        if damage == "truncate":
            w = (j / "model.safetensors").read_bytes()
            (j / "model.safetensors").write_bytes(w[:len(w) // 3])
        else:
            (j / "cfg.json").write_text('{"height": 8, "width": ')
        f[name] = str(j)

    sae = TopKSAE(SAEConfig(d_in=32, n_latents=64, k=4)).save(d / "sae")
    f["sae"] = str(sae)
    s2 = TopKSAE(SAEConfig(d_in=32, n_latents=64, k=4)).save(d / "sae_truncated")
    w = (s2 / "sae.safetensors").read_bytes()
    (s2 / "sae.safetensors").write_bytes(w[:100])
    f["sae_truncated"] = str(s2)
    f["sae_wide"] = str(TopKSAE(SAEConfig(d_in=64, n_latents=64, k=4)).save(d / "sae_wide"))
    s3 = TopKSAE(SAEConfig(d_in=32, n_latents=64, k=4)).save(d / "sae_bad_cfg")
    (s3 / "cfg.json").write_bytes(b"\xff\xfe not json")
    f["sae_bad_cfg"] = str(s3)

    rm = d / "rm_broken"
    (rm / "backbone").mkdir(parents=True)
    (rm / "backbone" / "config.json").write_text("{}")
    (rm / "reward.json").write_text('{"base": "testbed"}')
    (rm / "reward_head.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    f["rm_truncated"] = str(rm)
    rm2 = d / "rm_bad_json"
    (rm2 / "backbone").mkdir(parents=True)
    (rm2 / "backbone" / "config.json").write_text("{}")
    (rm2 / "reward.json").write_text("{")
    (rm2 / "reward_head.safetensors").write_bytes(b"")
    f["rm_bad_json"] = str(rm2)

    cache = d / "cache_bad_meta"
    cache.mkdir()
    (cache / "meta.json").write_text('{"shards": ["acts_0.safetensors"], "d": ')
    (cache / "acts_0.safetensors").write_bytes(b"\x00" * 16)
    f["cache_bad_meta"] = str(cache)

    ex = d / "explain_bad"
    ex.mkdir()
    (ex / "explanations.jsonl").write_text('{"unit": 1, "explanation": "x"}\n')
    (ex / "records.json").write_text('{"records": [')
    f["explain_bad_records"] = str(ex)
    ex2 = d / "explain_latin1"
    ex2.mkdir()
    (ex2 / "explanations.jsonl").write_bytes('{"unit": 1, "explanation": "caf\xe9"}\n'.encode("latin-1"))
    (ex2 / "records.json").write_text('{"records": [], "meta": {}}')
    f["explain_non_utf8"] = str(ex2)

    (d / "transcript_latin1.jsonl").write_bytes('{"judge": 1, "answer": 1, "probability": 0.9, "n": "\xe9"}\n'
                                                .encode("latin-1"))
    f["transcript_non_utf8"] = str(d / "transcript_latin1.jsonl")
    (d / "transcript_ok.jsonl").write_text('{"judge": 1, "answer": 1, "probability": 0.9}\n' * 3)
    f["transcript_ok"] = str(d / "transcript_ok.jsonl")
    (d / "transcript_bad.jsonl").write_text('{"judge": 1, "answer": 1, "probability": 1.7}\n')
    f["transcript_bad_prob"] = str(d / "transcript_bad.jsonl")

    (d / "garbage.db").write_bytes(b"this is not an SQLite database, just bytes " * 50)
    f["garbage_db"] = str(d / "garbage.db")
    return f


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_bert) -> str:
    """A real activation cache (tiny random BERT, width 32, 12 short texts) in a store of its own."""
    from superalign.runs import RunStore

    d = tmp_path_factory.mktemp("cache_home")
    corpus = d / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"the food was good and the staff {i} was kind"}) + "\n"
                              for i in range(12)))
    assert main(["interp", "cache", "--home", str(d / "home"), "--model", f"hf:{tiny_bert}", "--texts", str(corpus),
                 "--hook", "layers.1", "--max-length", "16", "--progress", "false"]) == 0
    return RunStore(d / "home").list(kind="interp-cache")[0]["artefacts"]["cache"]


# ----------------------------------------------------------------------------- the cases


def C(id_: str, argv: list[str], expect: str, store: str = "none", subprocess_: bool = False):
    """One bad input: ``argv`` (``{name}`` placeholders are files from the fixture, ``{home}`` the store, ``{cwd}``
    the working folder), a regex the error line must match, and the store it starts from: ``none`` (no store),
    ``empty`` (a fresh store) or ``garbage`` (runs.db is not a database)."""
    return pytest.param(argv, expect, store, subprocess_, id=id_)


H = ["--home", "{home}"]
Q = ["--progress", "false"]

CASES = [
    # weak-to-strong (validation by H2; included so every command is covered)
    C("w2s-run-negative-seed", ["w2s", "run", *H, "--seed", "-1"], r"--seed"),
    C("w2s-run-repeated-seed", ["w2s", "run", *H, "--seed", "0", "0"], r"--seed"),
    C("w2s-run-seed-2**32", ["w2s", "run", *H, "--seed", "4294967296"], r"--seed"),
    C("w2s-run-nan-lr", ["w2s", "run", *H, "--lr", "nan"], r"--lr"),
    C("w2s-run-zero-batch", ["w2s", "run", *H, "--batch-size", "0"], r"--batch-size"),
    C("w2s-run-missing-gpu", ["w2s", "run", *H, "--device", "cuda:99"], r"device"),
    C("w2s-run-zero-bootstrap", ["w2s", "run", *H, "--n-boot", "0"], r"--n-boot"),
    C("w2s-run-unknown-task", ["w2s", "run", *H, "--task", "no-such-task"], r"task"),
    C("w2s-sweep-unknown-weak", ["w2s", "sweep", *H, "--weak", "no-such-model"], r"model"),
    C("w2s-run-split-fracs", ["w2s", "run", *H, "--split-fracs", "0.5", "0.6"], r"split"),
    C("w2s-run-non-utf8-file", ["w2s", "run", *H, "--task", "file:{non_utf8_jsonl}"], r"latin1|UTF-8|utf-8|read"),
    # RLHF
    C("sft-nan-lr", ["rlhf", "sft", *H, *Q, "--lr", "nan"], r"--lr .*finite"),
    C("sft-zero-lr", ["rlhf", "sft", *H, *Q, "--lr", "0"], r"--lr"),
    C("sft-zero-epochs", ["rlhf", "sft", *H, *Q, "--epochs", "0"], r"--epochs"),
    C("sft-negative-seed", ["rlhf", "sft", *H, *Q, "--seed", "-3"], r"--seed"),
    C("sft-huge-seed", ["rlhf", "sft", *H, *Q, "--seed", "4294967296"], r"--seed"),
    C("sft-zero-limit", ["rlhf", "sft", *H, *Q, "--limit", "0"], r"--limit"),
    C("sft-max-len-1", ["rlhf", "sft", *H, *Q, "--max-len", "1"], r"--max-len"),
    C("sft-missing-data", ["rlhf", "sft", *H, *Q, "--data", "{missing}"], r"does-not-exist|not exist|not found"),
    C("sft-non-utf8-data", ["rlhf", "sft", *H, *Q, "--data", "{non_utf8_jsonl}"], r"latin1"),
    C("sft-lr-not-a-number", ["rlhf", "sft", *H, *Q, "--lr", "fast"], r"--lr"),
    C("rm-eval-frac-1.5", ["rlhf", "rm", *H, *Q, "--eval-frac", "1.5"], r"--eval-frac"),
    C("rm-k-1", ["rlhf", "rm", *H, *Q, "--k", "1"], r"--k"),
    C("rm-inf-label-beta", ["rlhf", "rm", *H, *Q, "--label-beta", "inf"], r"--label-beta"),
    C("rm-negative-weight-decay", ["rlhf", "rm", *H, *Q, "--weight-decay", "-1"], r"--weight-decay"),
    C("rm-one-comparison", ["rlhf", "rm", *H, *Q, "--n-prompts", "1"], r"only 1 comparisons"),
    C("sft-policy-missing-folder", ["rlhf", "sft", *H, *Q, "--policy", "{missing}"], r"does not exist"),
    C("sft-policy-offline-hub", ["rlhf", "sft", *H, *Q, "--policy", "hf:nobody/nothing-here"], r"nobody/nothing"),
    C("ppo-judge-as-value", ["rlhf", "ppo", *H, *Q, "--value", "{judge}"], r"judge.*not a language model"),
    C("ppo-sae-as-ref", ["rlhf", "ppo", *H, *Q, "--ref", "{sae}"], r"SAE.*not a language model"),
    C("ppo-non-utf8-prompts", ["rlhf", "ppo", *H, *Q, "--prompts", "{non_utf8_jsonl}"], r"latin1"),
    C("dpo-hh-without-data-dir", ["rlhf", "dpo", *H, *Q, "--data", "anthropic_hh"], r"datasets folder"),
    C("bon-prompts-wrong-column", ["rlhf", "bon", *H, *Q, "--prompts", "{wrong_columns_jsonl}"], r"prompt"),
    C("overopt-zero-updates", ["rlhf", "overopt", *H, *Q, "--updates", "0"], r"--updates"),
    C("rm-broken-jsonl", ["rlhf", "rm", *H, *Q, "--data", "{broken_jsonl}"], r"line 2"),
    C("rm-wrong-columns", ["rlhf", "rm", *H, *Q, "--data", "{wrong_columns_jsonl}"], r"not found|column"),
    C("rm-data-is-folder", ["rlhf", "rm", *H, *Q, "--data", "{folder}"], r"folder"),
    C("ppo-minibatch-over-batch", ["rlhf", "ppo", *H, *Q, "--batch-size", "16", "--minibatch-size", "32"],
      r"--minibatch-size"),
    C("ppo-negative-kl", ["rlhf", "ppo", *H, *Q, "--kl-coef", "-0.1"], r"--kl-coef"),
    C("ppo-zero-temperature", ["rlhf", "ppo", *H, *Q, "--temperature", "0"], r"temperature"),
    C("ppo-gamma-2", ["rlhf", "ppo", *H, *Q, "--gamma", "2"], r"--gamma"),
    C("ppo-judge-as-reward", ["rlhf", "ppo", *H, *Q, "--reward", "{judge}"], r"judge.*not a language model"),
    C("ppo-sae-as-policy", ["rlhf", "ppo", *H, *Q, "--policy", "{sae}"], r"SAE.*not a language model"),
    C("dpo-zero-beta", ["rlhf", "dpo", *H, *Q, "--beta", "0"], r"--beta"),
    C("dpo-label-smoothing-half", ["rlhf", "dpo", *H, *Q, "--label-smoothing", "0.5"], r"--label-smoothing"),
    C("dpo-empty-data", ["rlhf", "dpo", *H, *Q, "--data", "{empty_jsonl}"], r"empty"),
    C("bon-zero-n", ["rlhf", "bon", *H, *Q, "--n", "0"], r"--n "),
    C("bon-nan-temperature", ["rlhf", "bon", *H, *Q, "--temperature", "nan"], r"--temperature"),
    C("bon-truncated-reward-model", ["rlhf", "bon", *H, *Q, "--reward", "{rm_truncated}"],
      r"reward_head.safetensors.*(truncated|corrupt)"),
    C("bon-corrupt-reward-json", ["rlhf", "bon", *H, *Q, "--reward", "{rm_bad_json}"], r"reward.json.*corrupt"),
    C("overopt-n-max-3", ["rlhf", "overopt", *H, *Q, "--n-max", "3"], r"n_max|--n-max"),
    C("overopt-negative-kl-coefs", ["rlhf", "overopt", *H, *Q, "--kl-coefs", "-1"], r"--kl-coefs"),
    C("overopt-repeated-kl-coefs", ["rlhf", "overopt", *H, *Q, "--kl-coefs", "0.01", "0.01"], r"--kl-coefs repeats"),
    C("overopt-zero-ppo-lr", ["rlhf", "overopt", *H, *Q, "--ppo-lr", "0"], r"--ppo-lr"),
    # interpretability
    C("cache-zero-batch", ["interp", "cache", *H, *Q, "--batch-size", "0"], r"--batch-size"),
    C("cache-zero-max-length", ["interp", "cache", *H, *Q, "--max-length", "0"], r"--max-length"),
    C("cache-zero-limit", ["interp", "cache", *H, *Q, "--limit", "0"], r"--limit"),
    C("cache-missing-corpus", ["interp", "cache", *H, *Q, "--texts", "{missing}"], r"does-not-exist"),
    C("cache-non-utf8-corpus", ["interp", "cache", *H, *Q, "--texts", "{non_utf8_jsonl}"], r"latin1"),
    C("cache-model-without-activations", ["interp", "cache", *H, *Q, "--model", "bow"], r"bow"),
    C("cache-unknown-hook", ["interp", "cache", *H, *Q, "--hook", "layers.99"], r"layers.99"),
    C("cache-empty-corpus", ["interp", "cache", *H, *Q, "--texts", "{empty_jsonl}"], r"no rows|empty"),
    C("sae-multi-topk-too-large", ["interp", "sae", *H, *Q, "--cache", "{folder}", "--n-latents", "16", "--k", "8",
                                   "--multi-topk", "4"], r"--multi-topk"),
    C("sae-sae-as-cache", ["interp", "sae", *H, *Q, "--cache", "{sae}"], r"not an activation cache"),
    C("sae-missing-cache", ["interp", "sae", *H, *Q, "--cache", "{missing}"], r"does-not-exist"),
    C("sae-corrupt-cache-meta", ["interp", "sae", *H, *Q, "--cache", "{cache_bad_meta}"], r"meta.json"),
    C("sae-judge-as-cache", ["interp", "sae", *H, *Q, "--cache", "{judge}"], r"cache"),
    C("sae-eval-frac-0", ["interp", "sae", *H, *Q, "--cache", "{folder}", "--eval-frac", "0"], r"--eval-frac"),
    C("sae-k-0", ["interp", "sae", *H, *Q, "--cache", "{folder}", "--k", "0"], r"--k"),
    C("sae-k-above-latents", ["interp", "sae", *H, *Q, "--cache", "{folder}", "--k", "5000"], r"--k"),
    C("sae-negative-lr", ["interp", "sae", *H, *Q, "--cache", "{folder}", "--lr", "-1"], r"--lr"),
    C("sae-inf-l1", ["interp", "sae", *H, *Q, "--cache", "{folder}", "--architecture", "relu", "--l1-coef", "inf"],
      r"--l1-coef"),
    C("explain-zero-units", ["interp", "explain", *H, *Q, "--cache", "{folder}", "--units", "0"], r"units"),
    C("explain-repeated-unit-ids", ["interp", "explain", *H, *Q, "--cache", "{folder}", "--unit-ids", "3", "3"],
      r"--unit-ids"),
    C("explain-negative-seed", ["interp", "explain", *H, *Q, "--cache", "{folder}", "--seed", "-5"], r"--seed"),
    C("explain-unit-id-out-of-range", ["interp", "explain", *H, *Q, "--cache", "{cache}", "--unit-ids", "999"],
      r"--unit-ids 999 is out of range"),
    C("explain-judge-as-sae", ["interp", "explain", *H, *Q, "--cache", "{cache}", "--sae", "{judge}"],
      r"not an SAE checkpoint"),
    C("explain-truncated-sae", ["interp", "explain", *H, *Q, "--cache", "{cache}", "--sae", "{sae_truncated}"],
      r"sae.safetensors.*(truncated|corrupt)"),
    C("explain-corrupt-sae-cfg", ["interp", "explain", *H, *Q, "--cache", "{cache}", "--sae", "{sae_bad_cfg}"],
      r"cfg.json.*UTF-8"),
    C("sae-k-above-cache-latents", ["interp", "sae", *H, *Q, "--cache", "{cache}", "--n-latents", "8", "--k", "16"],
      r"--k"),
    C("explain-unknown-llm", ["interp", "explain", *H, *Q, "--cache", "{cache}", "--explainer", "bogus"],
      r"unknown LLM"),
    C("explain-zero-window", ["interp", "explain", *H, *Q, "--cache", "{folder}", "--window", "0"], r"--window"),
    C("explain-nothing-to-score", ["interp", "explain", *H, *Q, "--cache", "{folder}", "--n-score-top", "0",
                                   "--n-random", "0"], r"nothing to score"),
    C("explain-sae-of-another-width", ["interp", "explain", *H, *Q, "--cache", "{cache}", "--sae", "{sae_wide}"],
      r"width 64"),
    C("explain-missing-cache", ["interp", "explain", *H, *Q, "--cache", "{missing}"], r"does-not-exist"),
    C("score-unknown-scorer", ["interp", "score", *H, *Q, "--explanations", "x", "--scorers", "vibes"], r"scorer"),
    C("score-zero-concurrency", ["interp", "score", *H, *Q, "--explanations", "x", "--llm-concurrency", "0"],
      r"--llm-concurrency"),
    C("score-unknown-run-no-store", ["interp", "score", *H, *Q, "--explanations", "deadbeef",
                                     "--simulator", "token-lookup"], r"explain run"),
    C("score-corrupt-records", ["interp", "score", *H, *Q, "--explanations", "{explain_bad_records}",
                                "--simulator", "token-lookup"], r"records.json"),
    C("score-non-utf8-explanations", ["interp", "score", *H, *Q, "--explanations", "{explain_non_utf8}",
                                      "--simulator", "token-lookup"], r"explanations.jsonl.*UTF-8"),
    # scalable oversight
    C("train-judge-k-0", ["debate", "train-judge", *H, *Q, "--k", "0"], r"k must|--k"),
    C("train-judge-dropout-1", ["debate", "train-judge", *H, *Q, "--dropout", "1"], r"dropout"),
    C("train-judge-missing-gpu", ["debate", "train-judge", *H, *Q, "--device", "cuda:99"], r"--device"),
    C("train-judge-garbage-npz", ["debate", "train-judge", *H, *Q, "--dataset", "mnist", "--data", "{garbage_npz}"],
      r"garbage.npz.*npz"),
    C("train-judge-misshapen-npz", ["debate", "train-judge", *H, *Q, "--dataset", "mnist",
                                    "--data", "{misshapen_npz}"], r"x_train has shape"),
    C("train-judge-bad-labels", ["debate", "train-judge", *H, *Q, "--dataset", "mnist", "--data", "{bad_labels_npz}"],
      r"labels outside"),
    C("train-judge-negative-threads", ["debate", "train-judge", *H, *Q, "--threads", "-1"], r"--threads"),
    C("debate-sae-as-judge", ["debate", "run", *H, *Q, "--judge", "{sae}"], r"SAE"),
    C("debate-truncated-judge", ["debate", "run", *H, *Q, "--judge", "{judge_truncated}"],
      r"model.safetensors.*(truncated|corrupt)"),
    C("debate-corrupt-judge-cfg", ["debate", "run", *H, *Q, "--judge", "{judge_bad_cfg}"], r"cfg.json.*corrupt"),
    C("debate-zero-rollouts", ["debate", "run", *H, *Q, "--judge", "{judge}", "--rollouts", "0"], r"rollouts"),
    C("debate-negative-c-puct", ["debate", "run", *H, *Q, "--judge", "{judge}", "--c-puct", "-1"], r"c_puct|--c-puct"),
    C("debate-missing-gpu", ["debate", "run", *H, *Q, "--judge", "{judge}", "--device", "cuda:99"], r"--device"),
    C("debate-zero-images", ["debate", "run", *H, *Q, "--judge", "{judge}", "--n-images", "0"], r"--n-images"),
    C("debate-zero-workers", ["debate", "run", *H, *Q, "--judge", "{judge}", "--workers", "0"], r"--workers"),
    C("debate-unknown-first", ["debate", "run", *H, *Q, "--judge", "{judge}", "--first", "nobody"], r"--first"),
    C("debate-unknown-prior", ["debate", "run", *H, *Q, "--judge", "{judge}", "--prior", "x"], r"--prior"),
    C("debate-garbage-test-images", ["debate", "run", *H, *Q, "--judge", "{judge}", "--data", "{garbage_npz}"],
      r"npz"),
    C("train-judge-negative-max-train", ["debate", "train-judge", *H, *Q, "--max-train", "-1"], r"--max-train"),
    C("debate-report-zero-bootstrap", ["debate", "report", "{transcript_ok}", "--n-boot", "0"], r"--n-boot"),
    C("debate-report-zero-bins", ["debate", "report", "{transcript_ok}", "--n-bins", "0"], r"--n-bins"),
    C("debate-report-non-utf8", ["debate", "report", "{transcript_non_utf8}"], r"UTF-8"),
    C("debate-report-folder", ["debate", "report", "{folder}"], r"folder"),
    C("debate-report-bad-probability", ["debate", "report", "{transcript_bad_prob}"], r"probability"),
    # run store and report (store errors by H1, CLI mapping by H4)
    C("runs-show-unknown-no-store", ["runs", "show", "nosuchrun", *H], r"nosuchrun"),
    C("runs-show-unknown-empty-store", ["runs", "show", "nosuchrun", *H], r"nosuchrun", store="empty"),
    C("runs-list-garbage-store", ["runs", "list", *H], r"runs.db", store="garbage"),
    C("runs-list-bad-status", ["runs", "list", *H, "--status", "sleeping"], r"status"),
    C("runs-list-home-is-a-file", ["runs", "list", "--home", "{non_utf8_jsonl}"], r"is a file"),
    C("sft-home-is-a-file", ["rlhf", "sft", "--home", "{non_utf8_jsonl}", *Q, "--lr", "-1"], r"--lr"),
    C("report-out-is-folder", ["report", *H, "--out", "{cwd}"], r"folder", store="empty"),
    C("report-garbage-store", ["report", *H, "--out", "{cwd}/r.html"], r"runs.db", store="garbage"),
    # a few through a real process: what a user's terminal shows
    C("proc-debate-truncated-judge", ["debate", "run", *H, *Q, "--judge", "{judge_truncated}"], r"truncated|corrupt",
      subprocess_=True),
    C("proc-runs-list-garbage-store", ["runs", "list", *H], r"runs.db", store="garbage", subprocess_=True),
]


# ----------------------------------------------------------------------------- the harness


@pytest.fixture(scope="module", autouse=True)
def _parser_built_fast():
    """main() builds the whole parser on every call; reading attribute docstrings from source (config.field_docs)
    is most of that. Cached per class here so ~90 in-process calls stay fast; it changes no flag or message."""
    import functools

    from superalign import config

    mp = pytest.MonkeyPatch()
    if hasattr(config, "field_docs"):
        mp.setattr(config, "field_docs", functools.cache(config.field_docs))
    yield
    mp.undo()


def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (and the folders themselves, so an empty new folder counts)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stderr, traceback text or '') of ``main(argv)``; an exception escaping main is what a user
    would see as a traceback."""
    import traceback

    try:
        rc = main(argv)
        tb = ""
    except SystemExit as e:  # argparse
        rc, tb = (e.code if isinstance(e.code, int) else 1), ""
    except BaseException as e:  # noqa: BLE001 — the point is to catch whatever escapes
        rc, tb = 1, "".join(traceback.format_exception_only(type(e), e)).strip()
    return rc, capsys.readouterr().err, tb


def _run_subprocess(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "superalign", *argv], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=120)
    return p.returncode, p.stderr, "Traceback" if "Traceback" in p.stderr else ""


@pytest.mark.parametrize("argv, expect, store, in_subprocess", CASES)
def test_bad_input(argv, expect, store, in_subprocess, files, tmp_path, monkeypatch, capsys, request):
    if any("{cache}" in a for a in argv):
        files = {**files, "cache": request.getfixturevalue("cache")}
    cwd = tmp_path / "work"
    home = cwd / "home"
    cwd.mkdir()
    # the cases are written for a machine without the shared datasets (CI exports SUPERALIGN_DATA): a task that
    # needs them must fail at once, not train
    monkeypatch.delenv("SUPERALIGN_DATA", raising=False)
    if store == "empty":
        from superalign.runs import RunStore

        RunStore(home)
    elif store == "garbage":
        home.mkdir()
        (home / "runs.db").write_bytes(Path(files["garbage_db"]).read_bytes())
    subs = {**files, "home": str(home), "cwd": str(cwd)}
    argv = [a.format(**subs) for a in argv]
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("SUPERALIGN_HOME", raising=False)
    capsys.readouterr()  # whatever fixtures printed
    before = _snapshot(cwd)

    rc, err, tb = _run_subprocess(argv, cwd) if in_subprocess else _run_in_process(argv, capsys)

    after = _snapshot(cwd)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    one_line = rc == 2 and len(lines) == 1 and lines[0].startswith("superalign: error: ")
    wrote = before != after
    TALLY[request.node.callspec.id] = {"one_line": one_line, "traceback": bool(tb or "Traceback" in err),
                                       "wrote": wrote}
    assert not tb and "Traceback" not in err, f"traceback: {tb or err[-400:]}"
    assert one_line, f"exit {rc}, stderr: {err!r}"
    assert re.search(expect, lines[0], re.IGNORECASE), f"{lines[0]!r} does not name the problem ({expect})"
    assert "; " in lines[0], f"{lines[0]!r} gives no fix"
    changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
    assert not wrote, f"the working folder / store changed: {changed[:5]}"


def test_tally():
    """Not a check: the bad-input tally (run with -s to see it), tried / one line / traceback / wrote."""
    if not TALLY:
        pytest.skip("run with the parametrised cases")
    n = len(TALLY)
    print(f"\nbad inputs: tried {n}, one line {sum(t['one_line'] for t in TALLY.values())}, "
          f"traceback {sum(t['traceback'] for t in TALLY.values())}, wrote {sum(t['wrote'] for t in TALLY.values())}")
    for k, t in TALLY.items():
        if not t["one_line"] or t["traceback"] or t["wrote"]:
            print(f"  {k}: {json.dumps(t)}")


# ----------------------------------------------------------------------------- the same errors from the Python API


@pytest.mark.parametrize("make, match", [
    (lambda: __import__("superalign.rlhf.sft", fromlist=["x"]).SFTConfig(lr=float("nan")), r"--lr must be a finite"),
    (lambda: __import__("superalign.rlhf.reward", fromlist=["x"]).RewardTrainConfig(seed=2 ** 32), r"--seed"),
    (lambda: __import__("superalign.rlhf.ppo", fromlist=["x"]).PPOConfig(batch_size=8, minibatch_size=16),
     r"--minibatch-size \(16\) must be ≤ --batch-size \(8\)"),
    (lambda: __import__("superalign.rlhf.ppo", fromlist=["x"]).PPOConfig(lam=1.5), r"--lam"),
    (lambda: __import__("superalign.rlhf.dpo", fromlist=["x"]).DPOConfig(lr=float("inf")), r"--lr"),
    (lambda: __import__("superalign.rlhf.testbed", fromlist=["x"]).TestbedLMConfig(n_embd=30, n_head=4),
     r"multiple of n_head"),
    (lambda: __import__("superalign.interp.train_sae", fromlist=["x"]).SAETrainConfig(lr=-1.0), r"--lr"),
    (lambda: __import__("superalign.interp.sae", fromlist=["x"]).SAEConfig(dead_tokens=0), r"--dead-tokens"),
    (lambda: __import__("superalign.interp.relu_sae", fromlist=["x"]).ReLUSAEConfig(l1_coef=float("inf")),
     r"--l1-coef"),
    (lambda: __import__("superalign.oversight.judge", fromlist=["x"]).JudgeConfig(device="cuda:99"), r"--device"),
    (lambda: __import__("superalign.oversight.debate", fromlist=["x"]).DebateConfig(temperature=0.0),
     r"--temperature"),
])
def test_library_configs_reject_bad_values(make, match):
    from superalign.errors import SuperalignError

    with pytest.raises(SuperalignError, match=match) as e:
        make()
    assert "\n" not in str(e.value) and "; " in str(e.value)


def test_loaders_name_the_damaged_file(files):
    from superalign.errors import SuperalignError
    from superalign.interp.sae import load_sae
    from superalign.oversight.judge import load_images, load_judge
    from superalign.rlhf.reward import check_reward_model_dir

    cases = [(lambda: load_judge(files["judge_truncated"]), r"model.safetensors is truncated or corrupt"),
             (lambda: load_judge(files["judge_bad_cfg"]), r"cfg.json is corrupt \(invalid JSON"),
             (lambda: load_judge(files["sae"]), r"no judge checkpoint .*an SAE checkpoint"),
             (lambda: load_sae(files["judge"]), r"not an SAE checkpoint"),
             (lambda: load_sae(files["sae_truncated"]), r"sae.safetensors is truncated or corrupt"),
             (lambda: load_sae(files["sae_bad_cfg"]), r"cfg.json is not UTF-8"),
             (lambda: load_images("mnist", files["garbage_npz"]), r"not a readable npz archive"),
             (lambda: load_images("mnist", files["bad_labels_npz"]), r"labels outside 0–9"),
             (lambda: check_reward_model_dir(files["rm_truncated"]), r"reward_head.safetensors is truncated"),
             (lambda: check_reward_model_dir(files["rm_bad_json"]), r"reward.json is corrupt")]
    for load, match in cases:
        with pytest.raises(SuperalignError, match=match) as e:
            load()
        assert "\n" not in str(e.value) and "; " in str(e.value)


def test_judges_record_their_kind(files):
    assert json.loads((Path(files["judge"]) / "cfg.json").read_text())["kind"] == "debate-judge"


def test_validate_helpers():
    from superalign.errors import SuperalignError
    from superalign.validate import check_device, check_int, check_seeds, help_field

    check_seeds("seed", [0, 1, 2 ** 32 - 1])
    for bad in ([], [0, 0], [-1], [True]):
        with pytest.raises(SuperalignError, match="--seed"):
            check_seeds("seed", bad)
    check_device("device", "cpu")
    check_device("device", "auto")
    for bad in ("tpu", "cuda:x", "cuda:99", "", "mps:0"):
        with pytest.raises(SuperalignError, match="--device"):
            check_device("device", bad)
    with pytest.raises(SuperalignError, match=r"pass e.g. --k 8"):
        check_int("k", 16, example=32, maximum=8)
    check_int("limit", None, none_ok=True)
    a, b = (help_field([1], "x").default_factory() for _ in range(2))  # a fresh list each time
    assert a == b == [1] and a is not b
