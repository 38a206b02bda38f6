"""Weak-to-strong reward models: pairwise tasks, Bradley–Terry losses, pairwise accuracy and PGR (golden tests
against hand computations), pair-preserving splits, run identity, bad pairs, and end-to-end runs."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from superalign import w2s
from superalign.cli import main
from superalign.data import Task, TaskSpec, load_task, make_splits, register_task
from superalign.data.tasks import pair_rows
from superalign.errors import SuperalignError
from superalign.runs import RunStore
from superalign.train import losses
from superalign.w2s.pairwise import PairRewardModel, PairTable, bow_pair_rm, pair_splits
from superalign.w2s.pgr import bootstrap_pgr, chance_level, pairwise_accuracy, pgr_checked
from superalign.w2s.pipeline import Cell, Experiment, cell_run_id
from superalign.w2s.reward_tasks import build_testbed_pairs

# hand values: log σ(1) = −0.3132617, log σ(−1) = −1.3132617, log σ(2) = −0.1269280, log σ(−2) = −2.1269280
LS = {1: -0.3132617, -1: -1.3132617, 2: -0.1269280, -2: -2.1269280, 0: math.log(0.5)}


def _pair_logits(delta):
    """Pair logits [r_B, r_A] with r_A − r_B = delta (r_B = 0.3 arbitrary: only the difference may matter)."""
    d = torch.tensor(delta, dtype=torch.float32)
    return torch.stack([torch.full_like(d, 0.3), 0.3 + d], -1)


# ------------------------------------------------------------------------------------------------ golden: losses


def test_soft_bradley_terry_loss_by_hand():
    delta, p = [1.0, -2.0, 0.0], [0.8, 0.3, 1.0]
    # −[p log σ(Δ) + (1 − p) log σ(−Δ)] per pair
    rows = [-(0.8 * LS[1] + 0.2 * LS[-1]), -(0.3 * LS[-2] + 0.7 * LS[2]), -LS[0]]
    assert rows == pytest.approx([0.5132617, 0.7269280, 0.6931472], abs=1e-6)
    got = losses.soft_bt_loss(torch.tensor(delta), torch.tensor(p))
    assert float(got) == pytest.approx(sum(rows) / 3, abs=1e-6)  # 0.6444456
    assert float(losses.soft_bt_loss(torch.tensor(delta), torch.tensor(p), reduction="sum")) == pytest.approx(sum(rows),
                                                                                                          abs=1e-5)
    logits = _pair_logits(delta)
    assert float(losses.pair_xent_loss(logits, torch.tensor(p))) == pytest.approx(sum(rows) / 3, abs=1e-6)
    # the same number as cross-entropy on the 2-way distribution (σ(Δ), σ(−Δ)): Bradley–Terry is that CE
    assert float(losses.xent_loss(logits, torch.tensor(p))) == pytest.approx(sum(rows) / 3, abs=1e-6)
    # hard targets: the usual reward-model loss −log σ(r_chosen − r_rejected)
    assert float(losses.soft_bt_loss(torch.tensor([2.0]), torch.tensor([1.0]))) == pytest.approx(-LS[2], abs=1e-6)


def test_pairwise_aux_conf_loss_by_hand():
    delta, weak = [1.0, -2.0, 0.0], [0.8, 0.3, 0.6]
    # step 0.1 of training, warm-up 0.2 → α = 0.75 · 0.1/0.2 = 0.375; hardened = [1, 0, ½ (tie)]
    assert losses.pair_hardened(torch.tensor(delta)).tolist() == [1.0, 0.0, 0.5]
    target = [0.625 * 0.8 + 0.375 * 1, 0.625 * 0.3 + 0.375 * 0, 0.625 * 0.6 + 0.375 * 0.5]
    assert target == pytest.approx([0.875, 0.1875, 0.5625])
    rows = [-(0.875 * LS[1] + 0.125 * LS[-1]), -(0.1875 * LS[-2] + 0.8125 * LS[2]), -LS[0]]
    logits = _pair_logits(delta).requires_grad_(True)
    loss = losses.pair_aux_conf_loss(logits, torch.tensor(weak), step_frac=0.1, alpha=0.75, warmup_frac=0.2)
    assert float(loss.detach()) == pytest.approx(sum(rows) / 3, abs=1e-6)  # 0.5444456
    # the hardened target is a constant: the gradient is that of BT against the fixed mixed target
    loss.backward()
    d = torch.tensor(delta)
    expect = -(torch.tensor(target) - torch.sigmoid(d)) / 3  # ∂BT/∂Δ = σ(Δ) − target, per pair, over the mean
    assert torch.allclose(logits.grad[:, 1], expect, atol=1e-6) and torch.allclose(logits.grad[:, 0], -expect,
                                                                                     atol=1e-6)
    # after warm-up α = 0.75; α = 0 at the start (pure soft BT)
    late = losses.pair_aux_conf_loss(_pair_logits(delta), torch.tensor(weak), step_frac=0.9)
    t_late = [0.25 * 0.8 + 0.75, 0.25 * 0.3, 0.25 * 0.6 + 0.75 * 0.5]
    assert float(late) == pytest.approx(float(losses.soft_bt_loss(torch.tensor(delta), torch.tensor(t_late))), abs=1e-6)
    assert float(losses.pair_aux_conf_loss(_pair_logits(delta), torch.tensor(weak), 0.0)) == pytest.approx(
        float(losses.soft_bt_loss(torch.tensor(delta), torch.tensor(weak))), abs=1e-6)


@pytest.mark.parametrize("name", ["xent", "aux_conf", "product"])
def test_pair_losses_do_not_depend_on_orientation(name):
    """Swapping A and B (Δ → −Δ, p → 1 − p) leaves every pairwise loss unchanged: a pair's orientation is arbitrary."""
    rng = np.random.default_rng(0)
    delta = torch.tensor(rng.normal(0, 2, 64), dtype=torch.float32)
    p = torch.tensor(rng.random(64), dtype=torch.float32)
    fn = losses.get_pair_loss(name, **({} if name == "xent" else {"warmup_frac": 0.2}))
    a = fn(_pair_logits(delta.tolist()), p, 0.5)
    b = fn(_pair_logits((-delta).tolist()), 1 - p, 0.5)
    assert float(a) == pytest.approx(float(b), abs=1e-6)
    if name == "product":
        assert fn(_pair_logits(delta.tolist()), p, 0.5) == losses.product_loss(_pair_logits(delta.tolist()), p, 0.5,
                                                                        warmup_frac=0.2)
    with pytest.raises(SuperalignError, match="unknown loss"):
        losses.get_pair_loss("nope")


