"""The oversight pillar on any device and precision, judge training data-parallel under Accelerate, and the judge's
FLOPs in every run's compute record."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from superalign.cli import main
from superalign.oversight.debate import DebateConfig, run_debates
from superalign.oversight.incremental import IncrementalJudgeOracle
from superalign.oversight.jobs import DebateJob
from superalign.oversight.judge import Judge, JudgeConfig, judge_forward_flops, load_images, save_judge, train_judge
from superalign.oversight.oracle import JudgeOracle
from superalign.runs.store import RunStore

pytestmark = pytest.mark.usefixtures("one_thread")

# a judge of scikit-learn's 8×8 digits, by hand: conv 2→32 @5×5 on 8×8, conv 32→64 @5×5 on 4×4, dense 64·2·2→1024→10
CONV1, CONV2, DENSE = 2 * 32 * 25 * 8 * 8, 32 * 64 * 25 * 4 * 4, 64 * 2 * 2 * 1024 + 1024 * 10
FORWARD_8X8 = 2 * (CONV1 + CONV2 + DENSE)  # FLOPs = 2 per multiply-add
TRAIN_ARGS = ["debate", "train-judge", "--dataset", "digits", "--k", "4", "--lr", "1e-3", "--batch-size", "32",
              "--max-train", "96", "--max-test", "40", "--epochs", "1", "--threads", "1", "--progress", "false"]


@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


def _small_cfg(**kw) -> JudgeConfig:
    return JudgeConfig(**{"k": 4, "dataset": "digits", "epochs": 1, "max_train": 128, "max_test": 32, "batch_size": 32,
                          "lr": 1e-3, "seed": 0, **kw})


def _only_run(home) -> dict:
    runs = RunStore(home, create=False).list()
    assert len(runs) == 1, [r["kind"] for r in runs]
    return runs[0]


# ------------------------------------------------------------------------------------------------ FLOPs, golden
def test_judge_forward_flops_by_hand():
    assert judge_forward_flops(Judge(8, 8)) == FORWARD_8X8 == 2_387_968
    conv1, conv2, dense = 2 * 32 * 25 * 28 * 28, 32 * 64 * 25 * 14 * 14, 64 * 7 * 7 * 1024 + 1024 * 10
    assert judge_forward_flops(Judge(28, 28)) == 2 * (conv1 + conv2 + dense)  # the paper's MNIST judge: 29.0 MFLOPs


def test_oracle_flops_by_hand():
    img = torch.zeros(8, 8)
    img[2, 1:6] = 1.0  # 5 nonzero pixels
    judge = Judge(8, 8).eval()
    full = JudgeOracle(judge, img)
    full.logits([frozenset({17}), frozenset({18, 19})])
    assert full.flops == 2 * FORWARD_8X8
    inc = IncrementalJudgeOracle(judge, img)
    # setup: conv1 of each nonzero pixel alone (5 stamps), then the empty state through conv2 and the head
    head = 2 * DENSE
    assert inc.flops == 5 * 2 * CONV1 + 2 * CONV2 + head
    before = inc.flops
    inc.logits([frozenset({17}), frozenset({18})])  # one pixel from the cached empty state: conv2ᵀ on 3×3 cells
    assert inc.incremental == 2 and inc.flops - before == 2 * (2 * 32 * 64 * 25 * 9 + head)


def test_train_judge_and_debate_record_their_flops(tmp_path, capsys):
    home = tmp_path / "h"
    assert main(TRAIN_ARGS + ["--home", str(home)]) == 0
    out = capsys.readouterr().out
    run = _only_run(home)
    c = run["compute"]
    # forward + backward = 3 forward passes per training example (one epoch of 96), then the 40 test images
    assert c["flops"] == {"train": 3 * FORWARD_8X8 * 96, "eval": FORWARD_8X8 * 40}
    assert c["flops_total"] == 3 * FORWARD_8X8 * 96 + FORWARD_8X8 * 40 and c["tokens"] == 96 + 40
    assert c["dtype"] == "fp32" and c["world_size"] == 1
    judge = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("judge: "))
    assert main(["debate", "run", "--home", str(home), "--judge", judge, "--k", "4", "--n-images", "3",
                 "--progress", "false"]) == 0
    c = RunStore(home, create=False).list(kind="debate")[0]["compute"]
    n_test = len(load_images("digits").test.x)
    # the judge alone on the 3 debated images and on the whole test set; debate and consultancy from the oracles
    assert c["flops"]["eval"] == FORWARD_8X8 * (3 + n_test)
    assert c["flops"]["debate"] > 0 and c["flops"]["consultancy"] > 0
    assert c["flops_total"] == pytest.approx(sum(c["flops"].values()), rel=1e-12)


def test_run_debates_counts_the_same_flops_with_workers(digits):
    j = Judge(8, 8).eval()
    x, y = digits.test.x[:4], digits.test.y[:4]
    cfg = DebateConfig(k=4, debater="mcts", rollouts=8)
    a, b = run_debates(j, x, y, cfg, workers=1), run_debates(j, x, y, cfg, workers=2)
    assert a.judge_flops == b.judge_flops > 0 and a.records == b.records


# ------------------------------------------------------------------------------------------------ devices, dtypes
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: --device cuda is valid here")
def test_absent_cuda_is_a_one_line_error_and_nothing_written(tmp_path, capsys):
    home = tmp_path / "h"
    assert main(TRAIN_ARGS + ["--home", str(home), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("superalign: error:") and "\n" not in err and "cuda" in err
    judge = save_judge(Judge(8, 8), tmp_path / "judge", _small_cfg())
    for extra in (["--device", "cuda"], ["--device", "cuda:1", "--dtype", "bf16"], ["--workers", "2", "--device",
                                                                                     "cuda"]):
        assert main(["debate", "run", "--home", str(home), "--judge", str(judge), "--k", "4", "--n-images", "2",
                     "--progress", "false", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("superalign: error:") and "\n" not in err, extra
    assert not home.exists()


def test_debate_job_device_defaults_and_workers_on_the_cpu(tmp_path):
    job = DebateJob(judge=str(tmp_path), home=str(tmp_path / "h"))
    assert (job.device, job.dtype) == ("auto", "auto")  # JobBase's, no longer a debate-only "cpu"
    w = DebateJob(judge=str(tmp_path), workers=2, dtype="bf16")
    assert w.placement() == ("cpu", "bf16")  # worker processes judge on the CPU, in the asked precision
    assert w.key()["device"] == "cpu"
    with pytest.raises(Exception, match="--workers 2 debates in CPU processes"):
        DebateJob(judge=str(tmp_path), workers=2, device="cuda")


def _loss_gap(fit_a, fit_b) -> float:
    a, b = np.array(fit_a.step_losses), np.array(fit_b.step_losses)
    assert a.shape == b.shape and np.isfinite(a).all() and np.isfinite(b).all()
    return float(np.max(np.abs(a - b) / np.abs(b)))


def test_bf16_judge_training_on_cpu_is_close_to_fp32(digits):
    fp32 = train_judge(_small_cfg(device="cpu", dtype="fp32"), digits)
    bf16 = train_judge(_small_cfg(device="cpu", dtype="bf16"), digits)
    assert len(fp32.step_losses) == 4
    assert _loss_gap(bf16, fp32) < 0.01  # bf16 keeps ~3 significant digits in the forward pass (measured: 2e-4)
    assert next(bf16.judge.parameters()).dtype == torch.float32  # master weights stay fp32


def test_bf16_oracle_logits_close_to_fp32(digits):
    judge = train_judge(_small_cfg(), digits).judge
    img = digits.test.x[0]
    px = torch.nonzero(img.reshape(-1) > 0)[:, 0].tolist()
    states = [frozenset(px[:n]) for n in range(1, 6)]
    ref = JudgeOracle(judge, img).logits(states)
    inc = IncrementalJudgeOracle(judge, img, precision="bf16")
    got = np.concatenate([inc.logits([s]) for s in states])  # each built incrementally from its cached parent
    assert inc.incremental == len(states)
    assert np.abs(got - ref).max() < 0.05 * max(1.0, np.abs(ref).max())


@pytest.mark.cuda
def test_cuda_training_and_debate_match_the_cpu(digits):
    cpu = train_judge(_small_cfg(device="cpu", dtype="fp32"), digits)
    for dtype, tol in (("fp32", 1e-2), ("bf16", 0.03)):  # fp32 convolutions may use TF32 on CUDA
        gpu = train_judge(_small_cfg(device="cuda", dtype=dtype), digits)
        assert _loss_gap(gpu, cpu) < tol, dtype
        assert next(gpu.judge.parameters()).dtype == torch.float32
    judge = cpu.judge
    x, y = digits.test.x[:4], digits.test.y[:4]
    cfg = DebateConfig(k=4, debater="mcts", rollouts=8)
    on_cpu = run_debates(judge, x, y, cfg)
    judge_gpu = Judge(8, 8)
    judge_gpu.load_state_dict(judge.state_dict())
    on_gpu = run_debates(judge_gpu.cuda().eval(), x, y, cfg, precision="fp32")
    assert on_gpu.judge_flops == on_cpu.judge_flops
    img = digits.test.x[0]
    px = torch.nonzero(img.reshape(-1) > 0)[:, 0].tolist()
    states = [frozenset(px[:n]) for n in range(1, 6)]
    ref = JudgeOracle(judge, img).logits(states)
    for precision, tol in (("fp32", 1e-2), ("bf16", 0.05)):
        inc = IncrementalJudgeOracle(judge_gpu, img, precision=precision)
        got = np.concatenate([inc.logits([s]) for s in states])
        assert inc.incremental == len(states)
        assert np.abs(got - ref).max() < tol * max(1.0, np.abs(ref).max()), precision


# ------------------------------------------------------------------------------------------------ data-parallel
def test_two_process_train_judge_equals_one_process(tmp_path, accelerate_two):
    # 149 training images in global batches of 32: the last batch (21 rows) splits 11/10 between the processes
    args = ["debate", "train-judge", "--dataset", "digits", "--k", "4", "--lr", "1e-3", "--batch-size", "32",
            "--max-train", "149", "--max-test", "30", "--epochs", "2", "--threads", "1", "--progress", "false"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(args + ["--home", str(one)]) == 0
    out = accelerate_two(args + ["--home", str(two)], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    r1, r2 = _only_run(one), _only_run(two)  # exactly one stored run in the 2-process home
    l1 = json.loads(Path(r1["artefacts"]["losses"]).read_text())
    l2 = json.loads(Path(r2["artefacts"]["losses"]).read_text())
    assert len(l1["step"]) == 2 * 5
    np.testing.assert_allclose(l2["step"], l1["step"], rtol=1e-5)
    np.testing.assert_allclose(l2["epoch"], l1["epoch"], rtol=1e-5)
    assert r2["compute"]["world_size"] == 2 and r1["compute"]["world_size"] == 1
    # each process counted its own rows; the test set was evaluated once (rank 0): the same total FLOPs
    assert r2["compute"]["flops_total"] == r1["compute"]["flops_total"]
    assert r2["metrics"]["judge_acc"] == pytest.approx(r1["metrics"]["judge_acc"])
    assert (Path(r2["artefacts"]["judge"]) / "model.safetensors").is_file()
