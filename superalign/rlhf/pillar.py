"""The RLHF pillar's declaration: `superalign rlhf sft|rm|ppo|dpo|bon|overopt`, its run kinds and report section."""

from __future__ import annotations

from ..pillars import Job, Pillar, RunKind, register_pillar

_JOBS = "superalign.rlhf.jobs"

PILLAR = register_pillar(Pillar(
    name="rlhf",
    title="RLHF",
    help="RLHF: SFT, reward models, PPO, DPO, best-of-n, over-optimization",
    jobs=(
        Job("sft", f"{_JOBS}:SFTJob", f"{_JOBS}:run_sft",
            help="supervised finetuning on prompt/completion demonstrations"),
        Job("rm", f"{_JOBS}:RMJob", f"{_JOBS}:run_rm",
            help="reward model from comparisons (Bradley–Terry, K-wise, reward at EOS, bias normalization)"),
        Job("ppo", f"{_JOBS}:PPOJob", f"{_JOBS}:run_ppo",
            help="PPO against a reward model with a per-token KL penalty (InstructGPT)"),
        Job("grpo", "superalign.rlhf.critic_free_jobs:GRPOJob", "superalign.rlhf.critic_free_jobs:run_grpo",
            help="GRPO / Dr. GRPO: group-normalised advantages, clipped ratio, k3 KL loss term (no critic)"),
        Job("rloo", "superalign.rlhf.critic_free_jobs:RLOOJob", "superalign.rlhf.critic_free_jobs:run_rloo",
            help="RLOO: leave-one-out baseline, sequence-level REINFORCE with the KL in the reward (no critic)"),
        Job("dpo", f"{_JOBS}:DPOJob", f"{_JOBS}:run_dpo", help="direct preference optimization (sigmoid loss)"),
        Job("online-dpo", f"{_JOBS}:OnlineDPOJob", f"{_JOBS}:run_online_dpo",
            help="online DPO/IPO: pairs sampled from the current policy, ranked by a reward model (Guo et al. 2024)"),
        Job("bon", f"{_JOBS}:BoNJob", f"{_JOBS}:run_bon", help="best-of-n sampling against a reward model"),
        Job("overopt", "superalign.rlhf.overopt:OveroptJob", "superalign.rlhf.overopt:run_overopt",
            help="gold vs proxy reward against sqrt(KL) for best-of-n, PPO, GRPO, RLOO, DPO and IPO at equal sample "
                 "budgets (Gao et al. 2022)"),
    ),
    kinds=(
        RunKind("rlhf-sft", ("policy", "data", "epochs", "lr", "seed"), ("loss_first", "loss_last", "tokens_per_s")),
        RunKind("rlhf-rm", ("base", "data", "k", "label_beta", "epochs", "lr", "seed"),
                ("eval_acc", "eval_gold_agreement", "loss_last", "tokens_per_s")),
        RunKind("rlhf-ppo", ("policy", "reward", "kl_coef", "kl_estimator", "updates", "lr", "seed"),
                ("initial_gold", "final_gold", "initial_proxy", "final_proxy", "final_kl", "eos_rate")),
        RunKind("rlhf-grpo", ("policy", "reward", "loss_type", "group_size", "kl_coef", "updates", "lr", "seed"),
                ("initial_gold", "final_gold", "initial_proxy", "final_proxy", "final_kl", "eos_rate")),
        RunKind("rlhf-rloo", ("policy", "reward", "group_size", "kl_coef", "updates", "lr", "seed"),
                ("initial_gold", "final_gold", "initial_proxy", "final_proxy", "final_kl", "eos_rate")),
        RunKind("rlhf-dpo", ("policy", "data", "beta", "epochs", "lr", "seed"),
                ("loss_last", "accuracy_last", "initial_gold", "final_gold", "final_kl", "tokens_per_s")),
        RunKind("rlhf-online-dpo", ("policy", "reward", "loss", "beta", "updates", "lr", "seed"),
                ("initial_gold", "final_gold", "initial_proxy", "final_proxy", "final_kl", "accuracy_last")),
        RunKind("rlhf-bon", ("policy", "reward", "n", "n_prompts", "seed"),
                ("proxy_best", "gold_best", "gold_mean", "kl_bon")),
        RunKind("rlhf-overopt", ("policy", "reward", "methods", "n_max", "kl_coefs", "dpo_betas", "updates", "seed"),
                ("sft_gold", "bon_gold_max", "rl_gold_max", "best_gain_per_nat", "first_to_overoptimize")),
    ),
    section="superalign.rlhf.report:rlhf_section",
))
