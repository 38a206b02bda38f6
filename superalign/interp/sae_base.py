"""What every sparse-autoencoder architecture shares: the output types, FVU, initialisation helpers, the checkpoint
format (safetensors + cfg.json) and the architecture registry that :func:`load_sae` dispatches on.

Each architecture is a :class:`SparseAutoencoder` subclass in its own module that registers itself::

    @register_architecture
    class MySAE(SparseAutoencoder):
        architecture = "mine"          # written to cfg.json
        config_class = MySAEConfig     # rebuilt from cfg.json on load

and is listed in :data:`BUILTIN_ARCHITECTURES` (module by name) so that loading a checkpoint of that architecture
imports it. This module imports no architecture, so architectures depend on it and never on each other.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import SuperalignError

BUILTIN_ARCHITECTURES = {"topk": "superalign.interp.sae", "relu": "superalign.interp.relu_sae"}
"""architecture name → the module that defines and registers it (imported when a checkpoint needs it)"""

_architectures: dict[str, type[SparseAutoencoder]] = {}


class EncoderOutput(NamedTuple):
    top_acts: torch.Tensor
    """values of the k active latents [B, k]"""
    top_indices: torch.Tensor
    """indices of the k active latents [B, k]"""
    pre_acts: torch.Tensor
    """ReLU pre-activations of every latent [B, n_latents]"""


class ForwardOutput(NamedTuple):
    x_hat: torch.Tensor
    """reconstruction"""
    fvu: torch.Tensor
    """fraction of variance unexplained of this batch"""
    aux_loss: torch.Tensor
    """AuxK loss (0 when no latent is dead)"""
    multi_topk_fvu: torch.Tensor
    """FVU of the Multi-TopK reconstruction (0 when off)"""
    loss: torch.Tensor
    """fvu + aux_coef · aux_loss + multi_topk_coef · multi_topk_fvu"""
    top_indices: torch.Tensor
    """active latents [B, k]"""
    top_acts: torch.Tensor
    """their activations [B, k]"""


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − mean(x)‖² (mean over the batch, per dimension)."""
    return (x - x_hat).pow(2).sum() / centred_sq(x)


