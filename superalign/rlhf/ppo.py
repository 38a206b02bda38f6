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
    model_device,
    response_mask,
    sample,
    token_logprobs,
)
from ..runs.ledger import count_forward, count_training
from ..train.distributed import Runtime
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


def masked_mean(x: torch.Tensor, mask: torch.Tensor, all_sum=None) -> torch.Tensor:
    """Mean over the masked entries. ``all_sum(tensor) -> tensor`` (data-parallel): sums and counts are summed over
    the processes first, so the mean is that of the global batch."""
    if all_sum is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    tot = all_sum(torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)]))
    return tot[0] / tot[1].clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, all_sum=None) -> torch.Tensor:
    mean = masked_mean(x, mask, all_sum)
    var = masked_mean((x - mean) ** 2, mask, all_sum)
    n = mask.sum() if all_sum is None else all_sum(mask.sum().reshape(1).to(x.dtype))[0]
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           all_sum=None) -> torch.Tensor:
    """(x − mean)/std over the masked entries (mean kept when ``shift_mean`` is False); unbiased variance. With
    ``all_sum`` (data-parallel) the mean and variance are those of the global batch (two passes: the mean, then the
    centred squares)."""
    mean, var = masked_mean(x, mask, all_sum), masked_var(x, mask, all_sum=all_sum)
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
    r[torch.arange(r.shape[0], device=r.device), last] += scores
    return r


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over right-padded responses → (advantages, returns = advantages + values).
    The state after the last real token is terminal (value 0)."""
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                clip: float, mean=masked_mean) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate → (loss, clip fraction, approx KL = ½·E[(log π − log π_old)²]). ``mean(x, mask)``: the
    token mean (data-parallel trainers pass this process's share of the global mean)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = mean(torch.max(l1, l2), mask)
    clipfrac = mean((l2 > l1).float(), mask)
    approx_kl = 0.5 * mean(log_ratio ** 2, mask)
    return loss, clipfrac, approx_kl


def value_loss(v: torch.Tensor, old_v: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float, mean=masked_mean) -> tuple[torch.Tensor, torch.Tensor]:
    """½·E[max((v − R)², (clip(v, v_old ± clip) − R)²)] → (loss, fraction where the clipped term was larger)."""
    v_clipped = old_v + torch.clamp(v - old_v, -clip, clip)
    a, b = (v - returns) ** 2, (v_clipped - returns) ** 2
    return 0.5 * mean(torch.max(a, b), mask), mean((b > a).float(), mask)


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
    """ema ← decay·ema + (1 − decay)·model over the trained parameters (a LoRA policy's adapters; frozen weights
    are the same in both and stay so)."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        if p.requires_grad:
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
    monitor: torch.Tensor | None = None
    """[B] per-sample scores of the ``watch`` monitor that watched the sampling, when one did"""


def rollout(policy, tok, prompt_ids: list[list[int]], cfg: PPOConfig, gen: torch.Generator,
            temperature: float | None = None, rows=None, across=None, watch=None) -> Rollout:
    """Sample responses on the policy's device (tensors stay there; texts are decoded once at the end). ``rows`` and
    ``across``: data-parallel sampling; ``watch``: a monitor scoring every sample as it is generated; see
    :func:`superalign.models.lm.sample`."""
    q, qm = left_pad(prompt_ids, tok.pad_token_id)
    device = model_device(policy)
    q, qm = q.to(device), qm.to(device)
    resp = sample(policy, q, qm, cfg.response_len, cfg.temperature if temperature is None else temperature,
                  tok.eos_token_id, tok.pad_token_id, gen, rows=rows, across=across, watch=watch)
    count_forward(policy, q.numel() + resp.numel(), "rollout")  # prefill + one step per generated column
    mask = response_mask(resp, tok.eos_token_id, tok.pad_token_id)
    texts, ended = decode_responses(tok, resp, mask)
    return Rollout(q, qm, resp, mask, texts, ended, watch.end() if watch is not None else None)


@torch.no_grad()
def score_rollout(rm: RewardModel, ro: Rollout) -> torch.Tensor:
    from .reward import _autocast_like

    ids = torch.cat([ro.query, ro.responses], 1)
    mask = torch.cat([ro.query_mask, ro.mask], 1)
    with _autocast_like(rm):
        out = rm(ids, mask)
    count_forward(rm, ids.numel(), "reward")
    return out


