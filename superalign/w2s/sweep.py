"""Run a grid of weak-to-strong cells locally or on Ray, skipping cells already done (resume) and cells another
process is computing (waited for, never redone)."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import defaultdict
from typing import Any

from tqdm.auto import tqdm

from ..errors import SuperalignError
from ..runs import store as store_mod
from ..runs.cache import content_hash
from ..runs.store import RunStore, run_id
from ..train.distributed import is_main_process, world
from .config import W2SConfig
from .pgr import PGREstimate
from .pipeline import Cell, Experiment, cell_config, cell_run_id, cells, record_result, run_and_record
from .summary import format_table, summarize


class W2SResult:
    """Results of a grid: ``records`` (one stored run per cell), ``rows`` (the seed-pooled PGR table).

    ``pgr`` maps loss → :class:`PGREstimate` (accuracy) when the grid has one task/weak/strong pair, and
    (weak, strong, loss) → estimate otherwise; ``pgr_auroc`` likewise for AUROC."""

    def __init__(self, cfg: W2SConfig, records: list[dict], group_id: str, store: RunStore, wall_s: float = 0.0,
                 rows: list[dict] | None = None):
        missing = [f"{r['id']} ({r['status']})" if r else "a run not in the store" for r in records
                   if not r or r["status"] != "done"]
        if missing:  # a PGR pooled over fewer seeds than asked for would be silently wrong
            raise SuperalignError(f"{len(missing)} of the {len(records)} requested w2s runs are not done: "
                                  f"{', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}",
                                  "rerun the same command to compute them (see `superalign runs list`)")
        self.cfg, self.records, self.group_id, self.store, self.wall_s = cfg, records, group_id, store, wall_s
        self.rows = rows if rows is not None else summarize(records, cfg.n_boot, cfg.min_gap)

    def _est(self, metric: str) -> dict[Any, PGREstimate]:
        single = len({(r["weak"], r["strong"]) for r in self.rows}) == 1
        return {(r["loss"] if single else (r["weak"], r["strong"], r["loss"])):
                PGREstimate(r[f"pgr_{metric}"], *r[f"pgr_{metric}_ci"], r[f"pgr_{metric}_per_seed"], metric,
                            r.get(f"pgr_{metric}_note", "")) for r in self.rows}

    @property
    def pgr(self) -> dict[Any, PGREstimate]:
        return self._est("acc")

    @property
    def pgr_auroc(self) -> dict[Any, PGREstimate]:
        return self._est("auroc")

    def table(self) -> str:
        return format_table(self.rows)

    def __repr__(self) -> str:
        return f"W2SResult(group={self.group_id}, runs={len(self.records)})\n{self.table()}"


def sweep(cfg: W2SConfig | None = None, **kwargs) -> W2SResult:
    """Run every (weak, strong, loss, seed) cell of ``cfg`` that is not already done in the store.

    Safe to run twice at once on one store: each cell is claimed before it is computed, cells another live
    process holds are waited for (and taken over if it dies), never redone; the result needs every cell done."""
    cfg = cfg or W2SConfig(**kwargs)
    t0 = time.perf_counter()
    _, size = world()
    if size > 1 and cfg.executor == "ray":
        raise SuperalignError("--executor ray cannot run under `accelerate launch` (each Ray task is one process)",
                              "launch with `python -m superalign …` for Ray, or pass --executor local")
    # under `accelerate launch` only rank 0 writes the run store: the others never create or claim anything
    exp = Experiment(cfg, None if is_main_process() else RunStore(cfg.home, create=False))  # validates first
    store = exp.store
    grid = cells(cfg)
    # The task's content fingerprint is part of the group's identity, as it is of every run's: an edited data
    # file is a new sweep, not the old group row rewritten. dtype enters only when it is not fp32 (as in run ids).
    group_cfg = {**{k: v for k, v in dataclasses.asdict(cfg).items()
                    if k not in ("home", "progress", "executor", "address", "dtype")}, "task_fp": exp.task_fp}
    if cfg.dtype != "fp32":
        group_cfg["dtype"] = cfg.dtype
    group_id = f"w2s-sweep-{content_hash(group_cfg)}"
    ids = [cell_run_id(cfg, c) for c in grid]
    if size > 1:
        return _sweep_data_parallel(exp, grid, ids, group_id, group_cfg, t0)
    # Claimed like a run, so `runs list` shows a sweep in progress; an identical sweep finished or running in
    # another process keeps its row (never reset to 'running'). Whoever ends last rewrites it as done (record).
    group = store.claim(group_id, "w2s-sweep", group_cfg)
    try:
        n_new = _run_cells(exp, grid, ids, group_id)
        records = [store.get(rid) or {"id": rid, "status": "missing"} for rid in ids]
        res = W2SResult(cfg, records, group_id, store, time.perf_counter() - t0)
    except BaseException as e:
        if group.claimed:
            store.fail(group_id, f"{type(e).__name__}: {e}")
        raise
    _record_group(exp, group_id, group_cfg, res, ids, n_new)
    return res


def _record_group(exp: Experiment, group_id: str, group_cfg: dict, res: W2SResult, ids: list[str],
                  n_new: int) -> None:
    enc = dataclasses.asdict(exp.encode_stats)
    rt = exp.rt
    compute = {"encode": enc, "wall_s": res.wall_s, "device_s": res.wall_s * rt.world_size,
               "device": "cpu" if rt.device.type == "cpu" else str(rt.device), "dtype": rt.precision,
               "world_size": rt.world_size,
               "flops_total": enc.get("flops", 0.0) + sum(r["compute"].get("flops_total") or 0.0
                                                          for r in res.records)}
    exp.store.record(group_id, "w2s-sweep", group_cfg, {"rows": res.rows, "n_runs": len(ids), "n_new": n_new},
                     {"runs": ids}, compute)


def _sweep_data_parallel(exp: Experiment, grid: list[Cell], ids: list[str], group_id: str, group_cfg: dict,
                         t0: float) -> W2SResult:
    """The grid under `accelerate launch`: every process runs every cell's stages together (the trainers inside are
    data-parallel); rank 0 alone claims, records and caches, and tells the others what to run, so each cell is
    computed once, by the whole group. Every process returns rank 0's result."""
    cfg, store, rt = exp.cfg, exp.store, exp.rt
    if rt.is_main:
        group = store.claim(group_id, "w2s-sweep", group_cfg)
        status = store.statuses(ids)
        todo = [i for i, rid in enumerate(ids) if status[rid] != "done"]
    todo = rt.broadcast(todo if rt.is_main else None)
    n_new = 0
    try:
        if todo:
            exp.prepare_features(sorted({grid[i].seed for i in todo}))
        for i in todo:
            cell, rid = grid[i], ids[i]
            # a cell another live process holds is waited for (and taken over if it dies), never redone
            go = store.wait_claim(rid, "w2s", cell_config(cfg, cell), group_id).claimed if rt.is_main else None
            if not rt.broadcast(go):
                continue
            try:
                metrics, preds, compute = exp.run_cell(cell)
            except BaseException as e:
                if rt.is_main:
                    store.fail(rid, f"{type(e).__name__}: {e}")
                raise
            if rt.is_main:
                n_new += record_result(store, rid, metrics, preds, compute)["status"] == "done"
        if rt.is_main:
            records = [store.get(rid) or {"id": rid, "status": "missing"} for rid in ids]
            res = W2SResult(cfg, records, group_id, store, time.perf_counter() - t0)
            _record_group(exp, group_id, group_cfg, res, ids, n_new)
    except BaseException as e:
        if rt.is_main and group.claimed:
            store.fail(group_id, f"{type(e).__name__}: {e}")
        raise
    records, rows, wall_s = rt.broadcast((res.records, res.rows, res.wall_s) if rt.is_main else None)
    return res if rt.is_main else W2SResult(cfg, records, group_id, store, wall_s, rows=rows)