# ------------------------------------------------------------------------------------------------ golden: models


def test_weak_soft_label_is_sigmoid_of_reward_difference():
    head = nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]]))  # r(x) = z₁ − z₀ = x·(1, −2, 0.5) + 0.1
        head.bias.copy_(torch.tensor([0.0, 0.1]))
    scorer = head
    scorer.flops_per_example = lambda train: 12.0
    rm = PairRewardModel(scorer)
    a, b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 0.0])  # r_A = 2.1, r_B = −1.9
    pairs = torch.stack([torch.stack([a, b]), torch.stack([b, a])])  # [2 pairs, 2, 3]
    p = torch.softmax(rm(pairs), -1)[:, 1]
    assert p.tolist() == pytest.approx([1 / (1 + math.exp(-4.0)), 1 / (1 + math.exp(4.0))], abs=1e-6)
    assert rm.reward(torch.stack([a, b])).tolist() == pytest.approx([2.1, -1.9], abs=1e-6)
    assert rm.flops_per_example(True) == 24.0  # two texts per pair


def _toy_pairs(n=200, seed=0):
    """Pairs of 'x is good/bad ...' texts: the preferred text has the positive word (the two differ in it only)."""
    rng = np.random.default_rng(seed)
    pos, neg = ["good", "great", "nice", "lovely"], ["bad", "awful", "poor", "dull"]
    nouns = ["film", "food", "room", "book", "show", "staff"]
    texts, labels, groups = [], [], []
    for k in range(n):
        noun = nouns[rng.integers(len(nouns))]
        texts += [f"the {noun} was {pos[rng.integers(4)]}", f"the {noun} was {neg[rng.integers(4)]}"]
        labels += [1, 0]
        groups += [k, k]
    return Task("toy-pairs", texts, np.array(labels), groups=np.array(groups), meta={"pairwise": True})