def _ended(ro: Rollout) -> torch.Tensor:
    return torch.tensor(ro.ended, device=ro.responses.device)


def _logprobs(model, ro: Rollout, temperature: float, stage: str) -> torch.Tensor:
    """log-probs of the rollout's responses under ``model`` (forward only, counted in the compute ledger)."""
    from .reward import _autocast_like

    with _autocast_like(model):
        lp = token_logprobs(model, ro.query, ro.query_mask, ro.responses, ro.mask, temperature)
    count_forward(model, ro.query.numel() + ro.responses.numel(), stage)
    return lp


def check_context(policy, prompt_ids: list[list[int]], response_len: int) -> int | None:
    """The longest prompt plus the response must fit the policy's context (a one-line error, before any sampling);
    returns the context length (None when the config has none)."""
    ctx = getattr(policy.config, "n_positions", None) or getattr(policy.config, "max_position_embeddings", None)
    longest = max(map(len, prompt_ids))
    if ctx and longest + response_len > ctx:
        raise SuperalignError(f"the longest prompt ({longest} tokens) plus --response-len {response_len} exceeds "
                              f"the model's context of {ctx} tokens", "shorten the prompts or lower --response-len")
    return ctx


def score_stats(scores: torch.Tensor, n_global: int, rt) -> tuple[float, float]:
    """(mean, unbiased std ≥ 1e-6) of scores over the global sample, for reward normalization. Data-parallel: each
    process holds its rows of the ``n_global`` samples, and two passes of sums give the one-process numbers."""
    if rt.world_size == 1:
        return float(scores.mean()), float(scores.std().clamp(min=1e-6))
    mean = rt.all_sum(scores.sum()) / n_global
    return mean, max((rt.all_sum(((scores - mean) ** 2).sum()) / max(n_global - 1, 1)) ** 0.5, 1e-6)


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


class _PolicyAndValue(torch.nn.Module):
    """The two trained networks as one module: one data-parallel wrapper (DDP/FSDP) keeps both in step, and one
    forward computes everything a minibatch's loss needs (log-probs, entropies, values, the PPO-ptx log-probs)."""

    def __init__(self, policy, value):
        super().__init__()
        self.policy, self.value = policy, value

    def forward(self, q, qm, r, m, temperature: float, ptx: tuple | None = None):
        logp, ent = token_logprobs(self.policy, q, qm, r, m, temperature, return_entropy=True)
        ids, am = torch.cat([q, r], 1), torch.cat([qm, m], 1)
        v = self.value.values(ids, am)[:, q.shape[1] - 1:q.shape[1] - 1 + r.shape[1]]
        ptx_out = completion_logps(self.policy, *ptx) if ptx is not None else None
        return logp, ent, v, ptx_out


