"""Reward over-optimization (Gao, Schulman & Hilton 2022) across alignment methods on the offline testbed.

The proxy reward model is trained on simulated labellers' comparisons of SFT samples; the gold reward is exact.
Six ways to push on the proxy, all measured by d = sqrt(KL(π ‖ π_sft)) in nats^½ and all given the same sample
budget S = ``updates`` × ``batch_size`` responses drawn from a policy:

- ``bon``: best-of-n for n = 1 … n_max, KL_bon = log n − (n−1)/n, gold and proxy by the unbiased subset estimator,
  on S / n_max prompts (``--bon-prompts`` overrides);
- ``ppo``, ``grpo``, ``rloo``: online RL against the proxy, one run per KL coefficient β (``--kl-coefs``), each with
  ``updates`` updates of ``batch_size`` samples (GRPO/RLOO: batch_size / group_size prompts × group_size samples),
  evaluated every ``eval_every`` updates with :func:`~superalign.rlhf.ppo.evaluate_policy` (KL from samples);
- ``dpo``, ``ipo``: direct alignment on proxy-labelled pairs (as Rafailov et al. 2024 study it): two SFT samples for
  each of S / 2 prompts, the preferred one drawn from the proxy's Bradley–Terry probability σ(r_a − r_b)
  (``--dpo-labels bt``; ``argmax`` takes the proxy's favourite), one run per β (``--dpo-betas``), evaluated every
  ``dpo_eval_every`` optimiser steps the same way.

Every trained policy is evaluated on the same prompts with the same sampling seed, so the SFT point (KL = 0) is one
number shared by all of them. Gold and proxy gains over the SFT policy are fitted with R_bon(d) = d(α − βd) (best-of-n)
and R_rl(d) = d(α − β log d) (each RL / direct-alignment method pooled over its β values, and all online RL runs
pooled as ``rl``). :func:`summarize` turns the trajectories into the per-method table the README reports.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from ..errors import SuperalignError
from ..runs.files import write_text_atomic
from ..validate import document_cli_overrides, help_field
from .bon import FunctionalFit, bon_curve, fit_bon, fit_rl, predict_bon, predict_rl
from .jobs import (
    JobBase,
    PPOJob,
    _f,
    _frozen_dtype,
    _runtime,
    best_of_n_samples,
    check_models,
    resolve_policy,
    resolve_reward,
    run_job,
    run_ppo,
)
from .ppo import PPOConfig
from .testbed import GoldReward, sample_prompts

METHODS = ("bon", "ppo", "grpo", "rloo", "dpo", "ipo")
ONLINE = ("ppo", "grpo", "rloo")
OFFLINE = ("dpo", "ipo")
LABELS = {"bon": "best-of-n", "ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO", "ipo": "IPO"}
DPO_LABELS = ("bt", "argmax")
LEGACY_METHODS = ["bon", "ppo"]
"""The study before GRPO/RLOO/DPO/IPO joined it: with these methods, ``--bon-prompts`` equal to ``--n-prompts`` and
``--batch-size 64``, the run id is the one the old study had (see :meth:`OveroptJob.key`)."""

OVEROPT_CLI_OVERRIDES = {
    "updates": (100, 60, "each β gets its own online run: 60 updates of 64 samples take PPO at β = 0 past its gold "
                         "peak on the testbed proxy"),
    "eval_every": (0, 5, "the study is the gold/proxy trajectory along training: the policy is evaluated every 5 "
                         "updates"),
}
"""Defaults of ``superalign rlhf overopt`` that differ from :class:`~superalign.rlhf.ppo.PPOConfig` (for its online
runs; ``--ppo-lr`` is their ``lr``): ``{field: (library, cli, why)}``."""


@document_cli_overrides(PPOConfig, OVEROPT_CLI_OVERRIDES)
@dataclass
class OveroptJob(JobBase):
    """The over-optimization study on the testbed: best-of-n, PPO, GRPO, RLOO, DPO and IPO against one proxy reward
    with equal sample budgets, gold and proxy vs sqrt(KL)."""

    policy: str = _f("testbed-sft", "initial policy (the SFT model)")
    reward: str = _f("testbed-rm", "proxy reward model")
    methods: list[str] = help_field(list(METHODS), "methods to run (one colour each in the figure)", choices=METHODS)
    n_prompts: int = _f(64, "evaluation prompts: every trained policy is evaluated on them, eval_samples each")
    n_max: int = _f(64, "largest n for best-of-n (samples per prompt)")
    bon_prompts: int | None = _f(None, "best-of-n prompts (none: the equal sample budget, updates × batch_size / "
                                       "n_max)")
    kl_coefs: list[float] = help_field([0.0, 0.05], "online RL runs (PPO, GRPO, RLOO): one per KL coefficient β; "
                                                    "include 0 for the no-penalty runs")
    updates: int = _f(60, "updates per online RL run")
    batch_size: int = _f(64, "samples per update of every online RL run (GRPO/RLOO: prompts per update × group size); "
                             "the sample budget of every method is updates × batch_size")
    group_size: int = _f(4, "GRPO/RLOO samples per prompt")
    grpo_loss: str = _f("grpo", "GRPO's loss: grpo or dr_grpo (Liu et al. 2025)", choices=("grpo", "dr_grpo"))
    eval_every: int = _f(5, "evaluate the online RL policies every this many updates")
    eval_samples: int = _f(4, "samples per evaluation prompt at each evaluation")
    ppo_lr: float = _f(3e-5, "learning rate of every online RL run (PPO, GRPO, RLOO)")
    dpo_betas: list[float] = help_field([0.05, 0.5], "DPO/IPO runs: one per β (IPO's τ)")
    dpo_labels: str = _f("bt", "which sample of a pair is preferred: bt (drawn with the proxy's Bradley–Terry "
                               "probability) or argmax (the proxy's favourite)", choices=DPO_LABELS)
    dpo_epochs: int = _f(2, "DPO/IPO passes over the pairs")
    dpo_batch_size: int = _f(32, "DPO/IPO pairs per optimiser step")
    dpo_lr: float = _f(1e-4, "DPO/IPO learning rate")
    dpo_eval_every: int = _f(10, "evaluate the DPO/IPO policies every this many optimiser steps")
    tol: float = _f(0.05, "a run over-optimizes when its gold ends at least this far below its peak while its proxy "
                          "ends above its value at the gold peak")
    seed: int = _f(0, "seed")

    def __post_init__(self):
        from ..validate import (
            check_choice,
            check_int,
            check_nonempty,
            check_nonnegative,
            check_positive,
            check_seed,
        )

        for name, example in (("policy", "testbed-sft"), ("reward", "testbed-rm")):
            check_nonempty(name, getattr(self, name), example)
        if not self.methods:
            raise SuperalignError("no methods given", f"pass e.g. --methods {' '.join(METHODS)}")
        for m in self.methods:
            if m not in METHODS:
                raise SuperalignError(f"unknown method {m!r} in --methods", f"pick from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise SuperalignError(f"--methods repeats a method: {self.methods}", "pass each method once")
        if self.n_max < 2 or self.n_max & (self.n_max - 1):
            raise SuperalignError(f"n_max must be a power of two ≥ 2, got {self.n_max}", "pass e.g. --n-max 64")
        for name, values, example, needed_by in (("kl_coefs", self.kl_coefs, 0.01, ONLINE),
                                                 ("dpo_betas", self.dpo_betas, 0.1, OFFLINE)):
            if not values and set(self.methods) & set(needed_by):
                raise SuperalignError(f"no values in --{name.replace('_', '-')}",
                                      f"pass e.g. --{name.replace('_', '-')} {example} (one run each)")
            for v in values:
                (check_nonnegative if name == "kl_coefs" else check_positive)(name, v, example=example)
            if len(set(values)) != len(values):
                raise SuperalignError(f"--{name.replace('_', '-')} repeats a value: {values}", "pass each β once")
        check_int("n_prompts", self.n_prompts, example=64)
        check_int("bon_prompts", self.bon_prompts, example=64, none_ok=True)
        check_int("updates", self.updates, example=60)
        check_int("batch_size", self.batch_size, example=64)
        check_int("group_size", self.group_size, minimum=2, example=4)
        if set(self.methods) & {"grpo", "rloo"} and self.batch_size % self.group_size:
            raise SuperalignError(f"--batch-size {self.batch_size} is not a multiple of --group-size "
                                  f"{self.group_size}", "pick sizes that divide, e.g. --batch-size 64 --group-size 4")
        check_choice("grpo_loss", self.grpo_loss, ("grpo", "dr_grpo"))
        check_int("eval_every", self.eval_every, example=5)
        check_int("eval_samples", self.eval_samples, example=4)
        check_positive("ppo_lr", self.ppo_lr, example=3e-5)
        check_choice("dpo_labels", self.dpo_labels, DPO_LABELS)
        check_int("dpo_epochs", self.dpo_epochs, example=2)
        check_int("dpo_batch_size", self.dpo_batch_size, example=32)
        check_positive("dpo_lr", self.dpo_lr, example=1e-4)
        check_int("dpo_eval_every", self.dpo_eval_every, example=10)
        check_nonnegative("tol", self.tol, example=0.05)
        check_seed("seed", self.seed)
        if "bon" in self.methods and self.bon_prompts is None and self.budget < self.n_max:
            raise SuperalignError(f"the sample budget updates × batch_size = {self.budget} is smaller than --n-max "
                                  f"{self.n_max}: best-of-n would get no prompt", "pass a smaller --n-max, more "
                                  "--updates, or --bon-prompts")
        if set(self.methods) & set(OFFLINE) and self.budget < 2:
            raise SuperalignError("a sample budget of one response leaves DPO/IPO no pair",
                                  "pass more --updates or a larger --batch-size")

    @property
    def budget(self) -> int:
        """Responses every method may draw from a policy: the online runs' updates × batch_size."""
        return self.updates * self.batch_size

    @property
    def n_bon_prompts(self) -> int:
        return self.bon_prompts if self.bon_prompts is not None else self.budget // self.n_max

    def key(self) -> dict:
        """Fields of methods that are not run stay out of the id, and the old two-method study (best-of-n on the
        evaluation prompts and PPO at 64 samples per update, LEGACY_METHODS) keeps the id it had before the other
        methods joined; ``tol`` only classifies the results, so it is not in the id either."""
        d = super().key()
        d.pop("tol")
        run = set(self.methods)
        if not run & set(OFFLINE):
            for k in ("dpo_betas", "dpo_labels", "dpo_epochs", "dpo_batch_size", "dpo_lr", "dpo_eval_every"):
                d.pop(k)
        if not run & {"grpo", "rloo"}:
            d.pop("group_size")
        if "grpo" not in run:
            d.pop("grpo_loss")
        if not run & set(ONLINE):
            for k in ("kl_coefs", "eval_every", "ppo_lr"):
                d.pop(k)
        if self.methods == LEGACY_METHODS and self.n_bon_prompts == self.n_prompts and self.batch_size == 64:
            for k in ("methods", "bon_prompts", "batch_size"):
                d.pop(k)
        return d