def test_bow_weak_reward_model_is_bradley_terry_and_antisymmetric():
    task = _toy_pairs()
    table = PairTable(task)
    train, test = np.arange(100), np.arange(100, 200)
    preds, flops = bow_pair_rm(task.texts, table, train, {"test": test}, seed=0)
    assert pairwise_accuracy(table.y[test], preds["test"]) == 1.0 and flops > 0
    # the same pairs in the other orientation get exactly 1 − P: a linear reward without an intercept
    flipped = PairTable(task)
    flipped.ab, flipped.y = table.ab[:, ::-1].copy(), 1 - table.y
    back, _ = bow_pair_rm(task.texts, flipped, train, {"test": test}, seed=0)
    np.testing.assert_allclose(back["test"], 1 - preds["test"], atol=1e-9)


# ------------------------------------------------------------------------------------------------ golden: metrics


def test_pairwise_accuracy_by_hand():
    y = np.array([1, 0, 1, 0])  # A preferred, B preferred, …
    p = np.array([0.9, 0.2, 0.5, 0.7])  # right, right, tie (½), wrong
    assert pairwise_accuracy(y, p) == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert math.isnan(pairwise_accuracy(np.array([]), np.array([])))
    # chance is ½ whatever the orientation mix (a reward model cannot prefer a position); binomial margin at ½
    c, margin = chance_level(np.array([1] * 150 + [0] * 50), "pair_acc")
    assert c == 0.5 and margin == pytest.approx(1.645 * math.sqrt(0.25 / 200))


def test_pgr_on_pairwise_numbers_by_hand():
    y = np.array([1, 0] * 100)  # 200 pairs
    value, note = pgr_checked(y, 0.70, 0.76, 0.90, "pair_acc")
    assert value == pytest.approx((0.76 - 0.70) / (0.90 - 0.70)) and note == ""  # 0.3
    # weak 0.55 on 200 pairs is within 0.5 + 1.645·sqrt(0.25/200) = 0.558 of chance: PGR undefined, with the reason
    value, note = pgr_checked(y, 0.55, 0.7, 0.9, "pair_acc")
    assert math.isnan(value) and "weak pair_acc 0.550 not above chance 0.500" in note
    value, note = pgr_checked(y, 0.70, 0.72, 0.71, "pair_acc", min_gap=0.02)
    assert math.isnan(value) and "gap" in note
    # bootstrap: point estimate from the seed-mean pairwise accuracies; resamples are of pairs
    rng = np.random.default_rng(0)
    seeds = []
    for _ in range(2):
        yy = rng.integers(0, 2, 400)
        right = np.where(yy == 1, 0.8, 0.2)  # P(A ≻ B) on the right side of ½
        preds = {k: np.where(rng.random(400) < acc, right, 1 - right)
                 for k, acc in (("p_weak", 0.7), ("p_student", 0.78), ("p_ceiling", 0.9))}
        seeds.append({"y": yy, **preds})
    accs = np.array([[pairwise_accuracy(s["y"], s[k]) for k in ("p_weak", "p_student", "p_ceiling")] for s in seeds])
    w, st, c = accs.mean(0)
    est = bootstrap_pgr(seeds, "pair_acc", n_boot=300)
    assert est.value == pytest.approx((st - w) / (c - w)) and est.note == ""
    assert est.ci_low < est.value < est.ci_high and est.metric == "pair_acc"