def _run_cells(exp: Experiment, grid: list[Cell], ids: list[str], group_id: str) -> int:
    """Bring every cell to 'done': claim what can be claimed and run it, wait for cells another live process holds
    (re-evaluating the to-do list each round, so a holder that dies is taken over). Each cell is attempted at most
    once here; one that still is not done afterwards raises. Returns how many cells this process computed."""
    cfg, store = exp.cfg, exp.store
    status = store.statuses(ids)
    pending = [(c, rid) for c, rid in zip(grid, ids) if status[rid] != "done"]
    if not pending:
        return 0
    exp.prepare_features(sorted({c.seed for c, _ in pending}))
    n_new, last_said, attempted = 0, 0.0, set()
    bar = tqdm(total=len(pending), desc="w2s runs", disable=not cfg.progress or len(pending) < 2)
    try:
        while pending:
            status = store.statuses([rid for _, rid in pending])
            free = [(c, rid) for c, rid in pending if status[rid] not in ("done", "running") and rid not in attempted]
            if cfg.executor == "ray" and free:
                ran = _run_ray(exp, [c for c, _ in free], group_id)
                attempted.update(ran)
                n_new += sum(s == "done" for s in store.statuses(ran).values())
            else:
                for c, rid in free:
                    r = run_and_record(exp, c, group_id)
                    if not r["cached"]:  # claimed and computed here (else done or claimed by another process first)
                        attempted.add(rid)
                        n_new += r["status"] == "done"
            status = store.statuses([rid for _, rid in pending])
            bar.update(sum(s == "done" for s in status.values()))
            pending = [(c, rid) for c, rid in pending if status[rid] != "done"]
            stuck = [rid for _, rid in pending if rid in attempted and (status[rid] != "running" or store.holds(rid))]
            if stuck:  # computed (or claimed) here and still not done: do not loop on it, say so
                for rid in stuck:
                    store.fail(rid, "computed but not recorded as done")  # writes only a row still ours
                raise SuperalignError(f"{len(stuck)} w2s run(s) did not end done: "
                                      + ", ".join(f"{rid} ({status[rid]})" for rid in stuck[:5]),
                                      "rerun the same command to redo them; `superalign runs show <id>` has the error")
            if pending and not free:  # everything left is held by other live processes: wait, then look again
                if time.monotonic() - last_said > 60:
                    held = [rid for _, rid in pending]
                    holders = sorted({_holder(store.get(rid)) for rid in held})
                    tqdm.write(f"superalign: waiting for {len(held)} run(s) held by {', '.join(holders)} "
                               f"({', '.join(held[:3])}{', …' if len(held) > 3 else ''}); "
                               "they are not redone here, and taken over if their process dies", file=sys.stderr)
                    last_said = time.monotonic()
                time.sleep(store_mod.WAIT_POLL_S)
    finally:
        bar.close()
    return n_new