# ----------------------------------------------------------------------------- the per-method table (golden tests)


def run_summary(traj: dict, tol: float) -> dict:
    """The numbers of one trajectory (index 0 is the SFT policy): where gold peaks, the gold gain per nat and per
    nat^½ there, the fall from the peak by the end and whether the proxy kept rising meanwhile.

    A run over-optimizes when its gold rose above the SFT policy's, then ends ≥ ``tol`` below its peak while its
    proxy ends above its value at the gold peak; the onset is the first point after the peak ≥ ``tol`` below it."""
    gold, proxy = np.asarray(traj["gold"], float), np.asarray(traj["proxy"], float)
    kl, d = np.asarray(traj["kl"], float), np.asarray(traj["d"], float)
    k = int(np.argmax(gold))
    gain = float(gold[k] - gold[0])
    drop = float(gold[k] - gold[-1])
    rise = float(proxy[-1] - proxy[k])
    over = bool(gain > 0 and drop >= tol and rise > 0)  # gold rose, then fell while the proxy kept rising
    onset = next((j for j in range(k + 1, len(gold)) if gold[j] <= gold[k] - tol), None) if over else None
    x, progress = traj.get("x") or list(range(len(gold))), traj.get("progress") or [None] * len(gold)
    return {"method": traj["method"], "beta": traj.get("beta"), "peak_gold_gain": gain, "peak_x": x[k],
            "peak_progress": progress[k], "peak_kl": float(kl[k]), "peak_d": float(d[k]),
            "gain_per_nat": gain / float(kl[k]) if kl[k] > 1e-6 else None,
            "gain_per_sqrt_nat": gain / float(d[k]) if d[k] > 1e-6 else None,
            "final_gold_gain": float(gold[-1] - gold[0]), "drop_from_peak": drop,
            "peak_proxy_gain": float(proxy[k] - proxy[0]), "final_proxy_gain": float(proxy[-1] - proxy[0]),
            "proxy_rise_after_peak": rise, "final_kl": float(kl[-1]), "overoptimized": over,
            "peak_is_last": k == len(gold) - 1,  # gold still at its best at the end: no turn seen in the budget
            "onset_d": float(d[onset]) if onset is not None else None,
            "onset_progress": progress[onset] if onset is not None else None}


