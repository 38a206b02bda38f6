"""Critic-free RLHF: GRPO (Shao et al. 2024), its Dr. GRPO variant (Liu et al. 2025) and RLOO (Ahmadian et al. 2024).

Both sample a *group* of G responses per prompt and replace PPO's learned value baseline by the other samples of the
same group; no value network is trained. One update of :func:`train_grpo` / :func:`train_rloo`:

1. draw ``batch_size / group_size`` prompts, repeat each ``group_size`` times and sample with PPO's :func:`rollout`
   (same sampler, same temperature for sampling and log-probs);
2. score with PPO's :func:`score_rollout`: the reward model at EOS, minus ``eos_penalty`` where no EOS came, then
   standardised with the initial policy's score statistics (``reward_norm``, as PPO) so β means the same per unit
   of score in every method;
3. advantages within each group —
   GRPO: A_i = (r_i − mean_group) / (std_group + ε), one advantage for every token of response i (Dr. GRPO: no std);
   RLOO: r_i = score_i − β·Σ_t (log π − log π_ref) (the KL in the reward, as PPO), A_i = r_i − mean_{j≠i} r_j;
4. optimise — GRPO: the clipped ratio objective per token plus β times the per-token k3 KL to the reference, as a
   loss term; averaged per sequence (mean over its tokens, "grpo") or over a constant number of tokens (the maximum
   response length, "dr_grpo"), then over sequences. RLOO: REINFORCE on the sequence log-probability,
   −mean_i A_i·Σ_t log π(y_it), one gradient step per batch by default.

Data parallelism: every process draws the same prompt batches (same seed) and holds whole groups (groups are sharded,
not rows), so the group statistics are exact on each process; a row's sampling noise is the one it gets in one
process, and every loss is a global mean over sequences (N processes compute what one does with the same batch, up
to float rounding).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SuperalignError
from ..models.lm import encode_prompts, token_logprobs
from ..runs.ledger import count_training
from ..train.distributed import Runtime
from ..validate import (
    check_at_most,
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
    check_seed,
    help_field,
)
from .ppo import PPOResult, _ended, _logprobs, check_context, kl_k1, kl_k3, rollout, score_rollout, score_stats

LOSS_TYPES = ("grpo", "dr_grpo")

# ----------------------------------------------------------------------------- formulas (each has a golden test)


def group_advantages(scores: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's outcome advantages for scores [P, G] (P prompts, G samples each): (r − mean_group) / (std_group + ε),
    or r − mean_group without the std division (Dr. GRPO).

    The std is the unbiased (Bessel-corrected, ``torch.std``) one, as in TRL's and verl's GRPO: DeepSeekMath does
    not say which, and matching the reference implementations keeps advantages (and so learning rates) comparable
    with theirs; for G samples the two differ by the constant factor sqrt(G/(G−1)). ``eps`` (TRL's 1e-4) keeps a
    group whose samples all scored the same at advantage 0 instead of 0/0."""
    centred = scores - scores.mean(1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (scores.std(1, keepdim=True) + eps)


def rloo_advantages(scores: torch.Tensor) -> torch.Tensor:
    """RLOO's leave-one-out advantages for rewards [P, K]: r_i − mean_{j≠i} r_j = K/(K−1)·(r_i − mean) (for K = 2:
    r_i − r_j). Each baseline excludes the sample it judges, so the policy gradient stays unbiased."""
    K = scores.shape[1]
    if K < 2:
        raise SuperalignError(f"a leave-one-out baseline needs at least 2 samples per prompt, got {K}",
                              "pass --group-size 2 or more")
    return (scores - scores.mean(1, keepdim=True)) * (K / (K - 1))


def rloo_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                 beta: float) -> torch.Tensor:
    """RLOO's sequence reward with the KL in it: score − β·Σ_t (log π − log π_ref) (the k1 estimate of the sequence
    KL of this sample, as in PPO's reward)."""
    return scores - beta * (kl_k1(logp, ref_logp) * mask).sum(1)