def train_ppo(policy, ref, rm: RewardModel, tok, prompts: list[str], cfg: PPOConfig,
              value_model: RewardModel | None = None,
              gold: Callable[[list[str], list[str], list[bool]], np.ndarray] | None = None,
              ptx_rows: list[dict] | None = None, eval_hook: Callable[[int, torch.nn.Module], dict] | None = None,
              progress: bool = True, rt=None, watch=None,
              on_rollout: Callable[[int, Rollout, np.ndarray | None], dict | None] | None = None) -> PPOResult:
    """Optimise ``policy`` in place against ``rm`` with a KL penalty to ``ref``.

    ``value_model`` defaults to a copy of the reward model (InstructGPT), in fp32 even when ``rm`` is kept in a low
    precision for scoring. ``gold(prompts, responses, ended)`` is logged as gold reward when given (testbeds).
    ``ptx_rows`` feed the PPO-ptx term (the mean token NLL of a minibatch of them): ``{"text"}`` dicts are
    pretraining documents, scored on every token (see :mod:`superalign.rlhf.lm`), ``{"prompt", "completion"}`` dicts
    demonstrations, scored on the completion.

    A LoRA ``policy`` (a peft model) trains its adapters only: the optimizer, the gradient clipping and the EMA take
    the parameters that require gradients.

    ``rt`` (:class:`~superalign.train.distributed.Runtime`): device, precision and data parallelism. Every process
    draws the same prompt batches (same seed) and generates, scores and trains on its share of each batch's rows;
    the sampling noise of every row is the one it would get in one process, the reward normalization, advantage
    whitening, KL controller and logged metrics use global statistics (sums over the processes), and each loss is a
    global token mean. So N processes compute what one process computes with the same global batch, up to float
    rounding (a shard's prompts are padded to its own longest prompt, which may round differently); the sample table
    holds rank 0's rows.

    ``watch`` (:class:`~superalign.models.watch.LinearMonitor`): scores every training sample as it is generated;
    each update then logs ``monitor/score`` (mean sample score) and, when the monitor has a threshold,
    ``monitor/flag_rate`` (share of samples flagged), and the sample table gets each sample's ``monitor`` score.

    ``on_rollout(update, rollout, gold)``: called with each update's rollout (this process's rows) and its gold
    rewards (None without ``gold``) right after sampling, before the policy is optimised on it — so it sees the policy
    that produced the samples (e.g. to read per-sample activations); a dict it returns is added to the update's
    history row."""
    from tqdm.auto import tqdm

    rt = rt or Runtime.for_model(policy)
    W = rt.world_size
    if not prompts:
        raise SuperalignError("PPO got no prompts", "pass a prompt file with at least one prompt")
    if cfg.ptx_coef > 0 and not ptx_rows:
        raise SuperalignError("ptx_coef > 0 needs pretraining data", "pass pretraining rows or set --ptx-coef 0")
    if cfg.batch_size < W:
        raise SuperalignError(f"--batch-size {cfg.batch_size} is smaller than the {W} data-parallel processes",
                              f"pass --batch-size {W} or more (a multiple of {W} balances the processes)")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt_ids = encode_prompts(tok, prompts, cfg.max_prompt_len)
    ctx = check_context(policy, prompt_ids, cfg.response_len)
    value_model = value_model if value_model is not None else copy.deepcopy(rm).float()
    for m in (policy, ref, rm, value_model):
        m.eval()  # dropout off everywhere
    for p in list(ref.parameters()) + list(rm.parameters()):
        p.requires_grad_(False)
    ref, rm = ref.to(rt.device), rm.to(rt.device)
    opt = torch.optim.AdamW([{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.lr},
                             {"params": list(value_model.parameters()), "lr": cfg.value_lr or cfg.lr}],
                            eps=1e-5, weight_decay=0.0)
    models, opt = rt.prepare(_PolicyAndValue(policy, value_model), opt)
    ema = copy.deepcopy(policy) if cfg.ema_decay else None
    kl_ctl = AdaptiveKL(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    ptx = None
    if ptx_rows:  # as long as a rollout's sequences (and within the context): a ptx batch costs about as much
        from .lm import ptx_sequences
        ptx = ptx_sequences(tok, ptx_rows, min(ctx or 10 ** 9, cfg.max_prompt_len + cfg.response_len))
    across = rt.max_across()
    sums = None if W == 1 else (lambda x: rt.all_sum_tensor(x))

    def my_rollout(global_prompts: list[list[int]], watch=None) -> tuple[Rollout, np.ndarray]:
        """This process's rows of a global batch of prompts (positions in the batch, rollout)."""
        pos = rt.shard(np.arange(len(global_prompts))).idx
        rows = None if W == 1 else (len(global_prompts), pos)
        with rt.autocast():
            ro = rollout(rt.unwrap(models).policy, tok, [global_prompts[i] for i in pos], cfg, gen, rows=rows,
                         across=across, watch=watch)
        return ro, pos

    def row_mean(x: torch.Tensor, n_global: int) -> float:
        """Mean over the global batch's rows of a per-row quantity."""
        return float(x.mean()) if W == 1 else rt.all_sum(x.sum()) / n_global

    # reward normalization before training: statistics of the initial policy's samples
    norm_mean, norm_std = 0.0, 1.0
    if cfg.reward_norm:
        idx = torch.randperm(len(prompt_ids), generator=gen)[:max(cfg.batch_size, 64)].tolist()
        ro, _ = my_rollout([prompt_ids[i] for i in idx])
        norm_mean, norm_std = score_stats(score_rollout(rm, ro) - cfg.eos_penalty * (~_ended(ro)).float(), len(idx), rt)

    history, samples, evals = [], [], []
    t0 = time.perf_counter()
    order: list[int] = []
    bar = tqdm(total=cfg.updates, desc="PPO", disable=not progress or not rt.is_main)
    for update in range(1, cfg.updates + 1):
        # ---- 1. rollout (this process's rows of the global batch)
        while len(order) < cfg.batch_size:
            order += torch.randperm(len(prompt_ids), generator=gen).tolist()
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        ro, pos = my_rollout([prompt_ids[i] for i in idx], watch)
        batch_prompts = [prompts[idx[p]] for p in pos]
        g = gold(batch_prompts, ro.texts, ro.ended) if gold is not None else None
        extra = on_rollout(update, ro, g) if on_rollout is not None else None
        mask = ro.mask.float()
        ended = _ended(ro)
        with torch.no_grad(), rt.autocast():
            old_logp = _logprobs(rt.unwrap(models).policy, ro, cfg.temperature, "policy")
            ref_logp = _logprobs(ref, ro, cfg.temperature, "reference")
            old_values = _values(rt.unwrap(models).value, ro) * mask
            count_forward(value_model, ro.query.numel() + ro.responses.numel(), "value")
            # ---- 2. score
            raw = score_rollout(rm, ro)
            bad = int((~torch.isfinite(raw)).sum())
            bad = bad if W == 1 else int(rt.all_sum(bad))  # every process stops together
            if bad:
                raise SuperalignError(f"the reward model returned NaN/inf for {bad} of {cfg.batch_size} responses "
                                      f"at update {update}",
                                      "check the reward-model checkpoint (retrain it with a lower --lr)")
            scores = (raw - cfg.eos_penalty * (~ended).float() - norm_mean) / norm_std
            # ---- 3. per-token reward with the KL penalty
            kl = (kl_k1 if cfg.kl_estimator == "k1" else kl_k3)(old_logp, ref_logp) * mask
            beta = kl_ctl.beta
            rewards = per_token_rewards(scores, kl, mask, beta)
            # ---- 4. advantages
            adv, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = whiten(adv, mask, all_sum=sums)

        # ---- 5. PPO epochs over minibatches (each process: its rows of the global minibatch)
        local = {int(p): i for i, p in enumerate(pos)}
        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac",
                                                          "approx_kl", "entropy", "ptx_loss")}
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(cfg.batch_size, generator=gen)
            for b in range(0, cfg.batch_size, cfg.minibatch_size):
                mb, weight, mean = perm[b:b + cfg.minibatch_size], 1.0, masked_mean
                if W > 1:
                    mine = [local[int(p)] for p in mb if int(p) in local]
                    weight = 1.0 if mine else 0.0  # no rows here this time: a zero-weight row keeps DDP in step
                    mb = torch.tensor(mine or [0])
                    n_global = rt.all_sum(mask[mb].sum() * weight)
                    scale = weight * W / max(n_global, 1.0)
                    mean = (lambda x, mk, scale=scale: (x * mk).sum() * scale)  # this process's share of the mean
                mb = mb.to(mask.device)
                m = mask[mb]
                ptx_batch, ptx_weight = None, 1.0
                if ptx is not None and cfg.ptx_coef > 0:
                    pi = torch.randint(len(ptx), (cfg.minibatch_size,), generator=gen).tolist()
                    if W > 1:
                        part = rt.shard(pi)
                        pi, ptx_weight = list(part.idx), part.weight
                    ptx_batch = tuple(t.to(rt.device) for t in completion_batch([ptx[i] for i in pi],
                                                                                tok.pad_token_id))
                with rt.autocast():
                    logp, ent, v, ptx_out = models(ro.query[mb], ro.query_mask[mb], ro.responses[mb], ro.mask[mb],
                                                   cfg.temperature, ptx_batch)
                    pg, cf, akl = policy_loss(logp, old_logp[mb], adv[mb], m, cfg.clip, mean=mean)
                    vf, vcf = value_loss(v.float(), old_values[mb], returns[mb], m, cfg.value_clip, mean=mean)
                    loss = pg + cfg.vf_coef * vf
                    ptx_loss = None
                    if ptx_out is not None:
                        lp, n = ptx_out
                        ptx_loss = -lp.sum() / n.sum() if W == 1 else rt.global_mean(-lp.sum(), n.sum(), ptx_weight)
                        loss = loss + cfg.ptx_coef * ptx_loss
                rt.backward(loss)
                rt.step(opt, cfg.max_grad_norm)
                tokens = ro.query[mb].numel() + ro.responses[mb].numel()
                count_training(policy, tokens, "policy")
                count_training(value_model, tokens, "value")
                if ptx_batch is not None:
                    count_training(policy, ptx_batch[0].numel(), "ptx")
                if ema is not None:
                    ema_update(ema, policy, cfg.ema_decay)
                named = [("pg_loss", pg), ("vf_loss", vf), ("clipfrac", cf), ("vf_clipfrac", vcf),
                         ("approx_kl", akl), ("entropy", mean(ent, m))] + ([("ptx_loss", ptx_loss)] if ptx_loss
                                                                         is not None else [])
                if W == 1:
                    for k, x in named:
                        stats[k].append(float(x.detach()))
                else:  # each process holds its share of every global mean: their sum is the mean
                    tot = rt.all_sum_tensor(torch.stack([x.detach().float() for _, x in named])).tolist()
                    for (k, _), x in zip(named, tot):
                        stats[k].append(x / W)

        # ---- logging (global over the batch's rows)
        B = cfg.batch_size
        seq_kl = kl.sum(1)
        kl_ctl.update(row_mean(seq_kl, B), cfg.batch_size)
        g_mean = None if g is None else (float(np.mean(g)) if W == 1 else rt.all_sum(float(np.sum(g))) / B)
        if W == 1:
            val_error = float(masked_mean((old_values - returns) ** 2, mask))
        else:
            val_error = float(masked_mean((old_values - returns) ** 2, mask, all_sum=sums))
        row = {
            "update": update, "episodes": update * cfg.batch_size, "beta": beta,
            "objective/kl": row_mean((kl_k1(old_logp, ref_logp) * mask).sum(1), B),
            "objective/kl_k3": row_mean((kl_k3(old_logp, ref_logp) * mask).sum(1), B),
            "objective/entropy": row_mean((-old_logp * mask).sum(1), B),
            "objective/non_score_reward": row_mean((-beta * kl).sum(1), B),
            "objective/scores": row_mean(scores, B),
            "objective/rlhf_reward": row_mean(scores - beta * seq_kl, B),
            "reward/raw": row_mean(raw, B),
            "gold": g_mean,
            "eos_rate": row_mean(ended.float(), B),
            "response_len": row_mean(mask.sum(1), B),
            "policy/entropy": float(np.mean(stats["entropy"])),
            "policy/approx_kl": float(np.mean(stats["approx_kl"])),
            "policy/clipfrac": float(np.mean(stats["clipfrac"])),
            "loss/policy": float(np.mean(stats["pg_loss"])),
            "loss/value": float(np.mean(stats["vf_loss"])),
            "val/clipfrac": float(np.mean(stats["vf_clipfrac"])),
            "val/error": val_error,
            "loss/ptx": float(np.mean(stats["ptx_loss"])) if stats["ptx_loss"] else None,
            "time_s": time.perf_counter() - t0,
        }
        if ro.monitor is not None:
            row["monitor/score"] = row_mean(ro.monitor, B)
            if watch.threshold is not None:
                row["monitor/flag_rate"] = row_mean((ro.monitor > watch.threshold).float(), B)
        if extra:
            row.update(extra)
        history.append(row)
        if cfg.sample_every and (update % cfg.sample_every == 0 or update == 1):
            for i in range(min(4, len(pos))):
                samples.append({"update": update, "prompt": batch_prompts[i], "response": ro.texts[i],
                                "score": float(scores[i]), "gold": float(g[i]) if g is not None else None,
                                **({"monitor": float(ro.monitor[i])} if ro.monitor is not None else {})})
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
        lp = _logprobs(policy, ro, temperature, "eval")
        rl = _logprobs(ref, ro, temperature, "eval")
        kls += (lp - rl).sum(1).tolist()
        proxy += (score_rollout(rm, ro) - eos_penalty * (~_ended(ro)).float()).tolist()
        ended_all += ro.ended
        if gold is not None:
            golds += list(gold(ps[b:b + 64], ro.texts, ro.ended))
    out = {"kl": float(np.mean(kls)), "proxy": float(np.mean(proxy)), "eos_rate": float(np.mean(ended_all))}
    if gold is not None:
        out["gold"] = float(np.mean(golds))
    return out