def no_penalty_beta(method: str, betas: list[float]) -> float | None:
    """The β of a method's least-constrained run: 0 for online RL (None when no β = 0 run was made), the smallest
    β for DPO/IPO (β = 0 is not a valid DPO/IPO coefficient), None for best-of-n (one curve, no β)."""
    if method in ONLINE:
        return 0.0 if 0.0 in betas else None
    return min(betas) if betas else None


def summarize(trajectories: list[dict], tol: float) -> dict:
    """Per-run rows, per-method rows and the three README answers.

    - per method: its best run (highest gold gain over its β values) with the gold gain per nat (and per nat^½) of
      KL at that run's gold peak; its no-penalty run (:func:`no_penalty_beta`; best-of-n's single curve) and whether
      that run over-optimizes;
    - ``best_gain_per_nat``: the method whose best run has the highest gold gain per nat at its gold peak;
    - ``first_to_overoptimize``: among no-penalty runs that over-optimize, the method whose gold turns at the
      smallest d (``ranking`` lists them all in that order);
    - ``group_baseline``: per β, the d at PPO's gold peak next to GRPO's and RLOO's at the same β and the shifts
      (``<method>_peak_is_last``: that run's gold was still at its best at the end, so its peak d is a lower bound)."""
    rows = [run_summary(t, tol) for t in trajectories]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    per_method = []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        best = max(mine, key=lambda r: r["peak_gold_gain"])
        betas = [r["beta"] for r in mine if r["beta"] is not None]
        npb = no_penalty_beta(m, betas) if m != "bon" else None
        free = next((r for r in mine if r["beta"] == npb), None) if (m == "bon" or npb is not None) else None
        per_method.append({
            "method": m, "best_beta": best["beta"], "peak_gold_gain": best["peak_gold_gain"],
            "peak_kl": best["peak_kl"], "peak_d": best["peak_d"], "gain_per_nat": best["gain_per_nat"],
            "gain_per_sqrt_nat": best["gain_per_sqrt_nat"],
            "no_penalty_beta": npb if free is not None else None,
            "no_penalty_overoptimized": free["overoptimized"] if free is not None else None,
            "no_penalty_peak_d": free["peak_d"] if free is not None else None,
            "no_penalty_drop": free["drop_from_peak"] if free is not None else None,
            "no_penalty_proxy_rise": free["proxy_rise_after_peak"] if free is not None else None})
    per_nat = [p for p in per_method if p["gain_per_nat"] is not None]
    best_per_nat = max(per_nat, key=lambda p: p["gain_per_nat"])["method"] if per_nat else None
    ranking = sorted((p for p in per_method if p["no_penalty_overoptimized"]), key=lambda p: p["no_penalty_peak_d"])
    group = []
    for beta in dict.fromkeys(r["beta"] for r in rows if r["method"] == "ppo"):
        mine = {r["method"]: r for r in rows if r["method"] in ONLINE and r["beta"] == beta}
        at = {m: r["peak_d"] for m, r in mine.items()}
        if "ppo" in at and len(at) > 1:
            group.append({"beta": beta, **{f"{m}_peak_d": v for m, v in at.items()},
                          **{f"{m}_minus_ppo": v - at["ppo"] for m, v in at.items() if m != "ppo"},
                          **{f"{m}_peak_is_last": r["peak_is_last"] for m, r in mine.items()}})
    return {"runs": rows, "methods": per_method,
            "answers": {"best_gain_per_nat": best_per_nat,
                        "first_to_overoptimize": ranking[0]["method"] if ranking else None,
                        "overoptimize_ranking": [p["method"] for p in ranking],
                        "group_baseline": group}}