def sequence_means(x: torch.Tensor, mask: torch.Tensor, loss_type: str = "grpo",
                   max_len: int | None = None) -> torch.Tensor:
    """Per-sequence reduction of per-token values [B, T] → [B]: the mean over the sequence's own tokens ("grpo"), or
    the sum over its tokens divided by the constant ``max_len`` ("dr_grpo", Liu et al. 2025).

    With "grpo" a token of a short response weighs 1/|y| and one of a long response less: for a positive advantage
    short responses are pushed up harder per token, and for a negative one long responses are pushed down less per
    token — a bias towards long wrong answers. Dividing every sequence by the same constant removes it (every token
    weighs 1/max_len)."""
    total = (x * mask).sum(1)
    if loss_type == "grpo":
        return total / mask.sum(1).clamp(min=1)
    if loss_type == "dr_grpo":
        if not max_len:
            raise SuperalignError("the dr_grpo normalisation needs the maximum response length", "pass max_len")
        return total / max_len
    raise SuperalignError(f"unknown GRPO loss type {loss_type!r}", f"pass one of {', '.join(LOSS_TYPES)}")


def _mean(per_seq: torch.Tensor) -> torch.Tensor:
    return per_seq.mean()


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, adv: torch.Tensor,
              mask: torch.Tensor, clip: float, kl_coef: float, loss_type: str = "grpo", max_len: int | None = None,
              seq_mean: Callable[[torch.Tensor], torch.Tensor] = _mean) -> tuple[torch.Tensor, dict]:
    """GRPO's loss for log-probs [B, T] under the policy being trained (``logp``), the sampling policy
    (``old_logp``) and the reference (``ref_logp``), sequence advantages ``adv`` [B] and the response mask.

    Per token: max(−A·ρ, −A·clip(ρ, 1 ± ε)) + β·k3, with ρ = π/π_old and k3 = π_ref/π − 1 − log(π_ref/π) (Schulman's
    non-negative unbiased KL estimator, whose gradient is that of KL(π‖π_ref) on-policy); reduced per sequence by
    :func:`sequence_means` and then by ``seq_mean`` over sequences (data-parallel trainers pass this process's share
    of the global mean). Returns (loss, parts): ``policy`` and ``kl`` (the two terms, kl before β), and ``clipfrac``,
    ``approx_kl`` (½·(log ρ)²) as per-sequence token means (fractions whatever the loss type)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    a = adv[:, None]
    l1, l2 = -a * ratio, -a * torch.clamp(ratio, 1 - clip, 1 + clip)
    pg = seq_mean(sequence_means(torch.max(l1, l2), mask, loss_type, max_len))
    kl = seq_mean(sequence_means(kl_k3(logp, ref_logp), mask, loss_type, max_len))
    parts = {"policy": pg, "kl": kl,
             "clipfrac": seq_mean(sequence_means((l2 > l1).float(), mask)),
             "approx_kl": seq_mean(sequence_means(0.5 * log_ratio ** 2, mask))}
    return pg + kl_coef * kl, parts


def rloo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
              clip: float | None = None,
              seq_mean: Callable[[torch.Tensor], torch.Tensor] = _mean) -> tuple[torch.Tensor, dict]:
    """RLOO's sequence-level REINFORCE loss: −mean_i A_i·Σ_t log π(y_it) (``clip`` None, the default: one on-policy
    gradient step per batch). With ``clip`` ε (to reuse a batch for several epochs): PPO's clipped objective on the
    sequence ratio ρ_i = π(y_i)/π_old(y_i), mean_i max(−A_i·ρ_i, −A_i·clip(ρ_i, 1 ± ε)), whose gradient on-policy
    (ρ = 1) is the same. Returns (loss, parts ``policy``, ``clipfrac`` (share of clipped sequences), ``approx_kl``
    (per-sequence token mean of ½·(log π − log π_old)²))."""
    seq_logp = (logp * mask).sum(1)
    log_ratio = logp - old_logp
    if clip is None:
        per_seq, clipped = -adv * seq_logp, torch.zeros_like(adv)
    else:
        ratio = torch.exp(seq_logp - (old_logp * mask).sum(1))
        l1, l2 = -adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
        per_seq, clipped = torch.max(l1, l2), (l2 > l1).float()
    loss = seq_mean(per_seq)
    parts = {"policy": loss, "clipfrac": seq_mean(clipped),
             "approx_kl": seq_mean(sequence_means(0.5 * log_ratio ** 2, mask))}
    return loss, parts


# ----------------------------------------------------------------------------- configs


@dataclass
class GroupRLConfig:
    """The knobs GRPO and RLOO share (names as in :class:`~superalign.rlhf.ppo.PPOConfig` where they mean the
    same). ``batch_size`` counts samples, so a run with the same ``updates × batch_size`` as a PPO run sees as many
    samples."""

    updates: int = help_field(100, "rollout → optimise iterations")
    batch_size: int = help_field(64, "samples per update = prompts per update × group size (the same sample budget as "
                                     "PPO's --batch-size)")
    group_size: int = help_field(4, "samples per prompt (GRPO's G, RLOO's k; ≥ 2); must divide --batch-size")
    minibatch_size: int | None = help_field(None, "samples per optimiser step (none: the whole batch, one step per "
                                                  "epoch)")
    epochs: int = help_field(1, "passes over each rollout batch")
    lr: float = help_field(1e-5, "AdamW learning rate of the policy")
    response_len: int = help_field(24, "maximum new tokens per response; responses without EOS by then are truncated "
                                       "and penalised")
    temperature: float = help_field(1.0, "sampling temperature, used for the log-probs too")
    kl_coef: float = help_field(0.05, "β of the KL to the reference policy")
    eos_penalty: float = help_field(1.0, "subtracted from the score of responses that never emit EOS (0 disables)")
    reward_norm: bool = help_field(True, "standardise scores with the mean and std of the initial policy's samples "
                                         "(before training), as PPO, so β weighs the same score units in every method")
    max_grad_norm: float = help_field(1.0, "gradient clipping")
    eval_every: int = help_field(0, "call the evaluation hook every this many updates (0: never)")
    sample_every: int = help_field(10, "record a table of samples every this many updates")
    max_prompt_len: int = help_field(256, "prompts longer than this many tokens are an error")
    seed: int = help_field(0, "seed for prompt order and sampling")

    @property
    def steps_batch(self) -> int:
        """Samples per optimiser step."""
        return self.minibatch_size or self.batch_size

    def __post_init__(self):
        check_int("updates", self.updates, example=100)
        check_int("group_size", self.group_size, minimum=2, example=4)
        check_int("batch_size", self.batch_size, minimum=self.group_size, example=64)
        if self.batch_size % self.group_size:
            raise SuperalignError(f"--batch-size {self.batch_size} (samples per update) is not a multiple of "
                                  f"--group-size {self.group_size} (samples per prompt)",
                                  "pick sizes that divide, e.g. --batch-size 64 --group-size 4")
        check_int("minibatch_size", self.minibatch_size, example=16, none_ok=True)
        if self.minibatch_size is not None:
            check_at_most("minibatch_size", self.minibatch_size, "batch_size", self.batch_size)
            if self.batch_size % self.minibatch_size:
                raise SuperalignError(f"--batch-size {self.batch_size} is not a multiple of --minibatch-size "
                                      f"{self.minibatch_size}", "pick sizes that divide, e.g. 64 and 16")
        check_int("epochs", self.epochs, example=1)
        check_positive("lr", self.lr, example=1e-5)
        check_int("response_len", self.response_len, example=24)
        check_positive("temperature", self.temperature, example=1.0)
        check_nonnegative("kl_coef", self.kl_coef, example=0.05)
        check_nonnegative("eos_penalty", self.eos_penalty, example=1.0)
        check_positive("max_grad_norm", self.max_grad_norm, example=1.0)
        check_int("eval_every", self.eval_every, minimum=0, example=0)
        check_int("sample_every", self.sample_every, minimum=0, example=10)
        check_int("max_prompt_len", self.max_prompt_len, example=256)
        check_seed("seed", self.seed)


@dataclass
class GRPOConfig(GroupRLConfig):
    """GRPO (Shao et al. 2024, DeepSeekMath) and Dr. GRPO (Liu et al. 2025). Defaults: μ = 1 epoch over each batch
    (DeepSeekMath), β = 0.04 (DeepSeekMath), ε = 0.2, in minibatches of 16 samples (as PPO's) so that a batch makes
    as many optimiser steps per epoch as PPO's; the clip acts from the second minibatch on, once the policy has moved
    away from the one that sampled."""

    minibatch_size: int | None = help_field(16, "samples per optimiser step (none: the whole batch, one step per "
                                                "epoch)")
    kl_coef: float = help_field(0.04, "β of the per-token k3 KL loss term (DeepSeekMath 0.04; 0 drops the term)")
    clip: float = help_field(0.2, "policy ratio clip ε")
    loss_type: str = help_field("grpo", "grpo: std-scaled group advantages, each sequence's loss averaged over its own "
                                        "tokens; dr_grpo (Liu et al. 2025): no std scaling, every sequence's loss "
                                        "summed and divided by --response-len (no length or difficulty bias)",
                                choices=LOSS_TYPES)

    def __post_init__(self):
        super().__post_init__()
        check_positive("clip", self.clip, example=0.2)
        check_choice("loss_type", self.loss_type, LOSS_TYPES)


@dataclass
class RLOOConfig(GroupRLConfig):
    """RLOO (Ahmadian et al. 2024): k samples per prompt, leave-one-out baseline, REINFORCE on whole sequences with
    the KL in the reward. Defaults: one gradient step per batch (the whole batch, one epoch, no clipping) as in the
    paper; β = 0.05 as PPO's, since the KL enters the reward the same way."""

    clip: float | None = help_field(None, "clip ε of the sequence ratio π/π_old (PPO-style; needed to reuse a batch "
                                          "for --epochs > 1); none: plain REINFORCE")

    def __post_init__(self):
        super().__post_init__()
        check_positive("clip", self.clip, example=0.2, none_ok=True)
        if self.epochs > 1 and self.clip is None:
            raise SuperalignError(f"--epochs {self.epochs} reuses each batch, which plain REINFORCE cannot do "
                                  "without bias", "pass --clip 0.2 (PPO-style ratio clipping) or --epochs 1")


# ----------------------------------------------------------------------------- the trainers


def train_grpo(policy, ref, rm, tok, prompts: list[str], cfg: GRPOConfig,
               gold: Callable[[list[str], list[str], list[bool]], np.ndarray] | None = None,
               eval_hook: Callable[[int, torch.nn.Module], dict] | None = None, progress: bool = True, rt=None,
               watch=None) -> PPOResult:
    """Optimise ``policy`` in place with GRPO (``cfg.loss_type`` "grpo") or Dr. GRPO ("dr_grpo") against ``rm``,
    with β·KL(π‖π_ref) as a loss term. Arguments as :func:`~superalign.rlhf.ppo.train_ppo` (no value model); the
    result's ``ema`` is None."""
    return _train("GRPO", policy, ref, rm, tok, prompts, cfg, gold, eval_hook, progress, rt, watch)


def train_rloo(policy, ref, rm, tok, prompts: list[str], cfg: RLOOConfig,
               gold: Callable[[list[str], list[str], list[bool]], np.ndarray] | None = None,
               eval_hook: Callable[[int, torch.nn.Module], dict] | None = None, progress: bool = True, rt=None,
               watch=None) -> PPOResult:
    """Optimise ``policy`` in place with RLOO against ``rm``, with β·KL(π‖π_ref) in the reward. Arguments as
    :func:`~superalign.rlhf.ppo.train_ppo` (no value model); the result's ``ema`` is None."""
    return _train("RLOO", policy, ref, rm, tok, prompts, cfg, gold, eval_hook, progress, rt, watch)


def _train(method: str, policy, ref, rm, tok, prompts: list[str], cfg: GroupRLConfig, gold, eval_hook, progress: bool,
           rt, watch) -> PPOResult:
    from tqdm.auto import tqdm

    rt = rt or Runtime.for_model(policy)
    W, B, G = rt.world_size, cfg.batch_size, cfg.group_size
    P = B // G  # prompts (groups) per update
    grpo = method == "GRPO"
    if not prompts:
        raise SuperalignError(f"{method} got no prompts", "pass a prompt file with at least one prompt")
    if P < W:
        raise SuperalignError(f"{P} prompts per update (--batch-size {B} / --group-size {G}) are fewer than the {W} "
                              "data-parallel processes, which each hold whole groups",
                              f"pass --batch-size {W * G} or more (a multiple of {W * G} balances the processes)")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt_ids = encode_prompts(tok, prompts, cfg.max_prompt_len)
    check_context(policy, prompt_ids, cfg.response_len)
    for m in (policy, ref, rm):
        m.eval()  # dropout off everywhere: rollout and training log-probs agree exactly
    for p in list(ref.parameters()) + list(rm.parameters()):
        p.requires_grad_(False)
    ref, rm = ref.to(rt.device), rm.to(rt.device)
    # only the trainable weights: with LoRA the frozen base has requires_grad False
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, eps=1e-5,
                            weight_decay=0.0)
    model, opt = rt.prepare(policy, opt)
    across = rt.max_across()

    def sample_rows(global_ids: list[list[int]], pos: np.ndarray, watch=None):
        """This process's rows ``pos`` of a global batch, each with the noise it gets in one process."""
        rows = None if W == 1 else (len(global_ids), pos)
        with rt.autocast():
            return rollout(rt.unwrap(model), tok, [global_ids[i] for i in pos], cfg, gen, rows=rows, across=across,
                           watch=watch)

    def global_mean(x: torch.Tensor, n_global: int) -> float:
        """Mean over the global batch of a per-row (or per-group) quantity."""
        return float(x.float().mean()) if W == 1 else rt.all_sum(x.float().sum()) / n_global

    # reward normalization before training, as PPO: statistics of the initial policy's samples (rows sharded)
    norm_mean, norm_std = 0.0, 1.0
    if cfg.reward_norm:
        idx = torch.randperm(len(prompt_ids), generator=gen)[:max(B, 64)].tolist()
        ro = sample_rows([prompt_ids[i] for i in idx], rt.shard(np.arange(len(idx))).idx)
        norm_mean, norm_std = score_stats(score_rollout(rm, ro) - cfg.eos_penalty * (~_ended(ro)).float(), len(idx), rt)

    history, samples, evals = [], [], []
    t0 = time.perf_counter()
    order: list[int] = []
    mb_size = cfg.steps_batch
    bar = tqdm(total=cfg.updates, desc=method, disable=not progress or not rt.is_main)
    for update in range(1, cfg.updates + 1):
        # ---- 1. rollout: P prompts × G samples, group-major rows; this process holds whole groups
        while len(order) < P:
            order += torch.randperm(len(prompt_ids), generator=gen).tolist()
        idx, order = order[:P], order[P:]
        my_groups = rt.shard(np.arange(P)).idx
        pos = (my_groups[:, None] * G + np.arange(G)[None]).reshape(-1)
        ro = sample_rows([prompt_ids[i] for i in idx for _ in range(G)], pos, watch)
        batch_prompts = [prompts[idx[p // G]] for p in pos]
        g = gold(batch_prompts, ro.texts, ro.ended) if gold is not None else None
        mask = ro.mask.float()
        ended = _ended(ro)
        with torch.no_grad(), rt.autocast():
            old_logp = _logprobs(rt.unwrap(model), ro, cfg.temperature, "policy")
            ref_logp = _logprobs(ref, ro, cfg.temperature, "reference")
            # ---- 2. score
            raw = score_rollout(rm, ro)
            bad = int((~torch.isfinite(raw)).sum())
            bad = bad if W == 1 else int(rt.all_sum(bad))  # every process stops together
            if bad:
                raise SuperalignError(f"the reward model returned NaN/inf for {bad} of {B} responses at update "
                                      f"{update}", "check the reward-model checkpoint (retrain it with a lower --lr)")
            scores = (raw - cfg.eos_penalty * (~ended).float() - norm_mean) / norm_std
            seq_kl = (kl_k1(old_logp, ref_logp) * mask).sum(1)
            # ---- 3. advantages within each (local, whole) group
            if grpo:
                adv = group_advantages(scores.float().view(-1, G), scale_by_std=cfg.loss_type == "grpo").reshape(-1)
            else:
                adv = rloo_advantages(rloo_rewards(scores.float(), old_logp, ref_logp, mask,
                                                   cfg.kl_coef).view(-1, G)).reshape(-1)
            group_std = scores.float().view(-1, G).std(1)

        # ---- 4. epochs over minibatches of samples (each process: its rows of the global minibatch)
        local = {int(p): i for i, p in enumerate(pos)}
        stats: dict[str, list[float]] = {k: [] for k in ("policy", "kl", "clipfrac", "approx_kl", "entropy")}
        for _ in range(cfg.epochs):
            perm = torch.randperm(B, generator=gen)
            for b in range(0, B, mb_size):
                mb = perm[b:b + mb_size]
                if W == 1:
                    seq_mean = _mean
                else:
                    mine = [local[int(p)] for p in mb if int(p) in local]
                    weight = 1.0 if mine else 0.0  # no rows here this time: a zero-weight row keeps DDP in step
                    mb = torch.tensor(mine or [0])
                    scale = weight * W / len(perm[b:b + mb_size])  # DDP averages over W: each holds its share

                    def seq_mean(x, scale=scale):
                        return x.sum() * scale
                mb = mb.to(mask.device)
                m = mask[mb]
                with rt.autocast():
                    logp, ent = token_logprobs(model, ro.query[mb], ro.query_mask[mb], ro.responses[mb], ro.mask[mb],
                                               cfg.temperature, return_entropy=True)
                    if grpo:
                        loss, parts = grpo_loss(logp, old_logp[mb], ref_logp[mb], adv[mb], m, cfg.clip, cfg.kl_coef,
                                                cfg.loss_type, cfg.response_len, seq_mean)
                    else:
                        loss, parts = rloo_loss(logp, old_logp[mb], adv[mb], m, cfg.clip, seq_mean)
                rt.backward(loss)
                rt.step(opt, cfg.max_grad_norm)
                count_training(policy, ro.query[mb].numel() + ro.responses[mb].numel(), "policy")
                named = [(k, parts[k]) for k in ("policy", "kl", "clipfrac", "approx_kl") if k in parts]
                named.append(("entropy", seq_mean((ent * m).sum(1) / m.sum(1).clamp(min=1))))
                if W == 1:
                    for k, x in named:
                        stats[k].append(float(x.detach()))
                else:  # each process holds its share of every global mean (times W): their sum / W is the mean
                    tot = rt.all_sum_tensor(torch.stack([x.detach().float() for _, x in named])).tolist()
                    for (k, _), x in zip(named, tot):
                        stats[k].append(x / W)

        # ---- logging (global over the batch's rows / groups)
        g_mean = None if g is None else (float(np.mean(g)) if W == 1 else rt.all_sum(float(np.sum(g))) / B)
        row = {
            "update": update, "episodes": update * B, "beta": cfg.kl_coef,
            "objective/kl": global_mean(seq_kl, B),
            "objective/kl_k3": global_mean((kl_k3(old_logp, ref_logp) * mask).sum(1), B),
            "objective/entropy": global_mean((-old_logp * mask).sum(1), B),
            "objective/scores": global_mean(scores, B),
        }
        if not grpo:  # the KL is in RLOO's reward, as in PPO's
            row["objective/non_score_reward"] = global_mean(-cfg.kl_coef * seq_kl, B)
            row["objective/rlhf_reward"] = global_mean(scores - cfg.kl_coef * seq_kl, B)
        row |= {
            "reward/raw": global_mean(raw, B),
            "reward/group_std": global_mean(group_std, P),
            "frac_zero_std": global_mean(torch.isclose(group_std, torch.zeros_like(group_std)), P),
            "gold": g_mean,
            "eos_rate": global_mean(ended, B),
            "response_len": global_mean(mask.sum(1), B),
            "policy/entropy": float(np.mean(stats["entropy"])),
            "policy/approx_kl": float(np.mean(stats["approx_kl"])),
            "policy/clipfrac": float(np.mean(stats["clipfrac"])),
            "loss/policy": float(np.mean(stats["policy"])),
        }
        if grpo:
            row["loss/kl"] = cfg.kl_coef * float(np.mean(stats["kl"]))
        row["time_s"] = time.perf_counter() - t0
        if ro.monitor is not None:
            row["monitor/score"] = global_mean(ro.monitor, B)
            if watch.threshold is not None:
                row["monitor/flag_rate"] = global_mean(ro.monitor > watch.threshold, B)
        history.append(row)
        if cfg.sample_every and (update % cfg.sample_every == 0 or update == 1):
            for i in range(min(4, len(pos))):  # the first group of rank 0: G answers to one prompt, side by side
                samples.append({"update": update, "prompt": batch_prompts[i], "response": ro.texts[i],
                                "score": float(scores[i]), "advantage": float(adv[i]),
                                "gold": float(g[i]) if g is not None else None,
                                **({"monitor": float(ro.monitor[i])} if ro.monitor is not None else {})})
        if eval_hook is not None and cfg.eval_every and update % cfg.eval_every == 0:
            evals.append({"update": update, **eval_hook(update, rt.unwrap(model))})
        bar.update()
        bar.set_postfix(score=f"{row['objective/scores']:.2f}", kl=f"{row['objective/kl']:.2f}",
                        **({"gold": f"{row['gold']:.2f}"} if g is not None else {}))
    bar.close()
    return PPOResult(history, samples, evals, None, time.perf_counter() - t0)
