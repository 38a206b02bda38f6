"""The interpretability pillar's declaration: `superalign interp cache|sae|explain|score`, its run kinds and report
section."""

from __future__ import annotations

from ..pillars import Job, Pillar, RunKind, register_pillar

PILLAR = register_pillar(Pillar(
    name="interp",
    title="Interpretability",
    help="automated interpretability: activation caches, sparse autoencoders, explain → simulate → score",
    jobs=(
        Job("cache", "superalign.interp.jobs:CacheJob", "superalign.interp.jobs:run_cache",
            help="cache a model's activations at a hook point over a text corpus"),
        Job("sae", "superalign.interp.jobs:SAEJob", "superalign.interp.jobs:run_sae",
            help="train a TopK or ReLU sparse autoencoder on cached activations"),
        Job("explain", "superalign.interp.autointerp:ExplainJob", "superalign.interp.autointerp:run_explain",
            help="explain neurons or SAE latents from their top-activating contexts with an LLM"),
        Job("score", "superalign.interp.autointerp:ScoreJob", "superalign.interp.autointerp:run_score",
            help="score explanations by simulating activations (and detection/fuzzing)"),
    ),
    kinds=(
        RunKind("interp-cache", ("model", "texts", "hook", "max_length"), ("tokens", "texts", "d")),
        RunKind("interp-sae", ("cache", "architecture", "n_latents", "k", "epochs", "seed"),
                ("fvu", "l0", "dead_fraction_eval", "ce_loss_recovered", "tokens_per_s")),
        RunKind("interp-explain", ("sae", "explainer", "units", "window", "seed"),
                ("n_units", "explainer", "mean_density")),
        RunKind("interp-score", ("explanations", "simulator", "llm", "scorers"),
                ("n_units", "ev_correlation_mean", "ev_correlation_median", "rsquared_mean", "detection_bacc_mean")),
    ),
    section="superalign.interp.report:interp_section",
))
