"""Run a grid of weak-to-strong cells locally or on Ray, skipping cells already done (resume)."""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import Any

from tqdm.auto import tqdm

from ..errors import SuperalignError
from ..runs.cache import content_hash
from ..runs.store import RunStore
from .config import W2SConfig
from .pipeline import Cell, Experiment, cell_config, cell_run_id, cells, record_result, run_and_record
from .pgr import PGREstimate
from .summary import format_table, summarize


class W2SResult:
    """Results of a grid: ``records`` (one stored run per cell), ``rows`` (the seed-pooled PGR table).

    ``pgr`` maps loss → :class:`PGREstimate` (accuracy) when the grid has one task/weak/strong pair, and
    (weak, strong, loss) → estimate otherwise; ``pgr_auroc`` likewise for AUROC."""

    def __init__(self, cfg: W2SConfig, records: list[dict], group_id: str, store: RunStore, wall_s: float = 0.0):
        self.cfg, self.records, self.group_id, self.store, self.wall_s = cfg, records, group_id, store, wall_s
        self.rows = summarize(records, cfg.n_boot, cfg.min_gap)

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
    """Run every (weak, strong, loss, seed) cell of ``cfg`` that is not already done in the store."""
    cfg = cfg or W2SConfig(**kwargs)
    t0 = time.perf_counter()
    exp = Experiment(cfg)  # loads and validates the task and models first
    store = exp.store
    grid = cells(cfg)
    group_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("home", "progress", "executor", "address")}
    group_id = f"w2s-sweep-{content_hash(group_cfg)}"
    ids = [cell_run_id(cfg, c) for c in grid]
    store.start(group_id, "w2s-sweep", group_cfg)
    todo = [c for c, rid in zip(grid, ids) if not store.is_done(rid)]
    try:
        if todo:
            exp.prepare_features(sorted({c.seed for c in todo}))
        if cfg.executor == "ray" and todo:
            _run_ray(exp, todo, group_id)
        else:
            for c in tqdm(todo, desc="w2s runs", disable=not cfg.progress or len(todo) < 2):
                run_and_record(exp, c, group_id)
    except BaseException as e:
        store.fail(group_id, f"{type(e).__name__}: {e}")
        raise
    records = [store.get(rid) for rid in ids]
    res = W2SResult(cfg, records, group_id, store, time.perf_counter() - t0)
    enc = dataclasses.asdict(exp.encode_stats)
    store.finish(group_id, {"rows": res.rows, "n_runs": len(ids), "n_new": len(todo)}, {"runs": ids},
                 {"encode": enc, "wall_s": res.wall_s,
                  "flops_total": enc.get("flops", 0.0) + sum(r["compute"].get("flops_total", 0.0) for r in records)})
    return res


def run(cfg: W2SConfig | None = None, **kwargs) -> W2SResult:
    """One weak → strong pair (any number of losses and seeds)."""
    cfg = cfg or W2SConfig(**kwargs)
    if len(cfg.weak) != 1 or len(cfg.strong) != 1:
        raise SuperalignError("w2s run takes one --weak and one --strong", "use `superalign w2s sweep` for a grid")
    return sweep(cfg)


def _run_ray(exp: Experiment, todo: list[Cell], group_id: str) -> None:
    """One Ray task per seed (its cells share the weak, bootstrap and ceiling stages); the driver records results,
    so only the driver writes the database."""
    try:
        import ray
    except ImportError:
        raise SuperalignError("--executor ray needs Ray", "pip install 'superalign[ray]'") from None
    cfg = exp.cfg
    if not ray.is_initialized():
        ray.init(address=cfg.address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    by_seed: dict[int, list[Cell]] = defaultdict(list)
    for c in todo:
        by_seed[c.seed].append(c)
    cfg_d = {**dataclasses.asdict(cfg), "progress": False, "executor": "local",
             "home": str(exp.store.home.resolve())}
    remote = ray.remote(_ray_cells)
    futures = {remote.remote(cfg_d, [dataclasses.asdict(c) for c in cs]): cs for cs in by_seed.values()}
    for c in todo:
        exp.store.start(cell_run_id(cfg, c), "w2s", cell_config(cfg, c), group_id)
    pending = list(futures)
    bar = tqdm(total=len(todo), desc="w2s runs (ray)", disable=not cfg.progress)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for f in done:
            for cell_d, (metrics, preds, compute) in ray.get(f):
                record_result(exp.store, cell_run_id(cfg, Cell(**cell_d)), metrics, preds, compute)
                bar.update(1)
    bar.close()


def _ray_cells(cfg_d: dict, cell_ds: list[dict]) -> list:
    from ..runs.store import RunStore as _Store

    cfg = W2SConfig(**cfg_d)
    exp = Experiment(cfg, _Store(cfg.home))
    return [(cd, exp.run_cell(Cell(**cd))) for cd in cell_ds]
