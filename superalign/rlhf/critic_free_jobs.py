"""The jobs behind `superalign rlhf grpo|rloo`: critic-free RL against a reward model, recorded in the run store like
`superalign rlhf ppo` (same policy/reward/prompt options, the testbed's gold reward, evaluations every
``--eval-every`` updates, the trained policy saved as a plain model, LoRA-trained or not)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.lm import encode_prompts, load_lm
from ..models.lora import LoRAOptions, apply_lora, check_lora, lora_key, merge_lora
from ..runs.jobs import JobBase, _f, run_job
from ..validate import check_nonempty, document_cli_overrides
from .critic_free import GRPOConfig, RLOOConfig, train_grpo, train_rloo
from .jobs import (
    _frozen_dtype,
    _prompts,
    _runtime,
    _save_policy,
    check_models,
    resolve_policy,
    resolve_reward,
)
from .ppo import evaluate_policy
from .reward import load_reward_model
from .testbed import GoldReward, sample_prompts

GROUP_CLI_OVERRIDES = {
    "lr": (1e-5, 3e-5, "the CLI's default policy is the small testbed LM, which tolerates a larger step (as PPO's)"),
}
"""CLI defaults of ``superalign rlhf grpo`` and ``rloo`` that differ from :class:`GRPOConfig` / :class:`RLOOConfig`."""


def _check_policy_job(job) -> None:
    """The checks GRPO and RLOO jobs share with PPOJob, and the LoRA options'."""
    for name, example in (("policy", "testbed-sft"), ("reward", "testbed-rm"), ("prompts", "testbed"),
                          ("prompt_col", "prompt")):
        check_nonempty(name, getattr(job, name), example)
    check_lora(job)


@document_cli_overrides(GRPOConfig, GROUP_CLI_OVERRIDES)
@dataclass
class GRPOJob(GRPOConfig, LoRAOptions, JobBase):
    """GRPO (or Dr. GRPO, --loss-type dr_grpo) against a reward model with a k3 KL loss term to the reference."""

    policy: str = _f("testbed-sft", "initial policy: testbed-sft, smollm2, hf:<id|path> or a folder")
    ref: str | None = _f(None, "reference policy for the KL term (default: the initial policy)")
    reward: str = _f("testbed-rm", "reward model folder (or testbed-rm)")
    prompts: str = _f("testbed", "prompts: testbed or a file with a prompt column")
    prompt_col: str = _f("prompt", "prompt column of a prompt file")
    lr: float = _f(3e-5, "AdamW learning rate of the policy")

    def __post_init__(self):
        super().__post_init__()
        _check_policy_job(self)

    def key(self) -> dict:
        return lora_key(super().key())


@document_cli_overrides(RLOOConfig, GROUP_CLI_OVERRIDES)
@dataclass
class RLOOJob(RLOOConfig, LoRAOptions, JobBase):
    """RLOO against a reward model: k samples per prompt, leave-one-out baseline, the KL in the reward."""

    policy: str = _f("testbed-sft", "initial policy: testbed-sft, smollm2, hf:<id|path> or a folder")
    ref: str | None = _f(None, "reference policy for the KL penalty (default: the initial policy)")
    reward: str = _f("testbed-rm", "reward model folder (or testbed-rm)")
    prompts: str = _f("testbed", "prompts: testbed or a file with a prompt column")
    prompt_col: str = _f("prompt", "prompt column of a prompt file")
    lr: float = _f(3e-5, "AdamW learning rate of the policy")

    def __post_init__(self):
        super().__post_init__()
        _check_policy_job(self)

    def key(self) -> dict:
        return lora_key(super().key())


def run_grpo(job: GRPOJob, eval_prompts: list[str] | None = None) -> dict:
    """Train (or return the stored run of) a GRPO job: metrics as :func:`~superalign.rlhf.jobs.run_ppo`'s."""
    return _run_group_rl("rlhf-grpo", job, train_grpo, eval_prompts)


def run_rloo(job: RLOOJob, eval_prompts: list[str] | None = None) -> dict:
    """Train (or return the stored run of) an RLOO job: metrics as :func:`~superalign.rlhf.jobs.run_ppo`'s."""
    return _run_group_rl("rlhf-rloo", job, train_rloo, eval_prompts)


def _run_group_rl(kind: str, job: GRPOJob | RLOOJob, train, eval_prompts: list[str] | None) -> dict:
    # inputs are loaded and checked before anything is written
    prompts = _prompts(job.prompts, job.prompt_col, None, job.seed)
    check_models(job.policy, job.ref, job.reward, trust_remote_code=job.trust_remote_code)

    def body(store, out):
        torch.manual_seed(job.seed)
        rt = _runtime(job)
        frozen = _frozen_dtype(rt)
        pol_name = resolve_policy(job.policy, job.home, job.progress)
        tok, policy = load_lm(pol_name, job.home, job.trust_remote_code, device=rt.device)
        policy = apply_lora(policy, job.lora_rank, job.lora_alpha)  # the policy itself for rank 0
        _, ref = load_lm(resolve_policy(job.ref, job.home, job.progress) if job.ref else pol_name, job.home,
                         job.trust_remote_code, device=rt.device, dtype=frozen)
        rm_path = resolve_reward(job.reward, job.home, job.progress)
        _, rm = load_reward_model(rm_path, job.home, job.trust_remote_code, device=rt.device, dtype=frozen)
        encode_prompts(tok, prompts, job.max_prompt_len)  # fail fast on over-long prompts
        testbed = job.prompts == "testbed"
        gold = (lambda p, c, e: GoldReward().batch(p, c, e)) if testbed else None
        evp = eval_prompts or (sample_prompts(128, job.seed + 3) if testbed else prompts[:64])

        def evaluate(m):  # every process evaluates the same prompts with the same seed: identical numbers
            with rt.autocast():
                return evaluate_policy(m, ref, rm, tok, evp, job.response_len, job.temperature, gold,
                                       seed=job.seed + 7)

        res = train(policy, ref, rm, tok, prompts, job, gold=gold, eval_hook=lambda u, m: evaluate(m),
                    progress=job.progress, rt=rt)
        policy = merge_lora(policy)  # a plain model from here on: saved and loaded like a fully trained one
        _save_policy(rt, policy, tok, out / "model", {"kind": kind, "config": job.key()})
        final, initial = evaluate(policy), evaluate(ref)
        last = res.history[-1]
        metrics = {"final_" + k: v for k, v in final.items()} | {"initial_" + k: v for k, v in initial.items()}
        metrics |= {"kl": last["objective/kl"], "score": last["objective/scores"], "eos_rate": last["eos_rate"],
                    "wall_s": res.wall_s, "episodes": last["episodes"]}
        metrics |= {"history": res.history, "samples": res.samples, "evals": res.evals}
        return metrics, {"model": str(out / "model"), "reward": rm_path}
    return run_job(kind, job, body)
