"""`superalign debate train-judge|run|report`: jobs recorded in the run store (keyed by config), and the report of
any transcript file."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SuperalignError
from ..runs.files import write_json_atomic
from ..runs.jobs import PRECISION_CHOICES, JobBase, _f, run_job, write_text_atomic
from ..validate import check_choice, check_int
from .debate import DebateConfig, check_images, run_debates
from .judge import Images, JudgeConfig, judge_accuracy, load_images, load_judge, save_judge, train_judge


@dataclass
class TrainJudgeJob(JudgeConfig, JobBase):
    """Train the sparse-pixel judge (Irving et al. 2018): k random nonzero pixels per image, the paper's convnet.
    Data-parallel under `accelerate launch -m superalign debate train-judge …` (the same global batches)."""

    threads: int = _f(0, "torch CPU threads (0: torch's default; 1 is fastest on a busy machine)")

    def __post_init__(self):
        super().__post_init__()
        check_int("threads", self.threads, minimum=0, example=1)


@dataclass
class DebateJob(DebateConfig, JobBase):
    """Debate (precommit by default) on test images with a trained judge; also the judge alone (k random nonzero
    pixels) and the consultancy baseline on the same images. Writes JSONL transcripts."""

    judge: str = _f("", "judge folder (the `judge` artefact printed by superalign debate train-judge)")
    data: str = _f("", "mnist.npz for the test images (else the judge's training file or $SUPERALIGN_DATA)")
    n_images: int = _f(100, "debate the first n test images")
    consultancy: bool = _f(True, "also run the consultancy baseline on the same images")
    workers: int = _f(1, "CPU processes, one image at a time each (results do not depend on it); above 1 the judge "
                         "runs in these CPU processes, so --device auto means the CPU and --device cuda is refused")
    threads: int = _f(1, "torch CPU threads in this process (small judge batches: 1 is usually fastest)")

    def key(self) -> dict:
        d = super().key()
        for k in ("workers", "threads"):  # how fast, not what: same results
            d.pop(k, None)
        return d

    def __post_init__(self):
        super().__post_init__()
        if not self.judge:
            raise SuperalignError("no judge given", "pass --judge DIR (from superalign debate train-judge)")
        check_int("n_images", self.n_images, example=100)
        check_int("workers", self.workers, example=1)
        check_int("threads", self.threads, minimum=0, example=1)
        if self.workers > 1 and self.device not in ("auto", "cpu"):
            # forked worker processes cannot share a CUDA context; one process batches the judge calls on the GPU
            raise SuperalignError(f"--workers {self.workers} debates in CPU processes, not on --device {self.device}",
                                  "pass --workers 1 to run the judge on the GPU, or --device cpu")

    def placement(self) -> tuple[str, str]:
        """As every job's, except that worker processes (--workers > 1) put the judge on the CPU, so the run is
        recorded (and keyed) as a CPU run."""
        if self.workers <= 1:
            return super().placement()
        from ..models.placement import resolve_precision

        check_choice("dtype", self.dtype, PRECISION_CHOICES)
        return "cpu", resolve_precision(self.dtype, "cpu")


def _threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def run_train_judge(job: TrainJudgeJob) -> dict:
    _threads(job.threads)
    split = load_images(job.dataset, job.data)  # fails before anything is written

    def body(store, out):
        from ..train.distributed import Runtime

        rt = Runtime.create(job.device, job.dtype)  # data-parallel under `accelerate launch`
        fit = train_judge(job, split, progress=job.progress, rt=rt)
        cfg = JudgeConfig(**{k: getattr(job, k) for k in JudgeConfig.__dataclass_fields__})
        if rt.is_main:  # the other ranks' `out` is a scratch folder: nothing to save there
            save_judge(fit.judge, out / "judge", cfg, meta={"dataset": fit.dataset})
            write_json_atomic(out / "losses.json", {"epoch": fit.losses, "step": fit.step_losses})
        return ({"judge_acc": fit.test_acc, "k": job.k, "dataset": fit.dataset, "n_train": fit.n_train,
                 "n_test": fit.n_test, "final_loss": fit.losses[-1], "wall_s": fit.wall_s},
                {"judge": str(out / "judge"), "losses": str(out / "losses.json")})
    return run_job("debate-judge", job, body)


def _test_images(job: DebateJob, info: dict) -> Images:
    train = info.get("train") or {}
    dataset = info.get("dataset", train.get("dataset", "auto"))
    split = load_images(dataset, job.data or (train.get("data", "") if dataset == "mnist" else ""))
    if split.test.x.shape[1:] != (info["height"], info["width"]):
        raise SuperalignError(f"test images are {tuple(split.test.x.shape[1:])}, the judge takes "
                              f"{(info['height'], info['width'])}", "pass --data matching the judge's training data")
    return split.test


def run_debate(job: DebateJob) -> dict:
    from .consultancy import run_consultancy
    from .metrics import accuracy_ci, ece

    _threads(job.threads)
    device, precision = job.placement()  # an absent device is a one-line error before anything is written
    judge, info = load_judge(job.judge)
    judge.to(device)  # fp32 weights; the judge's forward passes run in `precision` (autocast)
    test = _test_images(job, info)
    x, y = test.x[:job.n_images], test.y[:job.n_images]
    check_images(x, job.k)  # before the run store is touched

    def body(store, out):
        cfg = DebateConfig(**{k: getattr(job, k) for k in DebateConfig.__dataclass_fields__})
        progress = (lambda i, n: print(f"\rdebate {i}/{n}", end="", flush=True)) if job.progress else None
        r = run_debates(judge, x, y, cfg, workers=job.workers, progress=progress, precision=precision)
        if job.progress:
            print()
        write_text_atomic(out / "debate.jsonl", "".join(json.dumps(rec) + "\n" for rec in r.records))
        correct = [rec["honest_wins"] for rec in r.records]
        acc = accuracy_ci(correct, seed=job.seed)
        m = {"debate_acc": acc.value, "debate_acc_lo": acc.lo, "debate_acc_hi": acc.hi,
             "debate_ece": ece([rec["probability"] for rec in r.records], [rec["judge"] == rec["answer"]
                                                                            for rec in r.records]),
             "judge_alone_acc": judge_accuracy(judge, Images(x, y), job.k, seed=job.seed, precision=precision),
             "judge_alone_acc_all_test": judge_accuracy(judge, test, job.k, seed=job.seed, precision=precision),
             "n_images": len(x), "games_per_image": sum(rec["games"] for rec in r.records) / len(x),
             "judge_evaluations": r.judge_evaluations, "debate_wall_s": r.wall_s}
        arts = {"transcript": str(out / "debate.jsonl")}
        if job.consultancy:
            c = run_consultancy(judge, x, y, job.k, seed=job.seed, precision=precision)
            write_text_atomic(out / "consultancy.jsonl", "".join(json.dumps(rec) + "\n" for rec in c.records))
            m |= {"consultancy_acc": c.accuracy, "consultancy_acc_honest": c.accuracy_honest,
                  "consultancy_acc_dishonest": c.accuracy_dishonest}
            arts["consultancy_transcript"] = str(out / "consultancy.jsonl")
        return m, arts
    return run_job("debate", job, body)


def report_command(ns: argparse.Namespace) -> int:
    """`superalign debate report FILE…`: accuracy and calibration of each transcript file."""
    from .metrics import transcript_metrics

    for path in ns.transcripts:
        print(f"{path}:")
        print(transcript_metrics(Path(path), n_bins=ns.n_bins, n_boot=ns.n_boot, seed=ns.seed).table())
    return 0


def add_report_arguments(rp: argparse.ArgumentParser) -> None:
    """The arguments of `superalign debate report` (declared in :mod:`superalign.oversight.pillar`)."""
    rp.add_argument("transcripts", nargs="+", help="JSONL transcript files")
    rp.add_argument("--n-bins", type=int, default=10, help="confidence bins (default: 10)")
    rp.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    rp.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
