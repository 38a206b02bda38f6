"""PPO for RLHF, faithful to InstructGPT (Ouyang et al. 2022), Stiennon et al. 2020 and "The N+ implementation
details of RLHF with PPO" (Huang et al. 2024). The loop in :func:`train_ppo` reads top to bottom:

1. rollout: left-padded queries, sampling with a KV cache at one temperature, responses truncated after EOS;
2. score: the reward model read at EOS, minus ``eos_penalty`` where no EOS came; optionally standardised with the
   statistics of the initial policy's samples (reward normalization before training);
3. per-token reward: −β·KL_t (k1 = log π − log π_ref, or k3 = r − 1 − log r with r = π_ref/π) at every token, plus
   the score at the last token; β fixed or adaptive (Ziegler et al. 2019);
4. GAE with γ = 1, λ = 0.95 over the response tokens; advantages whitened; returns = advantages + values;
5. ``ppo_epochs`` passes of minibatches: clipped policy loss, clipped value loss (the value model is a separate
   network initialised from the reward model), optional pretraining mix (PPO-ptx), optional weight EMA.

Dropout is off in every model (they stay in eval mode), so log-probs in rollout and in training agree exactly.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..errors import SuperalignError
from ..models.lm import (
    completion_batch,
    completion_logps,
    decode_responses,
    encode_prompts,
    left_pad,
    response_mask,
    sample,
    token_logprobs,
)
from ..validate import (
    check_at_most,
    check_int,
    check_nonnegative,
    check_positive,
    check_range,
    check_seed,
    help_field,
)
from .reward import RewardModel, last_token_index

# ----------------------------------------------------------------------------- formulas (each has a golden test)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean)/std over the masked entries (mean kept when ``shift_mean`` is False); unbiased variance."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimator of KL(π‖π_ref): log π − log π_ref (unbiased, can be negative)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator (Schulman 2020): r − 1 − log r with r = π_ref/π (unbiased, always ≥ 0)."""
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """−β·KL_t at every response token, plus the sequence score at its last token."""
    r = -beta * kl * mask
    last = last_token_index(mask)
    r[torch.arange(r.shape[0]), last] += scores
    return r


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over right-padded responses → (advantages, returns = advantages + values).
    The state after the last real token is terminal (value 0)."""
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate → (loss, clip fraction, approx KL = ½·E[(log π − log π_old)²])."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.max(l1, l2), mask)
    clipfrac = masked_mean((l2 > l1).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio ** 2, mask)
    return loss, clipfrac, approx_kl


def value_loss(v: torch.Tensor, old_v: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """½·E[max((v − R)², (clip(v, v_old ± clip) − R)²)] → (loss, fraction where the clipped term was larger)."""
    v_clipped = old_v + torch.clamp(v - old_v, -clip, clip)
    a, b = (v - returns) ** 2, (v_clipped - returns) ** 2
    return 0.5 * masked_mean(torch.max(a, b), mask), masked_mean((b > a).float(), mask)


class AdaptiveKL:
    """Ziegler et al. 2019: β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon) after each batch of n samples."""

    def __init__(self, beta: float, target: float | None, horizon: int):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> float:
        if self.target is not None:
            err = float(np.clip(kl / self.target - 1, -0.2, 0.2))
            self.beta *= 1 + err * n / self.horizon
        return self.beta


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1 - decay)


# ----------------------------------------------------------------------------- the trainer


@dataclass
class PPOConfig:
    """PPO for RLHF. Defaults follow InstructGPT / Stiennon et al. where a small testbed allows."""

    updates: int = help_field(100, "rollout → optimise iterations")
    batch_size: int = help_field(64, "prompts (rollouts) per update")
    minibatch_size: int = help_field(16, "rollouts per optimiser step")
    ppo_epochs: int = help_field(4, "passes over each rollout batch")
    lr: float = help_field(1e-5, "AdamW learning rate of the policy")
    value_lr: float | None = help_field(None, "learning rate of the value model (default: lr)")
    response_len: int = help_field(24, "maximum new tokens per response; responses without EOS by then are truncated "
                                       "and penalised")
    temperature: float = help_field(1.0, "sampling temperature, used for the log-probs too")
    kl_coef: float = help_field(0.05, "β of the per-token KL penalty (InstructGPT 0.02, Stiennon et al. 0.05)")
    kl_estimator: str = help_field("k1", "per-token KL estimator in the reward: k1 (log-ratio) or k3",
                                    choices=("k1", "k3"))
    target_kl: float | None = help_field(None, "target sequence KL for the adaptive β controller; None keeps β fixed")
    kl_horizon: int = help_field(10000, "horizon (in samples) of the adaptive controller")
    gamma: float = help_field(1.0, "discount (1: the reward is at the end of the sequence)")
    lam: float = help_field(0.95, "GAE λ")
    clip: float = help_field(0.2, "policy ratio clip ε")
    value_clip: float = help_field(0.2, "value clip range")
    vf_coef: float = help_field(0.1, "value-loss weight")
    whiten_advantages: bool = help_field(True, "whiten advantages per rollout batch")
    reward_norm: bool = help_field(True, "standardise scores with the mean and std of the initial policy's samples "
                                         "(before training)")
    eos_penalty: float = help_field(1.0, "subtracted from the score of responses that never emit EOS (0 disables)")
    ptx_coef: float = help_field(0.0, "weight γ of the pretraining LM loss mixed into the objective (PPO-ptx; "
                                      "InstructGPT 27.8)")
    ema_decay: float | None = help_field(None, "keep an exponential moving average of the policy weights with this "
                                               "decay (e.g. 0.992); None: off")
    max_grad_norm: float = help_field(1.0, "gradient clipping")
    eval_every: int = help_field(0, "call the evaluation hook every this many updates (0: never)")
    sample_every: int = help_field(10, "record a table of samples every this many updates")
    max_prompt_len: int = help_field(256, "prompts longer than this many tokens are an error")
    seed: int = help_field(0, "seed for prompt order and sampling")

    def __post_init__(self):
        if self.kl_estimator not in ("k1", "k3"):
            raise SuperalignError(f"unknown KL estimator {self.kl_estimator!r}", "pass --kl-estimator k1 or k3")
        check_int("updates", self.updates, example=100)
        check_int("batch_size", self.batch_size, example=64)
        check_int("minibatch_size", self.minibatch_size, example=16)
        check_at_most("minibatch_size", self.minibatch_size, "batch_size", self.batch_size)
        if self.batch_size % self.minibatch_size:
            raise SuperalignError(f"--batch-size {self.batch_size} is not a multiple of --minibatch-size "
                                  f"{self.minibatch_size}", "pick sizes that divide, e.g. 64 and 16")
        check_int("ppo_epochs", self.ppo_epochs, example=4)
        check_positive("lr", self.lr, example=1e-5)
        check_positive("value_lr", self.value_lr, example=1e-5, none_ok=True)
        check_int("response_len", self.response_len, example=24)
        check_positive("temperature", self.temperature, example=1.0)
        check_nonnegative("kl_coef", self.kl_coef, example=0.05)
        check_positive("target_kl", self.target_kl, example=6.0, none_ok=True)
        check_int("kl_horizon", self.kl_horizon, example=10000)
        check_range("gamma", self.gamma, 0.0, 1.0, example=1.0)
        check_range("lam", self.lam, 0.0, 1.0, example=0.95)
        check_positive("clip", self.clip, example=0.2)
        check_positive("value_clip", self.value_clip, example=0.2)
        check_nonnegative("vf_coef", self.vf_coef, example=0.1)
        check_nonnegative("eos_penalty", self.eos_penalty, example=1.0)
        check_nonnegative("ptx_coef", self.ptx_coef, example=0.0)
        if self.ema_decay is not None:
            check_range("ema_decay", self.ema_decay, 0.0, 1.0, low_open=True, high_open=True, example=0.992)
        check_positive("max_grad_norm", self.max_grad_norm, example=1.0)
        check_int("eval_every", self.eval_every, minimum=0, example=0)
        check_int("sample_every", self.sample_every, minimum=0, example=10)
        check_int("max_prompt_len", self.max_prompt_len, example=256)
        check_seed("seed", self.seed)


class Rollout(NamedTuple):
    query: torch.Tensor
    query_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    texts: list[str]
    ended: list[bool]


def rollout(policy, tok, prompt_ids: list[list[int]], cfg: PPOConfig, gen: torch.Generator,
            temperature: float | None = None) -> Rollout:
    q, qm = left_pad(prompt_ids, tok.pad_token_id)
    resp = sample(policy, q, qm, cfg.response_len, cfg.temperature if temperature is None else temperature,
                  tok.eos_token_id, tok.pad_token_id, gen)
    mask = response_mask(resp, tok.eos_token_id, tok.pad_token_id)
    texts, ended = decode_responses(tok, resp, mask)
    return Rollout(q, qm, resp, mask, texts, ended)


@torch.no_grad()
def score_rollout(rm: RewardModel, ro: Rollout) -> torch.Tensor:
    ids = torch.cat([ro.query, ro.responses], 1)
    mask = torch.cat([ro.query_mask, ro.mask], 1)
    return rm(ids, mask)


class PPOResult(NamedTuple):
    history: list[dict]
    """metrics per update (see the glossary in README)"""
    samples: list[dict]
    """sample tables: update, prompt, response, score, gold"""
    evals: list[dict]
    """outputs of the evaluation hook"""
    ema: torch.nn.Module | None
    """the EMA policy when ema_decay is set"""
    wall_s: float
    """training wall time"""


def train_ppo(policy, ref, rm: RewardModel, tok, prompts: list[str], cfg: PPOConfig,
              value_model: RewardModel | None = None,
              gold: Callable[[list[str], list[str], list[bool]], np.ndarray] | None = None,
              ptx_rows: list[dict] | None = None, eval_hook: Callable[[int, torch.nn.Module], dict] | None = None,
              progress: bool = True) -> PPOResult:
    """Optimise ``policy`` in place against ``rm`` with a KL penalty to ``ref``.

    ``value_model`` defaults to a copy of the reward model (InstructGPT). ``gold(prompts, responses, ended)`` is
    logged as gold reward when given (testbeds). ``ptx_rows`` (prompt/completion dicts) feed the PPO-ptx term."""
    from tqdm.auto import tqdm

    if not prompts:
        raise SuperalignError("PPO got no prompts", "pass a prompt file with at least one prompt")
    if cfg.ptx_coef > 0 and not ptx_rows:
        raise SuperalignError("ptx_coef > 0 needs pretraining data", "pass pretraining rows or set --ptx-coef 0")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt_ids = encode_prompts(tok, prompts, cfg.max_prompt_len)
    ctx = getattr(policy.config, "n_positions", None) or getattr(policy.config, "max_position_embeddings", None)
    longest = max(map(len, prompt_ids))
    if ctx and longest + cfg.response_len > ctx:
        raise SuperalignError(f"the longest prompt ({longest} tokens) plus --response-len {cfg.response_len} exceeds "
                              f"the model's context of {ctx} tokens", "shorten the prompts or lower --response-len")
    value_model = value_model if value_model is not None else copy.deepcopy(rm)
    for m in (policy, ref, rm, value_model):
        m.eval()  # dropout off everywhere
    for p in list(ref.parameters()) + list(rm.parameters()):
        p.requires_grad_(False)
    opt = torch.optim.AdamW([{"params": list(policy.parameters()), "lr": cfg.lr},
                             {"params": list(value_model.parameters()), "lr": cfg.value_lr or cfg.lr}],
                            eps=1e-5, weight_decay=0.0)
    ema = copy.deepcopy(policy) if cfg.ema_decay else None
    kl_ctl = AdaptiveKL(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    ptx = None
    if ptx_rows:
        from .lm import encode_pairs
        ptx = encode_pairs(tok, [r["prompt"] for r in ptx_rows], [r["completion"] for r in ptx_rows], 10 ** 9)

    # reward normalization before training: statistics of the initial policy's samples
    norm_mean, norm_std = 0.0, 1.0
    if cfg.reward_norm:
        idx = torch.randperm(len(prompt_ids), generator=gen)[:max(cfg.batch_size, 64)].tolist()
        ro = rollout(policy, tok, [prompt_ids[i] for i in idx], cfg, gen)
        s = score_rollout(rm, ro) - cfg.eos_penalty * (~torch.tensor(ro.ended)).float()
        norm_mean, norm_std = float(s.mean()), float(s.std().clamp(min=1e-6))

    history, samples, evals = [], [], []
    t0 = time.perf_counter()
    order: list[int] = []
    bar = tqdm(total=cfg.updates, desc="PPO", disable=not progress)
    for update in range(1, cfg.updates + 1):
        # ---- 1. rollout
        while len(order) < cfg.batch_size:
            order += torch.randperm(len(prompt_ids), generator=gen).tolist()
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        batch_prompts = [prompts[i] for i in idx]
        ro = rollout(policy, tok, [prompt_ids[i] for i in idx], cfg, gen)
        mask = ro.mask.float()
        ended = torch.tensor(ro.ended)
        with torch.no_grad():
            old_logp = token_logprobs(policy, ro.query, ro.query_mask, ro.responses, ro.mask, cfg.temperature)
            ref_logp = token_logprobs(ref, ro.query, ro.query_mask, ro.responses, ro.mask, cfg.temperature)
            old_values = _values(value_model, ro) * mask
            # ---- 2. score
            raw = score_rollout(rm, ro)
            if not torch.isfinite(raw).all():
                raise SuperalignError(f"the reward model returned NaN/inf for {int((~torch.isfinite(raw)).sum())} of "
                                      f"{len(raw)} responses at update {update}",
                                      "check the reward-model checkpoint (retrain it with a lower --lr)")
            scores = (raw - cfg.eos_penalty * (~ended).float() - norm_mean) / norm_std
            # ---- 3. per-token reward with the KL penalty
            kl = (kl_k1 if cfg.kl_estimator == "k1" else kl_k3)(old_logp, ref_logp) * mask
            beta = kl_ctl.beta
            rewards = per_token_rewards(scores, kl, mask, beta)
            # ---- 4. advantages
            adv, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = whiten(adv, mask)

        # ---- 5. PPO epochs over minibatches
        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac",
                                                          "approx_kl", "entropy", "ptx_loss")}
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(cfg.batch_size, generator=gen)
            for b in range(0, cfg.batch_size, cfg.minibatch_size):
                mb = perm[b:b + cfg.minibatch_size]
                m = mask[mb]
                logp, ent = token_logprobs(policy, ro.query[mb], ro.query_mask[mb], ro.responses[mb], ro.mask[mb],
                                           cfg.temperature, return_entropy=True)
                pg, cf, akl = policy_loss(logp, old_logp[mb], adv[mb], m, cfg.clip)
                v = _values(value_model, ro, mb)
                vf, vcf = value_loss(v, old_values[mb], returns[mb], m, cfg.value_clip)
                loss = pg + cfg.vf_coef * vf
                if ptx is not None and cfg.ptx_coef > 0:
                    pi = torch.randint(len(ptx), (cfg.minibatch_size,), generator=gen).tolist()
                    ids, am, lm = completion_batch([ptx[i] for i in pi], tok.pad_token_id)
                    lp, n = completion_logps(policy, ids, am, lm)
                    ptx_loss = -lp.sum() / n.sum()
                    loss = loss + cfg.ptx_coef * ptx_loss
                    stats["ptx_loss"].append(ptx_loss.item())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(policy.parameters()) + list(value_model.parameters()),
                                               cfg.max_grad_norm)
                opt.step()
                if ema is not None:
                    ema_update(ema, policy, cfg.ema_decay)
                for k, x in (("pg_loss", pg), ("vf_loss", vf), ("clipfrac", cf), ("vf_clipfrac", vcf),
                             ("approx_kl", akl), ("entropy", masked_mean(ent, m))):
                    stats[k].append(float(x.detach()))

        # ---- logging
        seq_kl = kl.sum(1)
        kl_ctl.update(float(seq_kl.mean()), cfg.batch_size)
        g = gold(batch_prompts, ro.texts, ro.ended) if gold is not None else None
        row = {
            "update": update, "episodes": update * cfg.batch_size, "beta": beta,
            "objective/kl": float((kl_k1(old_logp, ref_logp) * mask).sum(1).mean()),
            "objective/kl_k3": float((kl_k3(old_logp, ref_logp) * mask).sum(1).mean()),
            "objective/entropy": float((-old_logp * mask).sum(1).mean()),
            "objective/non_score_reward": float((-beta * kl).sum(1).mean()),
            "objective/scores": float(scores.mean()),
            "objective/rlhf_reward": float((scores - beta * seq_kl).mean()),
            "reward/raw": float(raw.mean()),
            "gold": float(np.mean(g)) if g is not None else None,
            "eos_rate": float(ended.float().mean()),
            "response_len": float(mask.sum(1).mean()),
            "policy/entropy": float(np.mean(stats["entropy"])),
            "policy/approx_kl": float(np.mean(stats["approx_kl"])),
            "policy/clipfrac": float(np.mean(stats["clipfrac"])),
            "loss/policy": float(np.mean(stats["pg_loss"])),
            "loss/value": float(np.mean(stats["vf_loss"])),
            "val/clipfrac": float(np.mean(stats["vf_clipfrac"])),
            "val/error": float(masked_mean((old_values - returns) ** 2, mask)),
            "loss/ptx": float(np.mean(stats["ptx_loss"])) if stats["ptx_loss"] else None,
            "time_s": time.perf_counter() - t0,
        }
        history.append(row)
        if cfg.sample_every and (update % cfg.sample_every == 0 or update == 1):
            for i in range(min(4, len(idx))):
                samples.append({"update": update, "prompt": batch_prompts[i], "response": ro.texts[i],
                                "score": float(scores[i]), "gold": float(g[i]) if g is not None else None})
        if eval_hook is not None and cfg.eval_every and update % cfg.eval_every == 0:
            evals.append({"update": update, **eval_hook(update, ema if ema is not None else policy)})
        bar.update()
        bar.set_postfix(score=f"{row['objective/scores']:.2f}", kl=f"{row['objective/kl']:.2f}",
                        **({"gold": f"{row['gold']:.2f}"} if g is not None else {}))
    bar.close()
    return PPOResult(history, samples, evals, ema, time.perf_counter() - t0)


def _values(value_model: RewardModel, ro: Rollout, mb=None) -> torch.Tensor:
    """V(state before each response token): the value head at positions q−1 … q+T−2."""
    q, qm, r, m = ro.query, ro.query_mask, ro.responses, ro.mask
    if mb is not None:
        q, qm, r, m = q[mb], qm[mb], r[mb], m[mb]
    ids, am = torch.cat([q, r], 1), torch.cat([qm, m], 1)
    v = value_model.values(ids, am)
    Q = q.shape[1]
    return v[:, Q - 1:Q - 1 + r.shape[1]]


def config_dict(cfg: PPOConfig) -> dict:
    return asdict(cfg)


@torch.no_grad()
def evaluate_policy(policy, ref, rm: RewardModel, tok, prompts: list[str], response_len: int, temperature: float,
                    gold=None, seed: int = 0, samples_per_prompt: int = 1, eos_penalty: float = 0.0) -> dict:
    """Sample from ``policy`` and report the proxy score, gold reward and KL(π‖π_ref) (the mean over samples of
    the summed per-token log-ratio, an unbiased estimate of the sequence KL)."""
    gen = torch.Generator().manual_seed(seed)
    cfg = PPOConfig(response_len=response_len, temperature=temperature, batch_size=1, minibatch_size=1)
    ps = [p for p in prompts for _ in range(samples_per_prompt)]
    ids = encode_prompts(tok, ps)
    proxy, golds, kls, ended_all = [], [], [], []
    for b in range(0, len(ps), 64):
        ro = rollout(policy, tok, ids[b:b + 64], cfg, gen)
        lp = token_logprobs(policy, ro.query, ro.query_mask, ro.responses, ro.mask, temperature)
        rl = token_logprobs(ref, ro.query, ro.query_mask, ro.responses, ro.mask, temperature)
        kls += (lp - rl).sum(1).tolist()
        proxy += (score_rollout(rm, ro) - eos_penalty * (~torch.tensor(ro.ended)).float()).tolist()
        ended_all += ro.ended
        if gold is not None:
            golds += list(gold(ps[b:b + 64], ro.texts, ro.ended))
    out = {"kl": float(np.mean(kls)), "proxy": float(np.mean(proxy)), "eos_rate": float(np.mean(ended_all))}
    if gold is not None:
        out["gold"] = float(np.mean(golds))
    return out
