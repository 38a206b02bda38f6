"""Jobs: one config dataclass per command, run once per config and recorded in the run store.

Every pillar's commands (``superalign rlhf …``, ``superalign interp …``) are a dataclass deriving from
:class:`JobBase` and a body run by :func:`run_job`: the run id is a hash of the config, so rerunning a finished job
returns the stored result and artefacts at once, and chains of jobs resume where they stopped.
"""

from __future__ import annotations

import shutil
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import SuperalignError
from .files import write_text_atomic  # noqa: F401  (re-exported: pillars' jobs write artefacts with it)
from .ledger import open_ledger
from .store import RunStore, run_id

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def _f(default, help_: str, **kw):
    return field(default=default, metadata={"help": help_, **kw})


@dataclass
class JobBase:
    home: str | None = _f(None, "run store folder (else $SUPERALIGN_HOME or ./superalign_runs)")
    trust_remote_code: bool = _f(False, "allow custom model code from the hub (off unless you trust the model)")
    progress: bool = _f(True, "show progress bars")
    device: str = _f("auto", "where the models run: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or "
                             "cuda:N; under `accelerate launch`, each process's own device")
    dtype: str = _f("auto", "precision: auto (bf16 autocast on CUDA with fp32 master weights and optimizer state; "
                            "fp32 on CPU), fp32, bf16 or fp16", choices=PRECISION_CHOICES)

    def placement(self) -> tuple[str, str]:
        """(device, precision) this run uses on this machine, checked: an unknown or absent device or an unknown
        dtype is a one-line error here, before anything is written."""
        from ..models.placement import resolve_device, resolve_precision
        from ..validate import check_choice

        check_choice("dtype", self.dtype, PRECISION_CHOICES)
        dev = resolve_device(self.device)
        return str(dev), resolve_precision(self.dtype, dev)

    def key(self) -> dict:
        """The config that identifies the run (display-only fields dropped). The device enters as its kind (cpu or
        cuda; which GPU does not matter) and the dtype as resolved on this machine, so ``auto`` and the explicit
        choice it stands for are one run, while a GPU bf16 run never answers for a CPU fp32 one."""
        d = asdict(self)
        for k in ("home", "progress"):
            d.pop(k, None)
        if "device" in d and "dtype" in d:
            dev, precision = self.placement()
            d["device"], d["dtype"] = dev.split(":")[0], precision
        return d


def stored_result(kind: str, job: JobBase) -> dict | None:
    """The finished run of this config, if there is one. Runners call it before loading models or activations
    that only a new run needs, so a rerun of a finished job costs a database read."""
    r = RunStore(job.home, create=False).get(run_id(kind, job.key()))  # nothing stored yet: nothing created
    if r is None or r["status"] != "done":
        return None
    r["cached"] = True
    return r


def run_job(kind: str, job: JobBase, body: Callable[[RunStore, Path], tuple[dict, dict]]) -> dict:
    """Run ``body(store, artefact_dir) -> (metrics, artefacts)`` once per config; a finished run is returned as is.

    The run is claimed first: if another process is computing the same config this one waits for it and returns
    its result (taking the run over if that process dies), so two processes never compute or reset one run.
    The run's compute record comes from a :class:`~superalign.runs.ledger.Ledger` open while ``body`` runs.

    Under `accelerate launch` with N processes, every process runs ``body`` (the trainers inside are data-parallel),
    but only rank 0 reads the decision (cached, claimed) from the store and writes the run and its artefacts; the other
    ranks get a scratch artefact folder that is deleted afterwards, and return rank 0's record."""
    from ..train.distributed import world

    rank, size = world()
    if size > 1:
        return _run_job_distributed(kind, job, body, rank, size)
    device, precision = job.placement()
    done = stored_result(kind, job)
    if done is not None:
        return done
    store = RunStore(job.home)
    rid = run_id(kind, job.key())
    if not store.wait_claim(rid, kind, job.key()).claimed:  # finished by another process meanwhile
        r = store.get(rid)
        r["cached"] = True
        return r
    try:
        with open_ledger(device, precision) as ledger:
            metrics, artefacts = body(store, store.artefact_dir(rid))
    except BaseException as e:
        store.fail(rid, f"{type(e).__name__}: {e}" if isinstance(e, (SuperalignError, KeyboardInterrupt))
                   else traceback.format_exc(limit=3))
        raise
    store.finish(rid, metrics, artefacts, ledger.summary())
    return _recorded(store, rid)