# ------------------------------------------------------------------------------------------------ splits and tasks


def test_testbed_pairs_task_and_splits_keep_pairs_together():
    task = build_testbed_pairs(n_pairs=300)
    assert task.pairwise and len(task) == 600
    cr = pair_rows(task)
    assert (task.labels[cr[:, 0]] == 1).all() and (task.labels[cr[:, 1]] == 0).all()
    from superalign.rlhf.testbed import GoldReward
    gold = GoldReward()
    prompt = " ".join(task.texts[0].split()[:3])
    gap = gold(prompt, task.texts[0][len(prompt) + 1:]) - gold(prompt, task.texts[1][len(prompt) + 1:])
    assert gap >= 0.05  # the preferred text has the higher exact gold reward, by at least the margin
    table = PairTable(task)
    assert 0.4 < table.y.mean() < 0.6  # orientation is a coin, not the label
    assert (task.labels[table.ab[table.y == 1, 0]] == 1).all() and (task.labels[table.ab[table.y == 0, 1]] == 1).all()
    for seed, cap in ((0, None), (1, 400), (5, 251)):
        rows = make_splits(task.labels, seed, max_examples=cap, groups=task.groups)
        ps = pair_splits(rows, table)
        where = {}
        for name, idx in rows.as_dict().items():
            for i in idx:
                where[int(i)] = name
        for a, b in table.ab[np.concatenate(list(ps.as_dict().values()))]:
            assert where[int(a)] == where[int(b)]  # never separated
        assert sum(len(v) for v in ps.as_dict().values()) * 2 == sum(len(v) for v in rows.as_dict().values())
        assert rows.n_dropped_balance == 0  # one preferred + one rejected row per pair: balanced already


def test_malformed_pairs_are_one_line_errors():
    texts = ["a b", "c d", "e f", "g h", "i j"]
    with pytest.raises(SuperalignError) as e:
        Task("bad", texts, np.array([1, 0, 1, 0, 0]), groups=np.array([0, 0, 1, 1, 1]), meta={"pairwise": True})
    assert "preference pair (group 1, rows [2, 3, 4]) has 3 row(s)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SuperalignError, match=r"group 1, rows \[2, 3\]\) has 2 row\(s\) labelled \[1, 1\]"):
        Task("bad", texts[:4], np.array([1, 0, 1, 1]), groups=np.array([0, 0, 1, 1]), meta={"pairwise": True})
    with pytest.raises(SuperalignError, match="no groups"):
        Task("bad", texts[:4], np.array([1, 0, 1, 0]), meta={"pairwise": True})


def test_run_identity_includes_pairing(tmp_path):
    task = build_testbed_pairs(n_pairs=100)

    @register_task("test-tb-rows", "testbed-pairs rows as a classification task (test only)")
    def _rows(spec: TaskSpec) -> Task:
        return Task("test-tb-rows", task.texts, task.labels, groups=task.groups)

    @register_task("test-tb-pairs", "the same rows as pairs (test only)")
    def _pairs(spec: TaskSpec) -> Task:
        return Task("test-tb-pairs", task.texts, task.labels, groups=task.groups, meta={"pairwise": True})

    @register_task("test-tb-repaired", "the same rows paired differently (test only)")
    def _repaired(spec: TaskSpec) -> Task:
        g = task.groups.copy()
        g[[1, 3]] = g[[3, 1]]  # swap the rejected rows of pairs 0 and 1
        return Task("test-tb-repaired", task.texts, task.labels, groups=g, meta={"pairwise": True})

    fps = {n: load_task(n).fingerprint() for n in ("test-tb-rows", "test-tb-pairs", "test-tb-repaired")}
    assert len(set(fps.values())) == 3
    cell = Cell("bow", "minilm-l1", "xent", 0)
    ids = {n: cell_run_id(w2s.W2SConfig(task=n, home=str(tmp_path)), cell) for n in fps}
    assert len(set(ids.values())) == 3


