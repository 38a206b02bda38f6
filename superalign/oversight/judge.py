"""The sparse-pixel judge of Irving, Christiano & Amodei 2018 ("AI safety via debate", MNIST experiment).

The judge is a small convnet that sees only a few revealed pixels of a digit. Its input is two planes of the
image's size: plane 0 is the reveal mask (1 where a pixel was revealed), plane 1 the revealed pixel values
(0 elsewhere), so that a revealed black pixel differs from a hidden one. It is trained, as in the paper, on
``k`` randomly chosen *nonzero* pixels per image, with a fresh subset per example per epoch.

Data: MNIST from ``mnist.npz`` (keys x_train, y_train, x_test, y_test) found through ``JudgeConfig.data`` or
``$SUPERALIGN_DATA/mnist/mnist.npz``. Offline fallback (``dataset="auto"`` with no file, or ``dataset="digits"``):
scikit-learn's ``load_digits`` (1,797 8×8 digits, values 0–16), used at its own 8×8 size: the network is built for
any input size (two 2×2 max-pools, so the dense layer sees 64 × ⌊H/4⌋ × ⌊W/4⌋ features), and its numbers are not
comparable with the paper's, only a fast stand-in for tests and --quick runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..errors import SuperalignError
from ..models.placement import resolve_device  # noqa: F401  (re-exported: the judge's device is resolved there)
from ..runs.jobs import PRECISION_CHOICES, JobBase
from ..runs.ledger import add_flops
from ..train.distributed import Runtime
from ..validate import (
    check_choice,
    check_device,
    check_int,
    check_positive,
    check_range,
    check_seed,
    checkpoint_kind,
    help_field,
    load_safetensors,
    read_json_file,
)

DATASETS = ("auto", "mnist", "digits")
_JOB_FIELDS = {f.name: f for f in fields(JobBase)}


@dataclass
class JudgeConfig:
    """How to train a sparse-pixel judge (defaults: the paper's architecture and optimiser)."""

    k: int = help_field(6, "pixels revealed to the judge per training example (the paper: 6 or 4), chosen among the "
                           "nonzero pixels")
    dataset: str = help_field("auto", "mnist (needs the npz file), digits (scikit-learn's 8×8 digits, offline) or auto "
                                      "(mnist if found, else digits)",
                        choices=("auto", "mnist", "digits"))
    data: str = help_field("", "path of mnist.npz (else $SUPERALIGN_DATA/mnist/mnist.npz)")
    epochs: int = help_field(30, "passes over the training images (a fresh random pixel subset per example in every "
                                 "pass)")
    batch_size: int = help_field(128, "images per Adam step")
    lr: float = help_field(1e-4, "Adam learning rate (the paper: 1e-4)")
    dropout: float = help_field(0.4, "dropout before the last dense layer (the paper: 0.4)")
    max_train: int = help_field(0, "use at most this many training images (0: all); for quick runs")
    max_test: int = help_field(0, "evaluate on at most this many test images (0: all)")
    seed: int = help_field(0, "seed of the initialisation, the pixel subsets, the shuffling and dropout (runs are "
                              "deterministic on CPU)")
    # the same fields as every job's (JobBase), so that `debate train-judge` and the Python API agree
    device: str = help_field("auto", _JOB_FIELDS["device"].metadata["help"] + "; only CPU runs are bit-deterministic")
    dtype: str = help_field("auto", _JOB_FIELDS["dtype"].metadata["help"], choices=PRECISION_CHOICES)

    def __post_init__(self):
        if self.k < 1:
            raise SuperalignError(f"k must be ≥ 1, got {self.k}", "pass e.g. --k 6")
        if self.dataset not in DATASETS:
            raise SuperalignError(f"unknown dataset {self.dataset!r}", f"pass --dataset one of {', '.join(DATASETS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise SuperalignError("epochs and batch_size must be ≥ 1", "pass e.g. --epochs 30 --batch-size 128")
        if not self.lr > 0:
            raise SuperalignError(f"lr must be > 0, got {self.lr}", "pass e.g. --lr 1e-4")
        if not 0 <= self.dropout < 1:
            raise SuperalignError(f"dropout must be in [0, 1), got {self.dropout}", "pass e.g. --dropout 0.4")
        check_int("k", self.k, example=6)
        check_int("epochs", self.epochs, example=30)
        check_int("batch_size", self.batch_size, example=128)
        check_positive("lr", self.lr, example=1e-4)
        check_range("dropout", self.dropout, 0.0, 1.0, high_open=True, example=0.4)
        check_int("max_train", self.max_train, minimum=0, example=0)
        check_int("max_test", self.max_test, minimum=0, example=0)
        check_seed("seed", self.seed)
        check_device("device", self.device)
        check_choice("dtype", self.dtype, PRECISION_CHOICES)


def autocast(device: torch.device | str, precision: str = "fp32"):
    """The judge's forward-pass precision: bf16/fp16 autocast (fp32 weights, fp32 accumulations outside the
    matmuls and convolutions) or nothing in fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


class Images(NamedTuple):
    """Digits as floats in [0, 1], (N, H, W), and their labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor


class Split(NamedTuple):
    train: Images
    test: Images
    name: str  # "mnist" or "digits"


def mnist_path(data: str = "") -> Path | None:
    """The MNIST file to use: ``data`` if given (must exist), else $SUPERALIGN_DATA/mnist/mnist.npz if present."""
    if data:
        p = Path(data)
        p = p / "mnist.npz" if p.is_dir() else p
        if not p.is_file():
            raise SuperalignError(f"MNIST file not found: {p}",
                                  "pass --data PATH/mnist.npz, or --dataset digits for the offline 8×8 digits")
        return p
    root = os.environ.get("SUPERALIGN_DATA")
    if root and (Path(root) / "mnist" / "mnist.npz").is_file():
        return Path(root) / "mnist" / "mnist.npz"
    return None


def load_images(dataset: str = "auto", data: str = "") -> Split:
    """Train and test digits. MNIST's official split; for scikit-learn's digits a fixed split (the last 20% are the
    test set: the file's order, no shuffling, so it is the same everywhere)."""
    path = mnist_path(data) if dataset != "digits" else None
    if dataset == "mnist" and path is None:
        raise SuperalignError("MNIST not found (no --data and no $SUPERALIGN_DATA/mnist/mnist.npz)",
                              "pass --data PATH/mnist.npz or set SUPERALIGN_DATA, or use --dataset digits")
    if path is not None:
        return Split(*_read_mnist_npz(Path(path)), "mnist")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)
    y = torch.from_numpy(d.target.astype(np.int64))
    n_test = len(x) // 5
    return Split(Images(x[:-n_test], y[:-n_test]), Images(x[-n_test:], y[-n_test:]), "digits")


def _read_mnist_npz(path: Path) -> tuple[Images, Images]:
    """(train, test) from an MNIST-style npz (x_* uint8 0–255 of shape (N, H, W), y_* labels 0–9); a garbage,
    truncated or wrongly shaped file is a one-line error naming it."""
    import zipfile

    fix = "pass an npz with arrays x_train, y_train, x_test, y_test (MNIST's keras layout)"
    if path.is_dir():
        raise SuperalignError(f"--data {path} is a folder", "pass the mnist.npz file itself")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise SuperalignError(f"{path} is a single .npy array, not an npz archive", fix)
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise SuperalignError(f"{path} lacks {', '.join(sorted(missing))}", fix)
            for k in ("x_train", "y_train", "x_test", "y_test"):
                arrays[k] = f[k]
    except SuperalignError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise SuperalignError(f"{path} is not a readable npz archive ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:100] if str(e) else 'truncated'})", fix) from None
    split = []
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
            raise SuperalignError(f"{path}: x_{part} has shape {x.shape} and y_{part} {y.shape}, expected (N, H, W) "
                                  "and (N,) with N ≥ 1", fix)
        if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.integer)):
            raise SuperalignError(f"{path}: x_{part} is {x.dtype} and y_{part} {y.dtype}", "images must be numbers "
                                  "(0–255) and labels integers 0–9")
        if y.min() < 0 or y.max() > 9:
            raise SuperalignError(f"{path}: y_{part} has labels outside 0–9 ({y.min()}…{y.max()})", fix)
        if not np.isfinite(x).all():
            raise SuperalignError(f"{path}: x_{part} contains NaN or inf", "pass finite pixel values 0–255")
        split.append(Images(torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))))
    if split[0].x.shape[1:] != split[1].x.shape[1:]:
        raise SuperalignError(f"{path}: train images are {tuple(split[0].x.shape[1:])}, test images "
                              f"{tuple(split[1].x.shape[1:])}", "pass train and test images of one size")
    return split[0], split[1]