def _holder(r: dict | None) -> str:
    return f"pid {r['pid']} on {r['host']}" if r and r.get("pid") is not None else "another process"


def run(cfg: W2SConfig | None = None, **kwargs) -> W2SResult:
    """One weak → strong pair (any number of losses and seeds)."""
    cfg = cfg or W2SConfig(**kwargs)
    if len(cfg.weak) != 1 or len(cfg.strong) != 1:
        raise SuperalignError("w2s run takes one --weak and one --strong", "use `superalign w2s sweep` for a grid")
    return sweep(cfg)


def _run_ray(exp: Experiment, free: list[Cell], group_id: str) -> list[str]:
    """One Ray task per seed (its cells share the weak, bootstrap and ceiling stages); the driver claims the cells
    it sends and records their results, so only the driver writes the database. Returns the run ids it claimed."""
    try:
        import ray
    except ImportError:
        raise SuperalignError("--executor ray needs Ray", "pip install 'superalign[ray]'") from None
    cfg, store = exp.cfg, exp.store
    confs = {c: cell_config(cfg, c) for c in free}  # once per cell: it stats the task's input files
    ids = {c: run_id("w2s", conf) for c, conf in confs.items()}
    todo = [c for c in free if store.claim(ids[c], "w2s", confs[c], group_id).claimed]
    if not todo:
        return []
    try:
        if not ray.is_initialized():
            ray.init(address=cfg.address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        by_seed: dict[int, list[Cell]] = defaultdict(list)
        for c in todo:
            by_seed[c.seed].append(c)
        cfg_d = {**dataclasses.asdict(cfg), "progress": False, "executor": "local",
                 "home": str(store.home.resolve())}
        remote = ray.remote(_ray_cells)
        pending = [remote.remote(cfg_d, [dataclasses.asdict(c) for c in cs]) for cs in by_seed.values()]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for f in done:
                for cell_d, (metrics, preds, compute) in ray.get(f):
                    record_result(store, ids[Cell(**cell_d)], metrics, preds, compute)
    except BaseException as e:
        for c in todo:  # fail writes nothing for the cells already recorded
            store.fail(ids[c], f"{type(e).__name__}: {e}")
        raise
    return [ids[c] for c in todo]


def _ray_cells(cfg_d: dict, cell_ds: list[dict]) -> list:
    from ..runs.store import RunStore as _Store

    cfg = W2SConfig(**cfg_d)
    exp = Experiment(cfg, _Store(cfg.home))
    return [(cd, exp.run_cell(Cell(**cd))) for cd in cell_ds]
