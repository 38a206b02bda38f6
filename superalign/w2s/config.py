"""The weak-to-strong experiment config: one dataclass, the CLI is generated from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SuperalignError
from ..train.losses import LOSSES
from ..train.students import MODES


@dataclass
class W2SConfig:
    """A grid of weak-to-strong runs: every (weak, strong, loss, seed) combination on one task."""

    task: str = field(default="textblob-polarity", metadata={"help": "task name (see `superalign tasks`), hf:<dataset>, or file:<path>"})
    weak: list[str] = field(default_factory=lambda: ["bow"], metadata={"help": "weak supervisor model(s)"})
    strong: list[str] = field(default_factory=lambda: ["minilm-l6"], metadata={"help": "strong student model(s)"})
    loss: list[str] = field(default_factory=lambda: ["xent", "aux_conf", "product"],
                            metadata={"help": f"student loss(es): {', '.join(LOSSES)}"})
    seed: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "seed(s); each seed re-splits the data"})
    data: str | None = field(default=None, metadata={"help": "shared datasets folder (else $SUPERALIGN_DATA)"})
    text_col: list[str] | None = field(default=None, metadata={"help": "text column(s) of a file:/hf: task, joined"})
    label_col: str | None = field(default=None, metadata={"help": "0/1 label column of a file:/hf: task"})
    label_map: dict | None = field(default=None, metadata={"help": "JSON map from raw label to 0/1"})
    hf_split: str | None = field(default=None, metadata={"help": "split of an hf: dataset (default train)"})
    max_examples: int = field(default=6000, metadata={"help": "cap on examples after class balancing"})
    split_fracs: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.1, 0.2],
                                     metadata={"help": "weak-train, weak-label, validation, test fractions"})
    mode: str = field(default="probe", metadata={"help": f"how the strong student and ceiling train: {', '.join(MODES)}",
                                                 "choices": MODES})
    weak_mode: str = field(default="probe", metadata={"help": "how a transformer weak supervisor trains", "choices": MODES})
    n_train_layers: int = field(default=1, metadata={"help": "blocks finetuned in mode last-n"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank in mode lora"})
    epochs: int = field(default=20, metadata={"help": "epochs for probes"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate for probes"})
    ft_epochs: int = field(default=2, metadata={"help": "epochs when finetuning a transformer (paper: 2)"})
    ft_lr: float = field(default=5e-5, metadata={"help": "learning rate when finetuning a transformer (paper: 5e-5)"})
    batch_size: int = field(default=32, metadata={"help": "minibatch size (paper: 32)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    aux_alpha: float = field(default=0.75, metadata={"help": "final α of aux_conf (paper: 0.75 largest students, else 0.5)"})
    aux_warmup: float = field(default=0.2, metadata={"help": "share of training over which α ramps up from 0"})
    product_beta: float = field(default=1.0, metadata={"help": "final β of the product loss"})
    bootstrap_via: list[str] = field(default_factory=list,
                                     metadata={"help": "intermediate models weak → m1 → … → strong (bootstrapping)"})
    hard_weak_labels: bool = field(default=False, metadata={"help": "train the student on hardened weak labels"})
    max_length: int = field(default=128, metadata={"help": "max tokens per text"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples for CIs"})
    min_gap: float = field(default=0.02, metadata={"help": "PGR is undefined when |ceiling − weak| is below this"})
    home: str | None = field(default=None, metadata={"help": "run store folder (else $SUPERALIGN_HOME or ./superalign_runs)"})
    executor: str = field(default="local", metadata={"help": "local or ray", "choices": ("local", "ray")})
    address: str | None = field(default=None, metadata={"help": "Ray cluster address (executor ray); none = local Ray"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom model code from the hub"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self):
        for name in ("weak", "strong", "loss", "seed", "split_fracs", "bootstrap_via"):
            v = getattr(self, name)
            if isinstance(v, (str, int, float)):
                setattr(self, name, [v])
        for l in self.loss:
            if l not in LOSSES:
                raise SuperalignError(f"unknown loss {l!r}", f"use one of {', '.join(LOSSES)}")
        if not self.weak or not self.strong or not self.loss or not self.seed:
            raise SuperalignError("weak, strong, loss and seed each need at least one value")
        if "human" in self.strong or "bow" in self.strong:
            raise SuperalignError("the strong student must be a transformer", "use e.g. --strong minilm-l6")
        for m in ("mode", "weak_mode"):
            if getattr(self, m) not in MODES:
                raise SuperalignError(f"unknown --{m.replace('_', '-')} {getattr(self, m)!r}", f"use one of {', '.join(MODES)}")
        if not 0 <= self.aux_alpha <= 1:
            raise SuperalignError(f"--aux-alpha {self.aux_alpha} must be in [0, 1]")
        if not 0 <= self.aux_warmup <= 1:
            raise SuperalignError(f"--aux-warmup {self.aux_warmup} must be in [0, 1]")
        if self.epochs < 1 or self.ft_epochs < 1 or self.batch_size < 1 or self.max_examples < 40:
            raise SuperalignError("epochs, batch size must be ≥ 1 and max_examples ≥ 40")
        if self.executor not in ("local", "ray"):
            raise SuperalignError(f"unknown executor {self.executor!r}", "use local or ray")
        if self.device == "auto":
            import torch
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
