"""Where and how a trainer runs: one device or many, fp32 or bf16/fp16 autocast — on Accelerate.

Every trainer takes a :class:`Runtime` and writes its loop once::

    rt = Runtime.create(job.device, job.dtype)            # reads `accelerate launch`'s environment
    model = build_model()                                 # fp32 master weights
    opt = torch.optim.AdamW(model.parameters(), lr=...)
    model, opt = rt.prepare(model, opt)                   # .to(device); DDP/FSDP under `accelerate launch`
    for idx in epoch_batches(...):                        # the same global batches on every process (same seed)
        part = rt.shard(idx)                              # this process's share of the global batch
        with rt.autocast():
            nll_sum, n_tokens = ...                       # sums over this process's rows
            loss = rt.global_mean(nll_sum, n_tokens)      # = global sum / global count, whatever the split
        rt.backward(loss)
        rt.step(opt, max_grad_norm=1.0)                   # unscale (fp16), clip, step, zero grads

One process (``python -m superalign …``) needs no launcher: the model moves to ``device`` and bf16/fp16 run under
``torch.autocast`` with fp32 weights and optimizer state. Under ``accelerate launch --num_processes N -m superalign
…`` the same code runs data-parallel through :class:`accelerate.Accelerator` (DDP, or FSDP when the Accelerate config
asks for it). :meth:`Runtime.global_mean` makes N processes with a global batch of B rows compute exactly the
gradient of one process with the same B rows: DDP averages gradients over processes, so each process's loss is its
share of the global sum, times N, over the global count. Only rank 0 writes the run store and artefacts
(:func:`superalign.runs.jobs.run_job` sees to that).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from ..models.placement import resolve_device, resolve_precision

_TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (`accelerate launch`, torchrun); (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return world()[0] == 0


class Shard(NamedTuple):
    idx: np.ndarray
    """the rows of the global batch this process computes (never empty: see ``weight``)"""
    weight: float
    """1.0, or 0.0 when the global batch has fewer rows than processes and this one only keeps DDP in step"""


@dataclass
class Runtime:
    """One trainer's device, precision and (optional) data-parallel group."""

    device: torch.device
    precision: str
    """'fp32' | 'bf16' | 'fp16': the autocast precision; weights and optimizer state stay fp32"""
    rank: int = 0
    world_size: int = 1
    accelerator: Any = None
    """the :class:`accelerate.Accelerator` when data-parallel, else None"""
    scaler: Any = None
    """fp16 loss scaler of a single process"""

    @classmethod
    def create(cls, device: str | torch.device | None = "auto", dtype: str | None = "auto") -> Runtime:
        """A runtime for ``device`` ('auto' | 'cpu' | 'cuda' | 'cuda:N') and ``dtype`` ('auto' | 'fp32' | 'bf16' |
        'fp16'). Under a launcher with more than one process, the device is this process's
        (``cuda:<local rank>``, or the CPU for ``--cpu`` / ``--device cpu``)."""
        rank, size = world()
        dev = resolve_device(device)
        precision = resolve_precision(dtype, dev)
        if size > 1:
            from accelerate import Accelerator

            acc = Accelerator(cpu=dev.type == "cpu", mixed_precision="no" if precision == "fp32" else precision)
            return cls(device=acc.device, precision=precision, rank=acc.process_index, world_size=acc.num_processes,
                       accelerator=acc)
        scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
        return cls(device=dev, precision=precision, scaler=scaler)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.precision == "fp32" else _TORCH_DTYPE[self.precision]

    def autocast(self):
        """The forward pass's precision context (a no-op in fp32)."""
        if self.accelerator is not None:
            return self.accelerator.autocast()
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None):
        """The model (and optimizer) ready to train here: moved to the device; wrapped for DDP/FSDP when
        data-parallel. Step learning-rate schedulers yourself (Accelerate would step them once per process)."""
        if self.accelerator is None:
            model = model.to(self.device)
            return (model, optimizer) if optimizer is not None else model
        if optimizer is None:
            return self.accelerator.prepare(model)
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain model inside a DDP/FSDP wrapper (for saving, generation and evaluation)."""
        return self.accelerator.unwrap_model(model) if self.accelerator is not None else model

    def full_state_dict(self, model: torch.nn.Module) -> dict:
        """The whole model's weights on this process (gathered from FSDP shards when sharded), for saving."""
        if self.accelerator is None:
            return model.state_dict()
        return self.accelerator.get_state_dict(model)

    def shard(self, idx) -> Shard:
        """This process's rows of a global batch: every ``world_size``-th row from ``rank``."""
        idx = np.asarray(idx)
        if self.world_size == 1:
            return Shard(idx, 1.0)
        mine = idx[self.rank::self.world_size]
        return Shard(mine, 1.0) if len(mine) else Shard(idx[:1], 0.0)

    def all_sum(self, x: float | torch.Tensor) -> float:
        """The sum of a number over all processes (the number itself in one process)."""
        if self.world_size == 1:
            return float(x)
        t = torch.as_tensor(x, dtype=torch.float64, device=self.device).detach().reshape(1)
        return float(self.accelerator.reduce(t, reduction="sum").item())

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> Runtime:
        """The runtime of a trainer called without one: one process on the model's device, fp32 (the library
        default)."""
        p = next(model.parameters(), None)
        return cls(device=p.device if p is not None else torch.device("cpu"), precision="fp32")

    def global_mean(self, local_sum: torch.Tensor, local_count: float | torch.Tensor, weight: float = 1.0):
        """The loss whose gradient, averaged over processes by DDP, is that of (sum over the global batch) / (count
        over the global batch). ``weight`` 0 marks a process that holds no real rows of this batch. One process
        keeps the plain division, bit for bit the single-device result."""
        if self.world_size == 1:
            return local_sum / local_count
        local_count = float(local_count) * weight
        total = self.all_sum(local_count) if self.world_size > 1 else local_count
        return local_sum * (weight * self.world_size / max(total, 1e-12))

    def global_ratio(self, local_sum, local_count, weight: float = 1.0) -> float:
        """A logged number over the global batch: all-summed sum / all-summed count (the local ratio in one
        process)."""
        if self.world_size == 1:
            return float(local_sum / local_count) if torch.is_tensor(local_sum) else local_sum / local_count
        return self.all_sum(local_sum * weight) / max(self.all_sum(float(local_count) * weight), 1e-12)

    def all_sum_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of a tensor over the processes (the tensor itself in one process): one collective for a
        whole vector of statistics."""
        if self.world_size == 1:
            return x
        return self.accelerator.reduce(x.detach().clone(), reduction="sum")

    def max_across(self):
        """A function giving the maximum of an integer over the processes (None in one process): lets ragged
        per-process loops (e.g. generation lengths) run the same number of collective steps."""
        if self.world_size == 1:
            return None

        def across(v) -> int:
            t = torch.tensor([int(v)], dtype=torch.long, device=self.device)
            return int(self.accelerator.gather(t).max())
        return across

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None = None,
             params=None) -> float | None:
        """Unscale (fp16), clip to ``max_grad_norm`` (when given), step the optimizer and zero its gradients.
        Returns the gradient norm before clipping when clipping."""
        norm = None
        if params is None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.accelerator is not None:
            if max_grad_norm is not None:
                norm = self.accelerator.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
        elif self.scaler is not None:
            self.scaler.unscale_(optimizer)
            if max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            if max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return None if norm is None else float(norm)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if self.world_size == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