def fit_curves(bon: dict | None, trajectories: list[dict], min_points: int = 3) -> dict:
    """Gao et al. fits of the gains over SFT: the best-of-n form for best-of-n (``bon_gold``/``bon_proxy``), the RL
    form for each other method pooled over its β values (``<method>_gold``/``_proxy``) and for all online RL runs
    pooled (``rl_gold``/``rl_proxy``, the old study's PPO-only fit). A fit needs ``min_points`` points with d > 0."""
    fits = {}
    if bon is not None:
        d = np.asarray(bon["d"])
        for what in ("gold", "proxy"):
            fits[f"bon_{what}"] = fit_bon(d, np.asarray(bon[what]) - bon[what][0])._asdict()
    names = dict.fromkeys(t["method"] for t in trajectories if t["method"] != "bon")  # best-of-n has its own form
    groups = {m: [t for t in trajectories if t["method"] == m] for m in names}
    groups["rl"] = [t for t in trajectories if t["method"] in ONLINE]
    for name, ts in groups.items():
        if not ts:
            continue
        d = np.concatenate([t["d"] for t in ts])
        if int((d > 0).sum()) < min_points:
            continue
        for what in ("gold", "proxy"):
            y = np.concatenate([np.asarray(t[what]) - t[what][0] for t in ts])
            fits[f"{name}_{what}"] = fit_rl(d, y)._asdict()
    return fits


