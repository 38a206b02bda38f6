"""Reward over-optimization (Gao, Schulman & Hilton 2022) on the offline testbed.

The proxy reward model is trained on simulated labellers' comparisons of SFT samples; the gold reward is exact.
Two ways to push on the proxy, both measured by d = sqrt(KL(π ‖ π_sft)):

- best-of-n for n = 1 … n_max, KL_bon = log n − (n−1)/n, gold and proxy by the unbiased subset estimator;
- PPO against the proxy, evaluated every ``eval_every`` updates (KL estimated from samples), for each β.

Gold and proxy gains over the SFT policy are fitted with R_bon(d) = d(α − βd) and R_rl(d) = d(α − β log d).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import SuperalignError
from ..models.lm import load_lm
from ..runs.files import write_text_atomic
from ..validate import document_cli_overrides
from .bon import FunctionalFit, bon_curve, fit_bon, fit_rl, predict_bon, predict_rl
from .jobs import (
    JobBase,
    PPOJob,
    _f,
    _frozen_dtype,
    _runtime,
    best_of_n_samples,
    resolve_policy,
    resolve_reward,
    run_job,
    run_ppo,
)
from .ppo import PPOConfig
from .reward import load_reward_model
from .testbed import GoldReward, sample_prompts

OVEROPT_CLI_OVERRIDES = {
    "updates": (100, 80, "each β gets its own PPO run: 80 updates already over-optimize the testbed proxy at β 0.01"),
    "eval_every": (0, 5, "the study is the gold/proxy trajectory along PPO: the policy is evaluated every 5 updates"),
}
"""Defaults of ``superalign rlhf overopt`` that differ from :class:`~superalign.rlhf.ppo.PPOConfig` (for its PPO
runs; ``--ppo-lr`` is PPOConfig's ``lr``): ``{field: (library, cli, why)}``."""


@document_cli_overrides(PPOConfig, OVEROPT_CLI_OVERRIDES)
@dataclass
class OveroptJob(JobBase):
    """The over-optimization study on the testbed: best-of-n and PPO against a proxy reward, gold vs sqrt(KL)."""

    policy: str = _f("testbed-sft", "initial policy (the SFT model)")
    reward: str = _f("testbed-rm", "proxy reward model")
    n_prompts: int = _f(64, "evaluation prompts")
    n_max: int = _f(256, "largest n for best-of-n (samples per prompt)")
    kl_coefs: list[float] = field(default_factory=lambda: [0.01],
                                  metadata={"help": "PPO runs: one per KL coefficient β"})
    updates: int = _f(80, "PPO updates per run")
    eval_every: int = _f(5, "evaluate the PPO policy every this many updates")
    eval_samples: int = _f(4, "samples per prompt at each PPO evaluation")
    ppo_lr: float = _f(3e-5, "PPO learning rate")
    seed: int = _f(0, "seed")

    def __post_init__(self):
        if self.n_max < 2 or self.n_max & (self.n_max - 1):
            raise SuperalignError(f"n_max must be a power of two ≥ 2, got {self.n_max}", "pass e.g. --n-max 256")
        if not self.kl_coefs:
            raise SuperalignError("no KL coefficients given", "pass --kl-coefs 0.01 (one PPO run each)")
        from ..validate import check_int, check_nonempty, check_nonnegative, check_positive, check_seed

        for name, example in (("policy", "testbed-sft"), ("reward", "testbed-rm")):
            check_nonempty(name, getattr(self, name), example)
        for beta in self.kl_coefs:
            check_nonnegative("kl_coefs", beta, example=0.01)
        if len(set(self.kl_coefs)) != len(self.kl_coefs):
            raise SuperalignError(f"--kl-coefs repeats a value: {self.kl_coefs}", "pass each β once")
        check_int("n_prompts", self.n_prompts, example=64)
        check_int("updates", self.updates, example=80)
        check_int("eval_every", self.eval_every, example=5)
        check_int("eval_samples", self.eval_samples, example=4)
        check_positive("ppo_lr", self.ppo_lr, example=3e-5)
        check_seed("seed", self.seed)


def run_overopt(job: OveroptJob) -> dict:
    def body(store, out):
        gold_fn = GoldReward()
        pol = resolve_policy(job.policy, job.home, job.progress)
        rm_path = resolve_reward(job.reward, job.home, job.progress)
        rt = _runtime(job)  # best-of-n only samples and scores: both models in the low precision on a GPU
        tok, policy = load_lm(pol, job.home, device=rt.device, dtype=_frozen_dtype(rt))
        _, rm = load_reward_model(rm_path, job.home, device=rt.device, dtype=_frozen_dtype(rt))
        prompts = sample_prompts(job.n_prompts, job.seed + 3)

        # ---- best-of-n
        with rt.autocast():
            texts, proxy, ended = best_of_n_samples(policy, rm, tok, prompts, job.n_max, 24, 1.0, job.seed)
        g = np.array([gold_fn.batch([p] * job.n_max, t, list(e)) for p, t, e in zip(prompts, texts, ended)])
        curve = bon_curve(proxy, g)
        bon = {"n": curve.n, "kl": curve.kl, "d": curve.d, "proxy": curve.proxy, "gold": curve.gold}
        g0, p0 = curve.gold[0], curve.proxy[0]

        # ---- PPO runs, one per β, evaluated along the way
        rl = []
        for beta in job.kl_coefs:
            pj = PPOJob(home=job.home, progress=job.progress, policy=pol, reward=rm_path, updates=job.updates,
                        kl_coef=beta, lr=job.ppo_lr, eval_every=job.eval_every, seed=job.seed, sample_every=20,
                        device=job.device, dtype=job.dtype)
            r = run_ppo(pj, eval_prompts=[p for p in prompts for _ in range(job.eval_samples)])
            ev = [{"update": 0, "kl": 0.0, "proxy": p0, "gold": g0}] + r["metrics"]["evals"]
            rl.append({"kl_coef": beta, "run": r["id"], "update": [e["update"] for e in ev],
                       "kl": [max(e["kl"], 0.0) for e in ev], "d": [math.sqrt(max(e["kl"], 0.0)) for e in ev],
                       "proxy": [e["proxy"] for e in ev], "gold": [e["gold"] for e in ev]})

        # ---- fits on gains over the SFT policy
        fits = {}
        d = np.array(bon["d"])
        for what in ("gold", "proxy"):
            f = fit_bon(d, np.array(bon[what]) - bon[what][0])
            fits[f"bon_{what}"] = f._asdict()
        d_rl = np.concatenate([r["d"] for r in rl])
        for what in ("gold", "proxy"):
            y = np.concatenate([np.array(r[what]) - r[what][0] for r in rl])
            fits[f"rl_{what}"] = fit_rl(d_rl, y)._asdict()
        plot = out / "overopt.png"
        if rt.is_main:
            _plot(bon, rl, fits, plot)
        peak_bon = int(np.argmax(bon["gold"]))
        rl_best = max(max(r["gold"]) for r in rl)
        metrics = {"sft_gold": g0, "sft_proxy": p0,
                   "bon_gold_max": float(max(bon["gold"])), "bon_gold_argmax_n": bon["n"][peak_bon],
                   "bon_gold_at_nmax": bon["gold"][-1], "bon_proxy_at_nmax": bon["proxy"][-1],
                   "rl_gold_max": float(rl_best), "rl_gold_final": [r["gold"][-1] for r in rl],
                   "rl_proxy_final": [r["proxy"][-1] for r in rl], "rl_kl_final": [r["kl"][-1] for r in rl],
                   "fits": fits, "bon": bon, "rl": rl}
        if rt.is_main:
            write_text_atomic(out / "overopt.json", json.dumps(metrics, indent=1))
        return metrics, {"plot": str(plot), "json": str(out / "overopt.json")}
    return run_job("rlhf-overopt", job, body)


def _plot(bon: dict, rl: list[dict], fits: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex="col")
    for row, what in enumerate(("gold", "proxy")):
        ax = axes[row, 0]
        d = np.array(bon["d"])
        y = np.array(bon[what]) - bon[what][0]
        ax.plot(d, y, "o", label="best-of-n")
        for n, x, yy in zip(bon["n"], d, y):
            if n in (1, 4, 16, 64, 256):
                ax.annotate(f"n={n}", (x, yy), fontsize=7, xytext=(2, 4), textcoords="offset points")
        xs = np.linspace(0, d.max() * 1.05, 100)
        f = fits[f"bon_{what}"]
        ax.plot(xs, predict_bon(FunctionalFit(**f), xs), "-", label=f"d(α−βd): α={f['alpha']:.2f}, β={f['beta']:.2f}")
        ax.set_title(f"best-of-n: {what} reward gain")
        ax.set_ylabel(f"{what} − {what}(SFT)")
        ax.legend(fontsize=8)
        ax = axes[row, 1]
        for r in rl:
            ax.plot(r["d"], np.array(r[what]) - r[what][0], "o-", ms=3, label=f"PPO β={r['kl_coef']}")
        dmax = max(max(r["d"]) for r in rl)
        xs = np.linspace(1e-3, dmax * 1.05, 100)
        f = fits[f"rl_{what}"]
        ax.plot(xs, predict_rl(FunctionalFit(**f), xs), "-",
                label=f"d(α−β log d): α={f['alpha']:.2f}, β={f['beta']:.2f}")
        ax.set_title(f"PPO: {what} reward gain")
        ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("d = sqrt(KL(π ‖ π_SFT)) [nats^½]")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