def encode(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Judge input (N, 2, H, W): plane 0 = the reveal mask, plane 1 = the image where revealed, 0 elsewhere."""
    mask = mask.to(images.dtype)
    return torch.stack([mask, images * mask], dim=1)


def random_reveals(images: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """A (N, H, W) bool mask of k pixels per image drawn uniformly among its nonzero pixels (all of them where an
    image has fewer than k: only in training, where the debate game would refuse such an image)."""
    flat = images.reshape(len(images), -1)
    # random scores, nonzero pixels always above zero ones: the top k are a uniform k-subset of the nonzero pixels
    scores = torch.rand(flat.shape, generator=generator) + (flat > 0).float()
    idx = scores.topk(min(k, flat.shape[1]), dim=1).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True) & (flat > 0)
    return mask.reshape(images.shape)


class Judge(nn.Module):
    """conv 32@5×5 (same) → ReLU → maxpool 2 → conv 64@5×5 (same) → ReLU → maxpool 2 → dense 1024 → ReLU →
    dropout → dense 10: the paper's judge, for inputs of any size (H, W)."""

    def __init__(self, height: int = 28, width: int = 28, dropout: float = 0.4, n_classes: int = 10):
        super().__init__()
        self.height, self.width, self.n_classes = height, width, n_classes
        self.features = nn.Sequential(
            nn.Conv2d(2, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(64 * (height // 4) * (width // 4), 1024), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(1024, n_classes))

    def forward(self, x: torch.Tensor, dropout_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, n_classes). ``dropout_keep`` (N, 1024), the kept units already scaled by 1/(1 − p), replaces
        the dropout layer's own draw: training draws it for the whole global batch, so that every process of a
        data-parallel run drops the same units of the same examples as one process would."""
        h = self.features(x)
        if dropout_keep is None:
            return self.head(h)
        return self.head[3](self.head[1](self.head[0](h)) * dropout_keep)


def _conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def judge_forward_flops(judge: Judge) -> int:
    """FLOPs of one example's forward pass, 2 per multiply-add of the convolutions and dense layers, from the layer
    shapes (a convolution does out_channels × in_channels × kh × kw multiply-adds per output position). Biases,
    ReLUs and pools (a few thousand operations against millions) are not counted."""
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    h, w, flops = judge.height, judge.width, 0
    for layer in (*judge.features, *judge.head):
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p, d = (pair(getattr(layer, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
            h, w = _conv_out(h, k[0], s[0], p[0], d[0]), _conv_out(w, k[1], s[1], p[1], d[1])
            if isinstance(layer, nn.Conv2d):
                flops += 2 * layer.weight.numel() * h * w
        elif isinstance(layer, nn.Linear):
            flops += 2 * layer.weight.numel()
    return flops


@torch.no_grad()
def judge_logits(judge: Judge, images_mask_values: torch.Tensor, batch_size: int = 4096,
                 precision: str = "fp32", record_flops: bool = True) -> torch.Tensor:
    """Logits (N, 10) on the CPU in float32 of a batch of encoded inputs (N, 2, H, W), in eval mode (no dropout),
    in chunks moved to the judge's device and run in ``precision`` (fp32, or bf16/fp16 autocast). Their forward
    FLOPs go to the run's compute ledger unless ``record_flops`` is off (the debate oracles count their own)."""
    if images_mask_values.ndim != 4 or images_mask_values.shape[1:] != (2, judge.height, judge.width):
        raise SuperalignError(f"judge input has shape {tuple(images_mask_values.shape)}, expected "
                              f"(N, 2, {judge.height}, {judge.width})", "build it with superalign.oversight.encode")
    was_training = judge.training
    if was_training:  # (eval()/train() walk every submodule: not on every call)
        judge.eval()
    dev = next(judge.parameters()).device
    chunks = []
    with autocast(dev, precision):
        for i in range(0, len(images_mask_values), batch_size):
            chunks.append(judge(images_mask_values[i:i + batch_size].to(dev)).float())
    # one device-to-host copy for all chunks (the only synchronisation)
    out = torch.cat(chunks).cpu() if chunks else torch.zeros(0, judge.n_classes)
    if record_flops:
        add_flops(judge_forward_flops(judge) * len(images_mask_values), tokens=len(images_mask_values), stage="eval")
    if was_training:
        judge.train()
    return out


def judge_accuracy(judge: Judge, data: Images, k: int, seed: int = 0, precision: str = "fp32") -> float:
    """Judge-alone accuracy (over all 10 classes) with k random nonzero pixels per image (the paper's baseline)."""
    mask = random_reveals(data.x, k, torch.Generator().manual_seed(seed))
    pred = judge_logits(judge, encode(data.x, mask), precision=precision).argmax(1)
    return float((pred == data.y).float().mean())


class JudgeFit(NamedTuple):
    judge: Judge
    dataset: str
    losses: list[float]       # mean training loss per epoch
    test_acc: float           # judge alone, k random nonzero pixels, all 10 classes
    n_train: int
    n_test: int
    wall_s: float
    step_losses: list[float] = []  # mean training loss of each global batch, in order


def _sum_over_ranks(rt: Runtime, t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of a tensor over the data-parallel processes (the tensor itself in one), on the CPU: one
    collective and one device-to-host copy for a whole epoch's numbers."""
    if rt.world_size > 1:
        t = rt.accelerator.reduce(t, reduction="sum")
    return t.cpu()


def train_judge(cfg: JudgeConfig, split: Split | None = None, progress: bool = False,
                rt: Runtime | None = None) -> JudgeFit:
    """Train a judge with Adam on cross-entropy; deterministic given ``cfg.seed`` on CPU (the global RNG is forked
    so the caller's random state is left alone).

    ``rt`` (default: ``Runtime.create(cfg.device, cfg.dtype)``) says where: fp32 master weights and Adam state,
    bf16/fp16 autocast for the forward pass, and data-parallel under ``accelerate launch``. Every process draws the
    same global batches, pixel subsets and dropout masks from ``cfg.seed`` (on the CPU) and computes its share of
    the rows, so N processes follow one process's loss curve; on one CPU process the weights are bit for bit those
    of the plain loop this replaced. The test accuracy is computed on rank 0 and
    broadcast. FLOPs (3 × the forward pass per example for forward + backward) go to the run's ledger."""
    split = split or load_images(cfg.dataset, cfg.data)
    rt = rt or Runtime.create(cfg.device, cfg.dtype)
    train = Images(*(t[:cfg.max_train] if cfg.max_train else t for t in split.train))
    test = Images(*(t[:cfg.max_test] if cfg.max_test else t for t in split.test))
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)  # batches and pixel subsets: the same on every rank
    losses, step_losses = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        judge = Judge(train.x.shape[1], train.x.shape[2], cfg.dropout)
        step_flops = 3 * judge_forward_flops(judge)  # per example: forward + backward (≈ 2 × forward)
        hidden = judge.head[0].out_features
        model, opt = rt.prepare(judge, torch.optim.Adam(judge.parameters(), lr=cfg.lr))
        model.train()
        for epoch in range(cfg.epochs):
            perm = torch.randperm(len(train.x), generator=gen)
            step_sums, step_sizes = [], []  # kept on the device: no host sync per step
            for i in range(0, len(perm), cfg.batch_size):
                b = perm[i:i + cfg.batch_size]
                x = encode(train.x[b], random_reveals(train.x[b], cfg.k, gen))  # fresh subset every time
                # nn.Dropout's own draw (bernoulli on the global RNG, seeded above), made for the whole global batch
                keep = torch.empty(len(b), hidden).bernoulli_(1.0 - cfg.dropout).div_(1.0 - cfg.dropout) \
                    if cfg.dropout > 0 else None
                part = rt.shard(np.arange(len(b)))
                rows = torch.from_numpy(part.idx)
                with rt.autocast():
                    logits = model(x[rows].to(rt.device), None if keep is None else keep[rows].to(rt.device))
                ce_sum = nn.functional.cross_entropy(logits.float(), train.y[b][rows].to(rt.device), reduction="sum")
                rt.backward(rt.global_mean(ce_sum, len(rows), part.weight))
                rt.step(opt)
                step_sums.append(ce_sum.detach() * part.weight)
                step_sizes.append(len(b))
                add_flops(step_flops * len(rows) * part.weight, tokens=int(len(rows) * part.weight), stage="train")
            sums = _sum_over_ranks(rt, torch.stack(step_sums)).double()
            step_losses += (sums / torch.tensor(step_sizes, dtype=torch.float64)).tolist()
            losses.append(float(sums.sum()) / len(perm))
            if progress and rt.is_main:
                # held-out accuracy on ≤2,000 test images (fixed pixel subsets) when one process holds the whole
                # model (a sharded model's forward pass would need every rank)
                acc = "" if rt.world_size > 1 else ", test acc {:.1f}% (≤2,000 images)".format(100 * judge_accuracy(
                    rt.unwrap(model), Images(test.x[:2000], test.y[:2000]), cfg.k, seed=cfg.seed + 1,
                    precision=rt.precision))
                print(f"judge epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.4f}{acc}", flush=True)
    # a plain judge with the trained weights (gathered from every rank when FSDP shards them: all ranks take part)
    state = rt.full_state_dict(model)
    with torch.random.fork_rng(devices=[]):  # its (overwritten) initialisation leaves the caller's RNG alone
        judge = Judge(train.x.shape[1], train.x.shape[2], cfg.dropout)
    if state:
        judge.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    judge.eval()
    # rank 0 evaluates (its FLOPs counted once) and every rank gets its number
    acc = rt.broadcast(judge_accuracy(judge.to(rt.device), test, cfg.k, seed=cfg.seed + 1, precision=rt.precision)
                       if rt.is_main else None)
    judge.cpu()  # returned on the CPU: move it (``judge.to(...)``) to debate on a GPU
    return JudgeFit(judge, split.name, losses, acc, len(train.x), len(test.x), time.perf_counter() - t0, step_losses)


def save_judge(judge: Judge, folder: str | Path, cfg: JudgeConfig | None = None, meta: dict | None = None) -> Path:
    """``model.safetensors`` + ``cfg.json`` (input size, training config, anything in ``meta``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in judge.state_dict().items()},
              str(folder / "model.safetensors"))
    info = {"kind": JUDGE_KIND, "height": judge.height, "width": judge.width, "n_classes": judge.n_classes,
            "dropout": float(judge.head[2].p), "train": asdict(cfg) if cfg else None, **(meta or {})}
    tmp = folder / ".cfg.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(folder / "cfg.json")
    return folder


JUDGE_KIND = "debate-judge"
"""``kind`` in a judge's cfg.json (judges saved before it have none and are recognised by height/width)"""


def load_judge(folder: str | Path) -> tuple[Judge, dict]:
    """A judge saved by :func:`save_judge` (weights read with safetensors only: no pickle), in eval mode. A missing,
    truncated or corrupt file, or another kind of checkpoint (an SAE, a reward model), is a one-line error."""
    folder = Path(folder)
    fix = "train one with `superalign debate train-judge` and pass the `judge` folder it prints"
    if not (folder / "cfg.json").is_file() or not (folder / "model.safetensors").is_file():
        other = checkpoint_kind(folder)
        raise SuperalignError(f"no judge checkpoint in {folder} (needs cfg.json and model.safetensors"
                              f"{'; it is ' + other if other else ''})", fix)
    info = read_json_file(folder / "cfg.json", "judge config", fix)
    if not isinstance(info, dict) or info.get("kind", JUDGE_KIND) != JUDGE_KIND:
        kind = info.get("kind") if isinstance(info, dict) else type(info).__name__
        raise SuperalignError(f"{folder} holds a {kind} checkpoint, not a judge", fix)
    try:
        height, width = int(info["height"]), int(info["width"])
        dropout, n_classes = float(info.get("dropout", 0.4)), int(info.get("n_classes", 10))
        if min(height, width) < 4 or n_classes < 2 or not 0 <= dropout < 1:
            raise ValueError("out of range")
    except (KeyError, TypeError, ValueError) as e:
        raise SuperalignError(f"{folder / 'cfg.json'} is not a judge config ({type(e).__name__}: {e}; an SAE or "
                              "other checkpoint?)", fix) from None
    judge = Judge(height, width, dropout, n_classes)
    state = load_safetensors(folder / "model.safetensors", "judge weights", "retrain the judge (the file is damaged)")
    try:
        judge.load_state_dict(state)
    except RuntimeError as e:
        raise SuperalignError(f"judge weights in {folder} do not match its cfg.json "
                              f"({str(e).splitlines()[-1].strip()[:120]})", fix) from None
    judge.eval()
    return judge, info