# ----------------------------------------------------------------------------- the study


def _online_job(method: str, job: OveroptJob, pol: str, rm_path: str, beta: float):
    """The stored job of one online run: the same fields for every method where they mean the same."""
    common = dict(home=job.home, progress=job.progress, policy=pol, reward=rm_path, updates=job.updates,
                  batch_size=job.batch_size, kl_coef=beta, lr=job.ppo_lr, eval_every=job.eval_every, seed=job.seed,
                  sample_every=20, device=job.device, dtype=job.dtype)
    if method == "ppo":  # 16 rollouts per optimiser step at the default 64 (the old study's PPO runs, same ids)
        return PPOJob(minibatch_size=math.gcd(job.batch_size, 16), **common), run_ppo
    from .critic_free_jobs import GRPOJob, RLOOJob, run_grpo, run_rloo  # the critic-free jobs load only when asked

    cls, runner = (GRPOJob, run_grpo) if method == "grpo" else (RLOOJob, run_rloo)
    extra = {"loss_type": job.grpo_loss} if method == "grpo" else {}
    mb = {f.name: f.default for f in dataclasses.fields(cls)}.get("minibatch_size")
    if mb is not None and (mb > job.batch_size or job.batch_size % mb):  # the method's own step size where it fits
        extra["minibatch_size"] = math.gcd(job.batch_size, mb)
    return cls(group_size=job.group_size, **common, **extra), runner


