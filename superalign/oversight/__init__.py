"""Scalable oversight: debate on sparse-pixel judges (Irving, Christiano & Amodei 2018, MNIST), with a consultancy
baseline and judge accuracy/calibration metrics for any transcript file."""

from .consultancy import run_consultancy
from .debate import (
    DebateConfig,
    Game,
    GreedyDebater,
    JudgeOracle,
    MCTSDebater,
    debate_image,
    make_oracle,
    play,
    run_debates,
)
from .incremental import IncrementalJudgeOracle
from .judge import (
    Judge,
    JudgeConfig,
    encode,
    judge_forward_flops,
    judge_logits,
    load_images,
    load_judge,
    random_reveals,
    save_judge,
    train_judge,
)
from .metrics import accuracy_ci, ece, reliability, transcript_metrics

__all__ = ["DebateConfig", "Game", "GreedyDebater", "IncrementalJudgeOracle", "Judge", "JudgeConfig", "JudgeOracle",
           "MCTSDebater", "accuracy_ci", "debate_image", "make_oracle", "ece", "encode", "judge_forward_flops",
           "judge_logits", "load_images",
           "load_judge", "play",
           "random_reveals", "reliability", "run_consultancy", "run_debates", "save_judge", "train_judge",
           "transcript_metrics"]
