"""The scalable-oversight pillar's declaration: `superalign debate train-judge|run|report`, its run kinds and report
section."""

from __future__ import annotations

from ..pillars import Command, Job, Pillar, RunKind, register_pillar

PILLAR = register_pillar(Pillar(
    name="debate",
    title="Scalable oversight: debate",
    help="scalable oversight: debate on sparse-pixel MNIST judges (Irving et al. 2018)",
    jobs=(
        Job("train-judge", "superalign.oversight.jobs:TrainJudgeJob", "superalign.oversight.jobs:run_train_judge",
            help="train the sparse-pixel judge (k random nonzero pixels per image)"),
        Job("run", "superalign.oversight.jobs:DebateJob", "superalign.oversight.jobs:run_debate",
            help="debate test images with a trained judge; also the judge alone and consultancy"),
    ),
    commands=(
        Command("report", "superalign.oversight.jobs:add_report_arguments", "superalign.oversight.jobs:report_command",
                help="judge accuracy (bootstrap 95% CI) and calibration (ECE, reliability bins) of JSONL transcripts",
                description="judge accuracy (bootstrap 95% CI) and calibration (ECE, reliability bins) of JSONL "
                            "transcripts (lines with judge, answer, probability)"),
    ),
    kinds=(
        RunKind("debate-judge", ("k", "dataset", "epochs", "lr", "seed"), ("judge_acc", "n_train", "wall_s")),
        RunKind("debate", ("judge", "k", "debater", "rollouts", "precommit", "first", "n_images"),
                ("judge_alone_acc", "debate_acc", "consultancy_acc", "debate_ece", "debate_wall_s")),
    ),
    section="superalign.oversight.report:oversight_section",
))
