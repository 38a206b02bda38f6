"""The jobs behind `superalign rlhf grpo|rloo`: critic-free RL against a reward model, recorded in the run store like
`superalign rlhf ppo` (same policy/reward/prompt options, the testbed's gold reward, evaluations every
``--eval-every`` updates, the trained policy saved as a plain model, LoRA-trained or not)."""

from __future__ import annotations

from dataclasses import dataclass

from ..runs.jobs import JobBase, _f
from ..validate import document_cli_overrides
from .critic_free import GRPOConfig, RLOOConfig, train_grpo, train_rloo
from .jobs import PolicyRLOptions, check_policy_rl, run_policy_rl

GROUP_CLI_OVERRIDES = {
    "lr": (1e-5, 3e-5, "the CLI's default policy is the small testbed LM, which tolerates a larger step (as PPO's)"),
}
"""CLI defaults of ``superalign rlhf grpo`` and ``rloo`` that differ from :class:`GRPOConfig` / :class:`RLOOConfig`."""


@document_cli_overrides(GRPOConfig, GROUP_CLI_OVERRIDES)
@dataclass
class GRPOJob(GRPOConfig, PolicyRLOptions, JobBase):
    """GRPO (or Dr. GRPO, --loss-type dr_grpo) against a reward model with a k3 KL loss term to the reference."""

    lr: float = _f(3e-5, "AdamW learning rate of the policy")

    def __post_init__(self):
        super().__post_init__()
        check_policy_rl(self)


@document_cli_overrides(RLOOConfig, GROUP_CLI_OVERRIDES)
@dataclass
class RLOOJob(RLOOConfig, PolicyRLOptions, JobBase):
    """RLOO against a reward model: k samples per prompt, leave-one-out baseline, the KL in the reward."""

    lr: float = _f(3e-5, "AdamW learning rate of the policy")

    def __post_init__(self):
        super().__post_init__()
        check_policy_rl(self)


def run_grpo(job: GRPOJob, eval_prompts: list[str] | None = None) -> dict:
    """Train (or return the stored run of) a GRPO job: metrics as :func:`~superalign.rlhf.jobs.run_ppo`'s."""
    return run_policy_rl("rlhf-grpo", job, train_grpo, eval_prompts)


def run_rloo(job: RLOOJob, eval_prompts: list[str] | None = None) -> dict:
    """Train (or return the stored run of) an RLOO job: metrics as :func:`~superalign.rlhf.jobs.run_ppo`'s."""
    return run_policy_rl("rlhf-rloo", job, train_rloo, eval_prompts)
