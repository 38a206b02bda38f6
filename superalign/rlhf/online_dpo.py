"""Online DPO (Guo et al. 2024, "Direct language model alignment from online AI feedback"; TRL's OnlineDPOTrainer).

Offline DPO learns from a fixed set of pairs sampled from some other policy; online DPO samples its pairs from the
policy being trained. Each update of :func:`train_online_dpo`:

1. samples two responses to each of ``batch_size`` prompts from the current policy (the rollout of PPO, KV cache,
   one temperature, cut after EOS);
2. scores them with the reward model (read at EOS, minus ``eos_penalty`` where no EOS came, like PPO's score) and
   makes a pair of each prompt's two: the higher proxy score is ``chosen`` (:func:`online_pairs`). A tie carries no
   preference — for identical responses, the usual case, DPO's log-ratio gap is 0 whatever the weights, so the pair
   has no gradient anyway — so tied pairs are left out of the loss and its mean (``pairs/ties`` logs their share);
   an update whose pairs all tie takes no step;
3. takes one optimiser step on the mean DPO (sigmoid) or IPO loss of the pairs against the frozen reference
   (:func:`superalign.rlhf.dpo.dpo_loss` / :func:`~superalign.rlhf.dpo.ipo_loss`, sequence log-probs at the sampling
   temperature, as PPO's).

History rows use PPO's names where they mean the same — ``objective/kl`` (mean over samples of the summed k1
log-ratio to the reference, on the samples as drawn), ``objective/scores`` (the proxy score minus the EOS penalty;
not standardised, since only the order within a pair matters), ``reward/raw``, ``gold``, ``eos_rate``,
``response_len`` — and DPO's: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies`` (over the non-tied pairs). ``episodes`` counts sampled responses (2 per prompt), the unit of
PPO's episodes, so equal budgets compare equal numbers of samples.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SuperalignError
from ..models.lm import encode_prompts, token_logprobs
from ..runs.ledger import count_forward, count_training
from ..train.distributed import Runtime
from ..validate import check_choice, check_int, check_nonnegative, check_positive, check_seed, help_field
from .dpo import LOSSES, dpo_loss, ipo_loss
from .ppo import PPOResult, _ended, _logprobs, check_context, rollout, score_rollout
from .reward import RewardModel


def online_pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen row, rejected row, not tied) of each pair, for scores of rows ``2i, 2i+1`` = prompt i's two
    samples: the higher score is chosen; a tie keeps the first as "chosen" and is marked False (no preference)."""
    s = scores.reshape(-1, 2)
    first = torch.arange(s.shape[0], device=scores.device) * 2
    second_wins = (s[:, 1] > s[:, 0]).long()
    return first + second_wins, first + 1 - second_wins, s[:, 0] != s[:, 1]


@dataclass
class OnlineDPOConfig:
    """Online DPO: pairs sampled from the current policy, ranked by a reward model."""

    updates: int = help_field(100, "sample → rank → DPO-step iterations")
    batch_size: int = help_field(32, "prompts per update (two samples each: one pair per prompt)")
    beta: float = help_field(0.1, "strength of the implicit KL constraint to the reference (IPO: its τ)")
    loss: str = help_field("sigmoid", "sigmoid (DPO) or ipo (Azar et al. 2023)", choices=LOSSES)
    lr: float = help_field(5e-6, "AdamW learning rate (constant)")
    response_len: int = help_field(24, "maximum new tokens per response")
    temperature: float = help_field(1.0, "sampling temperature, used for the log-probs too")
    eos_penalty: float = help_field(1.0, "subtracted from the score of responses that never emit EOS (0 disables)")
    max_grad_norm: float = help_field(1.0, "gradient clipping")
    eval_every: int = help_field(0, "call the evaluation hook every this many updates (0: never)")
    sample_every: int = help_field(10, "record a table of samples every this many updates")
    max_prompt_len: int = help_field(256, "prompts longer than this many tokens are an error")
    seed: int = help_field(0, "seed for prompt order and sampling")

    def __post_init__(self):
        check_int("updates", self.updates, example=100)
        check_int("batch_size", self.batch_size, example=32)
        check_positive("beta", self.beta, example=0.1)
        check_choice("loss", self.loss, LOSSES)
        check_positive("lr", self.lr, example=5e-6)
        check_int("response_len", self.response_len, example=24)
        check_positive("temperature", self.temperature, example=1.0)
        check_nonnegative("eos_penalty", self.eos_penalty, example=1.0)
        check_positive("max_grad_norm", self.max_grad_norm, example=1.0)
        check_int("eval_every", self.eval_every, minimum=0, example=0)
        check_int("sample_every", self.sample_every, minimum=0, example=10)
        check_int("max_prompt_len", self.max_prompt_len, example=256)
        check_seed("seed", self.seed)