class GlobalBatch(NamedTuple):
    """This process's rows of a training batch, and how its losses become the whole (global) batch's.

    Under data parallelism every process draws the same global batch of ``rows`` inputs and computes a share of it;
    DDP then averages the gradients over processes. A loss that is a sum over the global batch divided by a global
    normaliser (FVU: Σ‖x − x̂‖² / Σ‖x − x̄‖²) is therefore split as (this process's sum / global normaliser) ×
    ``scale`` (world size × weight, the factor of :meth:`superalign.train.distributed.Runtime.global_mean`), so
    that the average is exactly one process's gradient for the global batch. Statistics that steer training (which
    latents fired, the AuxK residual's variance) are summed over processes with ``all_sum`` so every process agrees.
    One process: :meth:`local` (``all_sum`` None), and the formulas reduce to the plain ones."""

    x_var: torch.Tensor
    """Σ‖x − x̄‖² over the global batch (x̄ its mean), clamped away from 0: FVU's denominator"""
    rows: int
    """inputs in the global batch"""
    scale: float = 1.0
    """world size × weight: what this process's share of a loss is multiplied by for DDP's mean"""
    weight: float = 1.0
    """1, or 0 for a process that holds only a placeholder row of a batch smaller than the world"""
    all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
    """sum of a tensor over processes (None: one process)"""

    @classmethod
    def local(cls, x: torch.Tensor) -> GlobalBatch:
        """The whole batch in this one process."""
        return cls(centred_sq(x), x.shape[0])

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Σ over processes of ``t`` (this process's part, weighted)."""
        if self.all_sum is None:
            return t
        # a placeholder row contributes nothing; zeros_like keeps the dtype (every process must send the same)
        return self.all_sum(t if self.weight else torch.zeros_like(t))

    def share(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global value, this process's differentiable share for the loss) of a quantity whose global value is the
        sum over processes of ``local``."""
        if self.all_sum is None:
            return local, local
        return self.sum(local.detach()), local * self.scale

    def centred_sq(self, r: torch.Tensor) -> torch.Tensor:
        """Σ‖r − r̄‖² over the global batch's rows of ``r`` (r̄ the global mean; two passes, both summed)."""
        if self.all_sum is None:
            return centred_sq(r)
        mean = self.sum(r.sum(0)) / self.rows
        return self.sum((r - mean).pow(2).sum()).clamp(min=1e-12)


def centred_sq(x: torch.Tensor) -> torch.Tensor:
    """Σ‖x − mean(x)‖² (mean over the batch, per dimension), clamped away from 0: FVU's denominator."""
    return (x - x.mean(0, keepdim=True)).pow(2).sum().clamp(min=1e-12)


def geometric_median(x: torch.Tensor, iters: int = 100, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the rows of x."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp(min=eps)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < eps * max(1.0, float(y.norm())):
            return y_new
        y = y_new
    return y


def random_rows(n: int, d: int, seed: int, norm: float) -> torch.Tensor:
    """[n, d] random directions of the given norm, seeded: the decoder of every SAE here starts from them, and the
    encoder from their copy (tied initialisation)."""
    w = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return w * (norm / w.norm(dim=1, keepdim=True))


# ---------------------------------------------------------------------- the architecture registry

def register_architecture(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
    """Class decorator: make ``cls`` loadable by its ``architecture`` name (a second class of one name is an error)."""
    name = cls.architecture
    if _architectures.get(name, cls) is not cls:
        raise ValueError(f"SAE architecture {name!r} is already registered by {_architectures[name].__name__}")
    _architectures[name] = cls
    return cls


def architecture_names() -> list[str]:
    """Every architecture a checkpoint may have: the built-in ones and any registered at run time."""
    return list(dict.fromkeys([*BUILTIN_ARCHITECTURES, *_architectures]))


def architecture_class(name: str) -> type[SparseAutoencoder]:
    """The class of an architecture, importing its built-in module when needed."""
    if name not in _architectures and name in BUILTIN_ARCHITECTURES:
        importlib.import_module(BUILTIN_ARCHITECTURES[name])
    if name not in _architectures:
        raise SuperalignError(f"unknown SAE architecture {name!r}",
                              f"use one of: {', '.join(architecture_names())}")
    return _architectures[name]


# ---------------------------------------------------------------------- checkpoints: safetensors + cfg.json

def read_checkpoint_cfg(folder: str | Path, expect_d_in: int | None = None,
                        architecture: str | None = None) -> tuple[dict, Path]:
    """(config fields, folder) of an SAE checkpoint, checked: it is one, of ``architecture`` (when given), and its
    width is ``expect_d_in`` (when given). Checkpoints written before the ``architecture`` field are TopK."""
    from ..validate import read_json_file

    folder = Path(folder)
    fix = "pass a folder written by superalign interp sae (its `sae` artefact)"
    if not (folder / "cfg.json").exists() or not (folder / "sae.safetensors").exists():
        raise SuperalignError(f"{folder} is not an SAE checkpoint (needs cfg.json and sae.safetensors)", fix)
    raw = read_json_file(folder / "cfg.json", "SAE config", fix)
    if not isinstance(raw, dict) or not {"d_in", "n_latents"} <= set(raw) or raw.get("kind", "sae") != "sae":
        what = f"a {raw['kind']} checkpoint" if isinstance(raw, dict) and "kind" in raw else "not an SAE config"
        raise SuperalignError(f"{folder / 'cfg.json'} is {what} (no d_in/n_latents)", fix)
    raw.pop("meta", None)
    raw.pop("kind", None)
    arch = raw.pop("architecture", "topk")
    if architecture is not None and arch != architecture:
        raise SuperalignError(f"SAE in {folder} is a {arch} SAE, not {architecture}",
                              "load it with superalign.interp.sae.load_sae, which picks the class")
    if architecture is not None:
        known = {f.name for f in fields(architecture_class(architecture).config_class)}
        if set(raw) - known:
            raise SuperalignError(f"{folder / 'cfg.json'} has fields a {architecture} SAE does not know: "
                                  f"{', '.join(sorted(set(raw) - known))}", "load it with the superalign version that "
                                  "wrote it, or retrain the SAE")
    if expect_d_in is not None and expect_d_in != raw.get("d_in"):
        raise SuperalignError(f"SAE in {folder} expects inputs of width {raw.get('d_in')}, the activations have "
                              f"{expect_d_in}", "load the SAE trained on this model and hook point")
    return raw, folder


def load_sae_state(sae: torch.nn.Module, folder: Path) -> None:
    """Load ``sae.safetensors`` into ``sae``: a truncated file or one whose shapes disagree with cfg.json is a
    one-line error naming the folder."""
    from ..validate import load_safetensors

    state = load_safetensors(folder / "sae.safetensors", "SAE weights", "retrain the SAE (the file is damaged)")
    try:
        sae.load_state_dict(state)
    except RuntimeError as e:
        raise SuperalignError(f"SAE weights in {folder} do not match its cfg.json "
                              f"({str(e).splitlines()[-1].strip()[:120]})", "retrain the SAE") from None


class SparseAutoencoder(torch.nn.Module):
    """Base of every SAE architecture: the checkpoint format. Subclasses set ``architecture`` (the name written to
    cfg.json) and ``config_class`` (a dataclass; its fields are written next to the name), and implement
    ``encode``, ``decode``, ``forward``, ``latent_acts``, ``init_b_pre``, ``remove_parallel_grad``,
    ``normalize_decoder`` and ``dead_fraction`` (the training loop and autointerp use only these)."""

    architecture: str = ""
    config_class: type = object
    cfg: object

    def save(self, folder: str | Path, meta: dict | None = None) -> Path:
        """safetensors + cfg.json (with the architecture), written to a temporary folder and renamed into place."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(tmp / "sae.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps({"architecture": self.architecture, **asdict(self.cfg),
                                                  **({"meta": meta} if meta else {})}, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, expect_d_in: int | None = None):
        """A checkpoint of this architecture (another architecture's is a one-line error)."""
        raw, folder = read_checkpoint_cfg(folder, expect_d_in, cls.architecture)
        sae = cls(cls.config_class(**raw))
        load_sae_state(sae, folder)
        return sae


def load_sae(folder: str | Path, expect_d_in: int | None = None) -> SparseAutoencoder:
    """Load an SAE checkpoint of any registered architecture, dispatching on cfg.json's ``architecture`` (absent =
    topk)."""
    from ..validate import read_json_file

    _, folder = read_checkpoint_cfg(folder, expect_d_in)  # the same checks and messages for every architecture
    arch = read_json_file(folder / "cfg.json", "SAE config").get("architecture", "topk")
    if arch not in architecture_names():
        raise SuperalignError(f"SAE in {folder} has unknown architecture {arch!r}",
                              f"use a checkpoint of one of: {', '.join(architecture_names())}")
    return architecture_class(arch).load(folder, expect_d_in)
