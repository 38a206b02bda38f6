"""Jobs: one config dataclass per command, run once per config and recorded in the run store.

Every pillar's commands (``superalign rlhf …``, ``superalign interp …``) are a dataclass deriving from
:class:`JobBase` and a body run by :func:`run_job`: the run id is a hash of the config, so rerunning a finished job
returns the stored result and artefacts at once, and chains of jobs resume where they stopped.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import SuperalignError
from .files import write_text_atomic  # noqa: F401  (re-exported: pillars' jobs write artefacts with it)
from .store import RunStore, run_id


def _f(default, help_: str, **kw):
    return field(default=default, metadata={"help": help_, **kw})


@dataclass
class JobBase:
    home: str | None = _f(None, "run store folder (else $SUPERALIGN_HOME or ./superalign_runs)")
    trust_remote_code: bool = _f(False, "allow custom model code from the hub (off unless you trust the model)")
    progress: bool = _f(True, "show progress bars")

    def key(self) -> dict:
        """The config that identifies the run (display-only fields dropped)."""
        d = asdict(self)
        for k in ("home", "progress"):
            d.pop(k, None)
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
    its result (taking the run over if that process dies), so two processes never compute or reset one run."""
    done = stored_result(kind, job)
    if done is not None:
        return done
    store = RunStore(job.home)
    rid = run_id(kind, job.key())
    if not store.wait_claim(rid, kind, job.key()).claimed:  # finished by another process meanwhile
        r = store.get(rid)
        r["cached"] = True
        return r
    t0 = time.perf_counter()
    try:
        metrics, artefacts = body(store, store.artefact_dir(rid))
    except BaseException as e:
        store.fail(rid, f"{type(e).__name__}: {e}" if isinstance(e, (SuperalignError, KeyboardInterrupt))
                   else traceback.format_exc(limit=3))
        raise
    store.finish(rid, metrics, artefacts, {"wall_s": time.perf_counter() - t0})
    r = store.get(rid)
    if r is None or r["status"] != "done":
        raise SuperalignError(f"run {rid} was taken over by another process before this one recorded it "
                              f"(status now {r['status'] if r else 'missing'})",
                              "rerun the same command: it returns the other process's result when it is done")
    r["cached"] = False
    return r