def _recorded(store: RunStore, rid: str) -> dict:
    r = store.get(rid)
    if r is None or r["status"] != "done":
        raise SuperalignError(f"run {rid} was taken over by another process before this one recorded it "
                              f"(status now {r['status'] if r else 'missing'})",
                              "rerun the same command: it returns the other process's result when it is done")
    r["cached"] = False
    return r


_TEARDOWN_REGISTERED = False


def _teardown_at_exit() -> None:
    """Destroy the process group when the process exits: left to the interpreter's shutdown, gloo's threads can abort
    a finished rank ("terminate called without an active exception") and fail the launch after the run was stored."""
    global _TEARDOWN_REGISTERED
    if _TEARDOWN_REGISTERED:
        return
    import atexit

    def teardown():
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    atexit.register(teardown)
    _TEARDOWN_REGISTERED = True


def exit_process_group(rc: int) -> None:
    """Under `accelerate launch`, end the process here once the command is done: leave the process group, flush the
    output and exit without the interpreter's shutdown, in which gloo's and torch's C++ threads are destroyed in no
    fixed order and can still abort a finished rank ("terminate called without an active exception", exit -6) after
    its run was stored — seen on a loaded 2-core machine even with the atexit teardown above. Returns at once when no
    process group was started (every single-process command)."""
    import os
    import sys

    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if rc == 0:
            dist.barrier()  # no rank leaves while another still needs a collective
        dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def _run_job_distributed(kind: str, job: JobBase, body, rank: int, size: int) -> dict:
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object, reduce

    device, precision = job.placement()
    # joins the launcher's process group (gloo on CPU, NCCL on GPUs). cpu=True on the CPU: without it Accelerate's
    # shared state, which every later Accelerator reuses, falls back to one process (DistributedType.NO) when no GPU
    # is visible, and the trainers' Runtime would not be data-parallel
    state = PartialState(cpu=device == "cpu")
    _teardown_at_exit()
    rid = run_id(kind, job.key())
    store = None
    if rank == 0:
        done = stored_result(kind, job)
        if done is None:
            store = RunStore(job.home)
            if not store.wait_claim(rid, kind, job.key()).claimed:
                done = store.get(rid)
                done["cached"] = True
        decision = ["done", done] if done is not None else ["run", None]
    else:
        decision = [None, None]
    decision = broadcast_object_list(decision, from_process=0)
    if decision[0] == "done":
        return decision[1]
    scratch = None if rank == 0 else Path(tempfile.mkdtemp(prefix=f"superalign-rank{rank}-"))
    try:
        with open_ledger(str(state.device) if device.startswith("cuda") else device, precision, size) as ledger:
            if rank == 0:
                metrics, artefacts = body(store, store.artefact_dir(rid))
            else:
                metrics, artefacts = body(RunStore(job.home, create=False), scratch)
        import torch

        # every process counted its own share of the work; the run's FLOPs and tokens are the sums
        tot = reduce(torch.tensor([ledger.flops, float(ledger.tokens)], dtype=torch.float64, device=state.device),
                     reduction="sum").cpu()
        ledger.flops, ledger.tokens = float(tot[0]), int(tot[1])
        stages: dict[str, float] = {}
        for part in gather_object([ledger.stages]):  # per-stage FLOPs: every rank's dict, summed
            for name, f in part.items():
                stages[name] = stages.get(name, 0.0) + f
        ledger.stages = stages
        ledger.flops_known = ledger.flops > 0
    except BaseException as e:
        if rank == 0:
            store.fail(rid, f"{type(e).__name__}: {e}" if isinstance(e, (SuperalignError, KeyboardInterrupt))
                       else traceback.format_exc(limit=3))
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if rank == 0:
        store.finish(rid, metrics, artefacts, ledger.summary())
        record = _recorded(store, rid)
    else:
        record = None
    record = broadcast_object_list([record], from_process=0)[0]
    return record