def _proxy_pairs(texts: list[list[str]], proxy: np.ndarray, gold: np.ndarray, prompts: list[str], labels: str,
                 rng: np.random.Generator) -> tuple[list[dict], dict]:
    """DPO pairs from two samples per prompt, the preferred one chosen by the proxy: ``bt`` draws it with
    probability σ(r_a − r_b) (the Bradley–Terry model the proxy was trained under), ``argmax`` takes the higher
    score (ties: the first). Also the share of pairs whose preferred sample has the higher gold (among gold-unequal
    pairs) and of pairs whose two samples are the same text."""
    if labels == "bt":
        first = rng.random(len(prompts)) < 1 / (1 + np.exp(-(proxy[:, 0] - proxy[:, 1])))
    else:
        first = proxy[:, 0] >= proxy[:, 1]
    pairs, agree = [], []
    for i, p in enumerate(prompts):
        c, r = (0, 1) if first[i] else (1, 0)
        pairs.append({"prompt": p, "chosen": texts[i][c], "rejected": texts[i][r]})
        if gold[i, 0] != gold[i, 1]:
            agree.append(gold[i, c] > gold[i, r])
    return pairs, {"pairs": len(pairs), "label_gold_agreement": float(np.mean(agree)) if agree else None,
                   "identical_pairs": float(np.mean([t[0] == t[1] for t in texts]))}


def _point(e: dict) -> dict:
    kl = max(e["kl"], 0.0)  # a sample estimate of KL can come out slightly negative near the reference
    return {"kl": kl, "d": math.sqrt(kl), "proxy": e["proxy"], "gold": e["gold"]}


def _trajectory(method: str, beta, run: str | None, x_name: str, xs: list, progress: list, points: list[dict]) -> dict:
    return {"method": method, "beta": beta, "run": run, "x_name": x_name, "x": xs, "progress": progress,
            **{k: [p[k] for p in points] for k in ("kl", "d", "proxy", "gold")}}


