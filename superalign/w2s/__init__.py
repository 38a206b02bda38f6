"""Weak-to-strong generalization (Burns et al. 2023): weak supervisor → weak labels → strong student.

    from superalign import w2s
    res = w2s.run(task="vader", weak="minilm-l1", strong="minilm-l6", loss=["xent", "aux_conf"], seed=[0, 1, 2])
    print(res.table()); res.pgr["aux_conf"].value
"""

from . import reward_tasks  # noqa: F401  (registers the testbed-pairs task)
from .config import W2SConfig
from .pgr import PGREstimate, agreement, bootstrap_pgr, pgr
from .sweep import W2SResult, run, sweep

__all__ = ["W2SConfig", "W2SResult", "PGREstimate", "run", "sweep", "pgr", "bootstrap_pgr", "agreement"]