# ------------------------------------------------------------------------------------------------ end to end


def test_cli_run_on_testbed_pairs(tmp_path, tiny_bert, capsys):
    home = tmp_path / "h"
    args = ["w2s", "run", "--task", "testbed-pairs", "--weak", "bow", "--strong", f"hf:{tiny_bert}", "--loss", "xent",
            "aux_conf", "--seed", "0", "--max-examples", "240", "--epochs", "3", "--n-boot", "50", "--progress",
            "false", "--home", str(home)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "PGR pair acc [95% CI]" in out and "pairs wt/wl/val/test" in out and "AUROC" not in out.split("\n")[0]
    assert "weak-wrong test pairs" in out
    store = RunStore(home)
    runs = [r for r in store.list() if r["kind"] == "w2s"]
    assert len(runs) == 2
    m = runs[0]["metrics"]
    assert m["metric"] == "pairwise_acc" and "weak_auroc" not in m
    assert 0 <= m["weak_acc"] <= 1 and 0 <= m["ceiling_acc"] <= 1
    assert m["n_weak_train"] + m["n_weak_label"] + m["n_val"] + m["n_test"] == 120  # pairs: 240 rows
    from superalign.w2s.pipeline import load_preds
    preds = load_preds(runs[0]["artefacts"]["preds"])
    assert len(preds["y"]) == m["n_test"] == len(preds["p_student"])
    # the report shows the runs as pairwise accuracy
    from superalign.w2s.report import w2s_section
    html = w2s_section(store.list())
    assert "testbed-pairs (pairwise accuracy)" in html
    # the same command again reuses both runs
    assert main(args) == 0
    assert len([r for r in RunStore(home).list() if r["kind"] == "w2s"]) == 2


def test_finetuned_reward_model_on_pairs(tmp_path, tiny_bert):
    res = w2s.run(task="testbed-pairs", weak="bow", strong=f"hf:{tiny_bert}", mode="last-n", loss=["aux_conf"],
                  seed=[1], max_examples=160, ft_epochs=1, n_boot=20, progress=False, home=str(tmp_path))
    m = res.records[0]["metrics"]
    assert m["metric"] == "pairwise_acc" and 0 <= m["student_acc"] <= 1
    assert res.records[0]["compute"]["flops"]["student"] > 0
    with pytest.raises(SuperalignError, match="no human weak labels"):
        w2s.run(task="testbed-pairs", weak="human", strong=f"hf:{tiny_bert}", loss=["xent"], seed=[0],
                max_examples=160, progress=False, home=str(tmp_path / "h2"))


def test_shared_hh_and_tldr_pairs(shared_data, tmp_path, tiny_bert):
    if not (shared_data / "anthropic_hh").exists() or not (shared_data / "summarize_from_feedback").exists():
        pytest.skip("shared anthropic_hh / summarize_from_feedback data not found")
    data = str(shared_data)
    hh, hh_rows, tldr = (load_task(TaskSpec(n, data)) for n in ("anthropic_hh-pairs", "anthropic_hh", "tldr-pairs"))
    assert hh.pairwise and not hh_rows.pairwise and hh.fingerprint() != hh_rows.fingerprint()
    assert len(hh) == 2 * len(pair_rows(hh)) and len(hh) <= len(hh_rows)
    assert len(pair_rows(tldr)) == 1771 and tldr.pairwise
    src = json.loads((shared_data / "summarize_from_feedback" / "comparisons_tldr.jsonl").open().readline())
    chosen = tldr.texts[pair_rows(tldr)[0, 0]]
    assert chosen.startswith(src["summary_b" if src["choice"] else "summary_a"].strip())
    # classification and pairwise runs on the same rows have distinct ids
    cell = Cell("bow", f"hf:{tiny_bert}", "xent", 0)
    ids = {t: cell_run_id(w2s.W2SConfig(task=t, data=data, home=str(tmp_path)), cell)
           for t in ("anthropic_hh", "anthropic_hh-pairs")}
    assert ids["anthropic_hh"] != ids["anthropic_hh-pairs"]
    res = w2s.run(task="tldr-pairs", data=data, weak="bow", strong=f"hf:{tiny_bert}", loss=["xent"], seed=[0],
                  max_examples=200, epochs=2, n_boot=20, max_length=64, progress=False, home=str(tmp_path))
    assert res.rows[0]["metric"] == "pairwise_acc"
    exp = Experiment(res.cfg)
    assert exp.pairs is not None and len(exp.splits(0).test) * 2 == len(exp._rows(exp.splits(0).test))


def test_file_table_as_preference_pairs(tmp_path):
    p = tmp_path / "prefs.jsonl"
    p.write_text("\n".join(json.dumps({"chosen": f"a kind reply number {i}", "rejected": f"a rude reply number {i}"})
                           for i in range(30)))
    rows = load_task(TaskSpec(f"file:{p}", convert="preferences"))
    pairs = load_task(TaskSpec(f"file:{p}", convert="preference-pairs"))
    assert pairs.pairwise and not rows.pairwise and len(pair_rows(pairs)) == 30
    assert pairs.texts == rows.texts and pairs.fingerprint() != rows.fingerprint()
    cell = Cell("bow", "minilm-l1", "xent", 0)
    ids = {c: cell_run_id(w2s.W2SConfig(task=f"file:{p}", convert=c, home=str(tmp_path)), cell)
           for c in ("preferences", "preference-pairs")}
    assert ids["preferences"] != ids["preference-pairs"]


def test_benchmark_quick(tmp_path, tiny_bert, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "w2s_reward.py"
    spec = importlib.util.spec_from_file_location("bench_w2s_reward", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--strong", f"hf:{tiny_bert}", "--max-examples", "200", "--n-boot", "20", "--home",
                       str(tmp_path / "h"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| testbed-pairs | bow → hf:" in table and "PGR [95% CI]" in table and "0.10–0.20" in table
    res = json.loads(out.read_text())
    assert len(res["rows"]) == 2 and {r["loss"] for r in res["rows"]} == {"xent", "aux_conf"}
    assert all(r["metric"] == "pairwise_acc" for r in res["rows"])


def test_two_processes_train_the_reward_model_as_one_does(tmp_path, tiny_bert, accelerate_two):
    """`accelerate launch` (2 CPU processes) vs one process: the pairwise aux_conf student's loss history agrees (the
    pairwise loss needs no batch statistics, so each shard's loss is exactly its part of the one-process loss)."""
    kw = dict(task="testbed-pairs", weak="bow", strong=f"hf:{tiny_bert}", loss=["aux_conf"], seed=[0],
              max_examples=120, epochs=2, batch_size=7, n_boot=10, progress=False)
    one = w2s.run(home=str(tmp_path / "one"), **kw).records[0]
    args = ["w2s", "run", "--task", "testbed-pairs", "--weak", "bow", "--strong", f"hf:{tiny_bert}", "--loss",
            "aux_conf", "--seed", "0", "--max-examples", "120", "--epochs", "2", "--batch-size", "7", "--n-boot", "10",
            "--progress", "false", "--home", str(tmp_path / "two")]
    p = accelerate_two(args, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:]
    store = RunStore(tmp_path / "two", create=False)
    runs = [r for r in store.list() if r["kind"] == "w2s"]
    assert len(runs) == 1 and runs[0]["id"] == one["id"] and runs[0]["compute"]["world_size"] == 2
    h1, h2 = one["artefacts"]["history"], store.get(runs[0]["id"])["artefacts"]["history"]
    np.testing.assert_allclose([h["loss"] for h in h2], [h["loss"] for h in h1], rtol=1e-5)
    assert runs[0]["metrics"]["student_acc"] == pytest.approx(one["metrics"]["student_acc"])