def run_overopt(job: OveroptJob) -> dict:
    check_models(job.policy, job.reward, trust_remote_code=job.trust_remote_code)
    if set(job.methods) & {"grpo", "rloo"}:
        from . import critic_free_jobs  # noqa: F401  (fail before anything is written when they are missing)

    def body(store, out):
        import torch

        from ..models.lm import load_lm
        from .dpo import DPOConfig, train_dpo
        from .ppo import evaluate_policy
        from .reward import load_reward_model

        gold_fn = GoldReward()
        gold = lambda p, c, e: gold_fn.batch(p, c, e)  # noqa: E731
        pol = resolve_policy(job.policy, job.home, job.progress)
        rm_path = resolve_reward(job.reward, job.home, job.progress)
        rt = _runtime(job)
        tok, sft = load_lm(pol, job.home, device=rt.device, dtype=_frozen_dtype(rt))  # samples, and the reference
        _, rm = load_reward_model(rm_path, job.home, device=rt.device, dtype=_frozen_dtype(rt))
        prompts = sample_prompts(job.n_prompts, job.seed + 3)
        evp = [p for p in prompts for _ in range(job.eval_samples)]

        def evaluate(model):  # the evaluation the online runs make (same prompts, same seed)
            with rt.autocast():
                return _point(evaluate_policy(model, sft, rm, tok, evp, 24, 1.0, gold, seed=job.seed + 7))

        sft_point = evaluate(sft)
        extra, trajectories, bon = {}, [], None

        # ---- best-of-n on n_bon_prompts prompts × n_max samples
        if "bon" in job.methods:
            bp = sample_prompts(job.n_bon_prompts, job.seed + 3)
            with rt.autocast():
                texts, proxy, ended = best_of_n_samples(sft, rm, tok, bp, job.n_max, 24, 1.0, job.seed)
            g = np.array([gold_fn.batch([p] * job.n_max, t, list(e)) for p, t, e in zip(bp, texts, ended)])
            curve = bon_curve(proxy, g)
            bon = {"n": curve.n, "kl": curve.kl, "d": curve.d, "proxy": curve.proxy, "gold": curve.gold,
                   "prompts": len(bp)}
            trajectories.append({"method": "bon", "beta": None, "run": None, "x_name": "n", "x": curve.n,
                                 "progress": [math.log2(n) / math.log2(job.n_max) for n in curve.n],
                                 **{k: bon[k] for k in ("kl", "d", "proxy", "gold")}})

        # ---- online RL: one stored run per method and β, evaluated along the way
        for method in (m for m in METHODS if m in job.methods and m in ONLINE):
            for beta in job.kl_coefs:
                sub, runner = _online_job(method, job, pol, rm_path, beta)
                r = runner(sub, eval_prompts=evp)
                ev = r["metrics"]["evals"]
                trajectories.append(_trajectory(method, beta, r["id"], "update", [0] + [e["update"] for e in ev],
                                                [0.0] + [e["update"] / job.updates for e in ev],
                                                [sft_point] + [_point(e) for e in ev]))

        # ---- DPO / IPO on proxy-labelled pairs of SFT samples: budget / 2 prompts × 2 samples
        offline = [m for m in OFFLINE if m in job.methods]
        if offline:
            pp = sample_prompts(job.budget // 2, job.seed + 13)
            with rt.autocast():
                texts, proxy, ended = best_of_n_samples(sft, rm, tok, pp, 2, 24, 1.0, job.seed + 1)
            g = np.array([gold_fn.batch([p] * 2, t, list(e)) for p, t, e in zip(pp, texts, ended)])
            pairs, extra["dpo_data"] = _proxy_pairs(texts, proxy, g, pp, job.dpo_labels,
                                                    np.random.default_rng(job.seed))
            steps = job.dpo_epochs * math.ceil(len(pairs) / job.dpo_batch_size)
            for method in offline:
                for beta in job.dpo_betas:
                    torch.manual_seed(job.seed)
                    _, policy = load_lm(pol, job.home, device=rt.device)  # trained: fp32 master weights
                    cfg = DPOConfig(beta=beta, loss="ipo" if method == "ipo" else "sigmoid", epochs=job.dpo_epochs,
                                    batch_size=job.dpo_batch_size, lr=job.dpo_lr, seed=job.seed)
                    fit = train_dpo(policy, sft, tok, pairs, cfg, progress=job.progress, rt=rt,
                                    eval_hook=lambda s, m: evaluate(m), eval_every=job.dpo_eval_every)
                    ev = fit.evals
                    trajectories.append(_trajectory(method, beta, None, "step", [0] + [e["step"] for e in ev],
                                                    [0.0] + [e["step"] / steps for e in ev],
                                                    [sft_point] + [{k: e[k] for k in ("kl", "d", "proxy", "gold")}
                                                                   for e in ev]))
                    del policy

        fits = fit_curves(bon, trajectories)
        summary = summarize(trajectories, job.tol)
        plot = out / "overopt.png"
        if rt.is_main:
            plot_study(bon, trajectories, fits, plot)
        online = [t for t in trajectories if t["method"] in ONLINE]
        metrics = {"sft_gold": sft_point["gold"], "sft_proxy": sft_point["proxy"], "budget": job.budget,
                   "best_gain_per_nat": summary["answers"]["best_gain_per_nat"],
                   "first_to_overoptimize": summary["answers"]["first_to_overoptimize"], "summary": summary,
                   "fits": fits, "bon": bon, "trajectories": trajectories, **extra}
        if bon is not None:
            peak_bon = int(np.argmax(bon["gold"]))
            metrics |= {"bon_gold_max": float(max(bon["gold"])), "bon_gold_argmax_n": bon["n"][peak_bon],
                        "bon_gold_at_nmax": bon["gold"][-1], "bon_proxy_at_nmax": bon["proxy"][-1]}
        if online:  # the old study's names, over the online runs
            metrics |= {"rl_gold_max": float(max(max(t["gold"]) for t in online)),
                        "rl_gold_final": [t["gold"][-1] for t in online],
                        "rl_proxy_final": [t["proxy"][-1] for t in online],
                        "rl_kl_final": [t["kl"][-1] for t in online],
                        "rl": [{"method": t["method"], "kl_coef": t["beta"], "run": t["run"], "update": t["x"],
                                **{k: t[k] for k in ("kl", "d", "proxy", "gold")}} for t in online]}
        if rt.is_main:
            write_text_atomic(out / "overopt.json", json.dumps(metrics, indent=1))
        return metrics, {"plot": str(plot), "json": str(out / "overopt.json")}
    return run_job("rlhf-overopt", job, body)


# ----------------------------------------------------------------------------- the figure

COLOURS = {"bon": "#1f77b4", "ppo": "#d62728", "grpo": "#2ca02c", "rloo": "#ff7f0e", "dpo": "#9467bd",
           "ipo": "#8c564b"}
STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 1))), ("P", (0, (3, 1, 1, 1)))]