def train_online_dpo(policy, ref, rm: RewardModel, tok, prompts: list[str], cfg: OnlineDPOConfig,
                     gold: Callable[[list[str], list[str], list[bool]], np.ndarray] | None = None,
                     eval_hook: Callable[[int, torch.nn.Module], dict] | None = None, progress: bool = True,
                     rt=None) -> PPOResult:
    """Optimise ``policy`` in place (a LoRA policy: its adapters) against the frozen ``ref`` on pairs it samples
    and ``rm`` ranks. ``gold(prompts, responses, ended)`` is logged when given (testbeds); ``eval_hook(update,
    policy)`` runs every ``eval_every`` updates. Data-parallel (``rt``): every process draws the same prompts and
    samples its share of them (both samples of a prompt on one process, each row with the noise it gets in one
    process); the loss is the global mean over the non-tied pairs and logged numbers are global."""
    from tqdm.auto import tqdm

    rt = rt or Runtime.for_model(policy)
    W = rt.world_size
    if not prompts:
        raise SuperalignError("online DPO got no prompts", "pass a prompt file with at least one prompt")
    if cfg.batch_size < W:
        raise SuperalignError(f"--batch-size {cfg.batch_size} is smaller than the {W} data-parallel processes",
                              f"pass --batch-size {W} or more")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt_ids = encode_prompts(tok, prompts, cfg.max_prompt_len)
    check_context(policy, prompt_ids, cfg.response_len)
    for m in (policy, ref, rm):
        m.eval()  # dropout off: log-probs at sampling and in the loss are the same function
    for p in list(ref.parameters()) + list(rm.parameters()):
        p.requires_grad_(False)
    ref, rm = ref.to(rt.device), rm.to(rt.device)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, eps=1e-5,
                            weight_decay=0.0)
    model, opt = rt.prepare(policy, opt)
    across = rt.max_across()
    B = cfg.batch_size
    history, samples, evals = [], [], []
    order: list[int] = []
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.updates, desc="online DPO", disable=not progress or not rt.is_main)
    for update in range(1, cfg.updates + 1):
        while len(order) < B:
            order += torch.randperm(len(prompt_ids), generator=gen).tolist()
        idx, order = order[:B], order[B:]
        part = rt.shard(np.arange(B))
        rows = [2 * int(p) + j for p in part.idx for j in (0, 1)]  # both samples of a prompt on this process
        batch_prompts = [prompts[idx[r // 2]] for r in rows]
        with rt.autocast():
            ro = rollout(rt.unwrap(model), tok, [prompt_ids[idx[r // 2]] for r in rows], cfg, gen,
                         rows=None if W == 1 else (2 * B, rows), across=across)
        g = gold(batch_prompts, ro.texts, ro.ended) if gold is not None else None
        ended = _ended(ro)
        with torch.no_grad():
            raw = score_rollout(rm, ro).float()  # a low-precision reward model (GPU) still ranks in fp32 arithmetic
            bad = int((~torch.isfinite(raw)).sum())
            if (bad if W == 1 else int(rt.all_sum(bad * part.weight))):
                raise SuperalignError(f"the reward model returned NaN/inf at update {update}",
                                      "check the reward-model checkpoint (retrain it with a lower --lr)")
            scores = raw - cfg.eos_penalty * (~ended).float()
            with rt.autocast():
                ref_lp = _logprobs(ref, ro, cfg.temperature, "reference").sum(1)
        chosen, rejected, valid = online_pairs(scores)
        valid = valid.float() * part.weight
        n_valid = float(valid.sum()) if W == 1 else rt.all_sum(valid.sum())
        step = n_valid > 0  # every process sees the same global count: all step or none does
        with rt.autocast(), contextlib.nullcontext() if step else torch.no_grad():
            lp = token_logprobs(model, ro.query, ro.query_mask, ro.responses, ro.mask, cfg.temperature).sum(1)
            if cfg.loss == "ipo":
                loss_i, rc, rr = ipo_loss(lp[chosen], lp[rejected], ref_lp[chosen], ref_lp[rejected], cfg.beta)
            else:
                loss_i, rc, rr = dpo_loss(lp[chosen], lp[rejected], ref_lp[chosen], ref_lp[rejected], cfg.beta)
            loss_sum = (loss_i * valid).sum()
            loss = loss_sum / max(n_valid, 1.0) if W == 1 else rt.global_mean(loss_sum, float(valid.sum()), 1.0)
        tokens = (ro.query.numel() + ro.responses.numel()) if part.weight else 0
        if step:
            rt.backward(loss)
            rt.step(opt, cfg.max_grad_norm)
            count_training(rt.unwrap(model), tokens, "policy")
        else:
            count_forward(rt.unwrap(model), tokens, "policy")

        # ---- logging: global sums over the batch's samples and non-tied pairs, one collective
        w = part.weight
        seq_kl = (lp.detach() - ref_lp)
        logp = lp.detach()
        per_sample = [seq_kl.sum(), -logp.sum(), scores.sum(), raw.sum(), ended.float().sum(),
                      ro.mask.float().sum(), torch.tensor(float(np.sum(g)) if g is not None else 0.0)]
        per_pair = [loss_i.detach() * valid, rc * valid, rr * valid, (rc - rr) * valid, (rc > rr).float() * valid,
                    (scores[chosen] - scores[rejected]) * valid]
        stats = torch.stack([x.sum().float().to(rt.device) for x in per_sample + per_pair]) * w
        tot = rt.all_sum_tensor(stats).tolist()
        n_s, n_p = 2 * B, max(n_valid, 1.0)
        row = {"update": update, "episodes": update * 2 * B,
               "objective/kl": tot[0] / n_s, "objective/entropy": tot[1] / n_s, "objective/scores": tot[2] / n_s,
               "reward/raw": tot[3] / n_s, "gold": tot[6] / n_s if g is not None else None,
               "eos_rate": tot[4] / n_s, "response_len": tot[5] / n_s,
               "loss": tot[7] / n_p if n_valid else None, "rewards/chosen": tot[8] / n_p,
               "rewards/rejected": tot[9] / n_p, "rewards/margins": tot[10] / n_p,
               "rewards/accuracies": tot[11] / n_p, "pairs/score_gap": tot[12] / n_p,
               "pairs/ties": 1.0 - n_valid / B, "time_s": time.perf_counter() - t0}
        history.append(row)
        if cfg.sample_every and (update % cfg.sample_every == 0 or update == 1):
            for k in range(min(2, len(chosen))):  # the first pairs of this process: chosen, then rejected
                for which, i in (("chosen", int(chosen[k])), ("rejected", int(rejected[k]))):
                    samples.append({"update": update, "prompt": batch_prompts[i], "response": ro.texts[i],
                                    "pair": which, "score": float(scores[i]),
                                    "gold": float(g[i]) if g is not None else None})
        if eval_hook is not None and cfg.eval_every and update % cfg.eval_every == 0:
            evals.append({"update": update, **eval_hook(update, rt.unwrap(model))})
        bar.update()
        bar.set_postfix(score=f"{row['objective/scores']:.2f}", kl=f"{row['objective/kl']:.2f}")
    bar.close()
    return PPOResult(history, samples, evals, None, time.perf_counter() - t0)
