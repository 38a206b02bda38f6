"""The weak-to-strong experiment config: one dataclass, the CLI is generated from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..data.tasks import CONVERSIONS
from ..errors import SuperalignError
from ..models.placement import PRECISIONS, resolve_precision
from ..train.losses import LOSSES
from ..train.students import MODES
from ..validate import check_choice, check_device, check_int, check_nonnegative, check_positive, check_range

CONVERSION_NAMES = tuple(CONVERSIONS)


@dataclass
class W2SConfig:
    """A grid of weak-to-strong runs: every (weak, strong, loss, seed) combination on one task."""

    task: str = field(default="textblob-polarity",
                      metadata={"help": "task name (see `superalign tasks`), hf:<dataset>, or file:<path>; a pairwise "
                                        "task (testbed-pairs, anthropic_hh-pairs, tldr-pairs, --convert "
                                        "preference-pairs) trains Bradley–Terry reward models, scored by pairwise "
                                        "accuracy"})
    weak: list[str] = field(default_factory=lambda: ["bow"], metadata={"help": "weak supervisor model(s)"})
    strong: list[str] = field(default_factory=lambda: ["minilm-l6"], metadata={"help": "strong student model(s)"})
    loss: list[str] = field(default_factory=lambda: ["xent", "aux_conf", "product"],
                            metadata={"help": "student loss(es)", "choices": tuple(LOSSES)})
    seed: list[int] = field(default_factory=lambda: [0, 1, 2],
                            metadata={"help": "seed(s) in [0, 2**32), each once; each seed re-splits the data"})
    data: str | None = field(default=None, metadata={"help": "shared datasets folder (else $SUPERALIGN_DATA)"})
    text_col: list[str] | None = field(default=None, metadata={"help": "text column(s) of a file:/hf: task, joined"})
    label_col: str | None = field(default=None, metadata={"help": "0/1 label column of a file:/hf: task"})
    label_map: dict | None = field(default=None, metadata={
        "help": "JSON map from raw label to 0, 1, or null (null drops those rows, e.g. a neutral class); labels match "
                "by string form, so '{\"0\": 0, \"2\": 1, \"1\": null}' works for integer labels"})
    hf_split: str | None = field(default=None, metadata={"help": "split of an hf: dataset (default train)"})
    group_col: str | None = field(default=None, metadata={
        "help": "column of a file:/hf: task whose rows form groups (e.g. a question id): a group is never split "
                "across weak-train/weak-label/val/test, and multiple-choice accuracy is scored per group"})
    convert: str | None = field(default=None, metadata={
        "help": "named conversion of a file:/hf: table into binary rows, grouped per question: sciq (question, "
                "correct_answer, distractor1-3 → right answer vs a distractor), cosmos_qa (context, question, "
                "answer0-3, label → right vs next answer; grouped by context), preferences (chosen, rejected), "
                "preference-pairs (chosen, rejected as preference pairs: reward models, pairwise accuracy)",
        "choices": CONVERSION_NAMES})
    max_examples: int = field(default=6000, metadata={"help": "cap on examples after class balancing (≥ 40)"})
    split_fracs: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.1, 0.2],
                                     metadata={"help": "weak-train, weak-label, validation, test fractions: each in "
                                                       "(0, 1], summing to at most 1 (the rest is left out)"})
    mode: str = field(default="probe", metadata={"help": f"how the strong student and ceiling train: "
                                                         f"{', '.join(MODES)}",
                                                 "choices": MODES})
    weak_mode: str = field(default="probe",
                           metadata={"help": "how a transformer weak supervisor trains", "choices": MODES})
    n_train_layers: int = field(default=1, metadata={"help": "blocks finetuned in mode last-n"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank in mode lora"})
    epochs: int = field(default=20, metadata={"help": "epochs for probes"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate for probes"})
    ft_epochs: int = field(default=2, metadata={"help": "epochs when finetuning a transformer (paper: 2)"})
    ft_lr: float = field(default=5e-5, metadata={"help": "learning rate when finetuning a transformer (paper: 5e-5)"})
    batch_size: int = field(default=32, metadata={"help": "minibatch size (paper: 32)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    aux_alpha: float = field(default=0.75,
                             metadata={"help": "final α of aux_conf (paper: 0.75 largest students, else 0.5)"})
    aux_warmup: float = field(default=0.2, metadata={"help": "share of training over which α ramps up from 0"})
    product_beta: float = field(default=1.0, metadata={"help": "final β of the product loss"})
    bootstrap_via: list[str] = field(default_factory=list,
                                     metadata={"help": "intermediate models weak → m1 → … → strong (bootstrapping)"})
    hard_weak_labels: bool = field(default=False, metadata={"help": "train the student on hardened weak labels"})
    max_length: int = field(default=128, metadata={
        "help": "max tokens per text; longer texts are truncated, with a warning and their count in the metrics"})
    device: str = field(default="auto",
                        metadata={"help": "cpu, cuda, cuda:N, mps, or auto (a device this machine has); under "
                                          "`accelerate launch`, each process's own device"})
    dtype: str = field(default="auto", metadata={
        "help": "precision of the transformers' training and feature encoding: auto (bf16 autocast on CUDA with fp32 "
                "master weights and optimizer state; fp32 on CPU), fp32, bf16 or fp16", "choices": PRECISIONS})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples for CIs"})
    min_gap: float = field(default=0.02, metadata={"help": "PGR is undefined when |ceiling − weak| is below this"})
    home: str | None = field(default=None,
                             metadata={"help": "run store folder (else $SUPERALIGN_HOME or ./superalign_runs)"})
    executor: str = field(default="local", metadata={"help": "local or ray", "choices": ("local", "ray")})
    address: str | None = field(default=None, metadata={"help": "Ray cluster address (executor ray); none = local Ray"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom model code from the hub"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self):
        """Validate every field before anything touches the run store: each problem is one line naming the flag."""
        for name in ("weak", "strong", "loss", "seed", "split_fracs", "bootstrap_via", "text_col"):
            v = getattr(self, name)
            if isinstance(v, (str, int, float)):
                setattr(self, name, [v])
        # numpy scalars from scripts (np.arange seeds, np.float64 rates) become plain numbers: run ids are JSON
        self.seed = [_plain(v) for v in self.seed]
        for name in ("epochs", "ft_epochs", "batch_size", "n_boot", "max_length", "lora_rank", "n_train_layers",
                     "max_examples", "lr", "ft_lr", "min_gap", "weight_decay", "product_beta", "aux_alpha",
                     "aux_warmup"):
            setattr(self, name, _plain(getattr(self, name)))
        self.split_fracs = [_plain(v) for v in self.split_fracs]
        for loss in self.loss:
            if loss not in LOSSES:
                raise SuperalignError(f"unknown loss {loss!r}", f"use one of {', '.join(LOSSES)}")
        if not self.weak or not self.strong or not self.loss or not self.seed:
            raise SuperalignError("weak, strong, loss and seed each need at least one value")
        if "human" in self.strong or "bow" in self.strong:
            raise SuperalignError("the strong student must be a transformer", "use e.g. --strong minilm-l6")
        for m in ("mode", "weak_mode"):
            if getattr(self, m) not in MODES:
                raise SuperalignError(f"unknown --{m.replace('_', '-')} {getattr(self, m)!r}",
                                      f"use one of {', '.join(MODES)}")
        for sd in self.seed:
            if isinstance(sd, bool) or not isinstance(sd, int) or not 0 <= sd < 2**32:
                raise SuperalignError(f"--seed {sd!r} must be an integer in [0, 2**32)", "pass e.g. --seed 0 1 2")
        if len(set(self.seed)) != len(self.seed):
            raise SuperalignError(f"--seed {self.seed} repeats a seed", "list each seed once")
        for name in ("lr", "ft_lr"):
            check_positive(name, getattr(self, name), _default(name))
        for name in ("epochs", "ft_epochs", "batch_size", "n_boot", "max_length", "lora_rank", "n_train_layers"):
            check_int(name, getattr(self, name), example=_default(name))
        check_int("max_examples", self.max_examples, minimum=40, example=6000)
        fr = self.split_fracs
        if len(fr) != 4 or not all(isinstance(f, (int, float)) and math.isfinite(f) and 0 < f <= 1 for f in fr) \
                or sum(fr) > 1 + 1e-6:
            raise SuperalignError(f"--split-fracs {list(fr)} must be 4 numbers in (0, 1] summing to at most 1",
                                  "pass e.g. --split-fracs 0.3 0.4 0.1 0.2 (weak-train, weak-label, val, test)")
        for name in ("min_gap", "weight_decay", "product_beta"):
            check_nonnegative(name, getattr(self, name), _default(name))
        for name in ("aux_alpha", "aux_warmup"):
            check_range(name, getattr(self, name), 0.0, 1.0, example=_default(name))
        if self.executor not in ("local", "ray"):
            raise SuperalignError(f"unknown executor {self.executor!r}", "use local or ray")
        if self.convert is not None and self.convert not in CONVERSION_NAMES:
            raise SuperalignError(f"unknown --convert {self.convert!r}", f"use one of {', '.join(CONVERSION_NAMES)}")
        if (self.group_col or self.convert) and not (self.task.startswith(("hf:", "file:")) or "." in self.task):
            raise SuperalignError(f"--group-col/--convert apply to file: and hf: tasks, not {self.task!r}", "drop them")
        if self.label_map is not None and not isinstance(self.label_map, dict):
            raise SuperalignError(f"--label-map must be a JSON object, got {self.label_map!r}",
                                  "pass e.g. --label-map '{\"neg\": 0, \"pos\": 1, \"neutral\": null}'")
        check_device("device", self.device)
        check_choice("dtype", self.dtype, PRECISIONS)
        if self.device == "auto":
            import torch

            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # resolved here, like the device: 'auto' and the precision it stands for are one configuration
        self.dtype = resolve_precision(self.dtype, self.device)


def _plain(v):
    """A numpy integer → int, a numpy float → float; anything else as it is (validated after)."""
    if isinstance(v, (bool, np.bool_)):
        return v
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _default(name: str):
    return W2SConfig.__dataclass_fields__[name].default