def draw_study(axes, bon: dict | None, trajectories: list[dict], fits: dict, fit_lines: bool = True) -> None:
    """Gold gain (``axes[0]``) and proxy gain (``axes[1]``) over SFT against d: one colour per method, one
    marker/line style per β (the i-th β of the method's list), best-of-n as points with its fit, the RL-form fit of
    each method as a thin line of its colour."""
    for ax, what in zip(axes, ("gold", "proxy")):
        if bon is not None:
            d = np.asarray(bon["d"])
            ax.plot(d, np.asarray(bon[what]) - bon[what][0], "o", color=COLOURS["bon"], ms=5, label="best-of-n")
            if fit_lines and f"bon_{what}" in fits:
                xs = np.linspace(0, d.max() * 1.05, 100)
                ax.plot(xs, predict_bon(FunctionalFit(**fits[f"bon_{what}"]), xs), "-", color=COLOURS["bon"],
                        lw=1, alpha=0.6, label="best-of-n fit d(α−βd)")
        betas = {}
        for t in trajectories:
            if t["method"] == "bon":
                continue
            i = betas.setdefault(t["method"], []).__len__()
            betas[t["method"]].append(t["beta"])
            marker, ls = STYLES[i % len(STYLES)]
            ax.plot(t["d"], np.asarray(t[what]) - t[what][0], marker=marker, ls=ls, ms=3.5, lw=1.3,
                    color=COLOURS[t["method"]], label=f"{LABELS[t['method']]} β={t['beta']:g}")
        for m in betas:
            f = fits.get(f"{m}_{what}")
            if fit_lines and f is not None:
                dmax = max(max(t["d"]) for t in trajectories if t["method"] == m)
                xs = np.linspace(1e-3, max(dmax, 1e-3) * 1.02, 100)
                ax.plot(xs, predict_rl(FunctionalFit(**f), xs), "-", color=COLOURS[m], lw=0.8, alpha=0.45)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel("d = sqrt(KL(π ‖ π_SFT))  [nats^½]")
        ax.set_ylabel(f"{what} reward − {what}(SFT)")
        ax.set_title(f"{what} reward gain over SFT", fontsize=10)


def plot_study(bon: dict | None, trajectories: list[dict], fits: dict, path) -> None:
    """The study in one figure (two panels, one legend), written atomically (a temporary file renamed over
    ``path``). Drawn without pyplot, so the caller's matplotlib state is untouched."""
    import os
    from pathlib import Path

    from ..runs.html import figure, mpl_safe

    with mpl_safe():
        fig, axes = figure(14, 5.2, ncols=2)
        draw_study(axes, bon, trajectories, fits)
        handles, labels = axes[0].get_legend_handles_labels()
        fitted = sorted(k[:-5] for k in fits if k.endswith("_gold") and k not in ("rl_gold", "bon_gold"))
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False, title="method, β",
                   title_fontsize=9)
        if fitted:
            fig.text(0.01, 0.01, "thin lines: fits d(α−β log d) per method, pooled over its β values ("
                     + ", ".join(LABELS[m] for m in fitted) + ")", fontsize=7.5, color="dimgrey")
        fig.tight_layout(rect=(0, 0.03, 0.83, 1))
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
