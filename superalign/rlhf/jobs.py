"""The RLHF jobs behind `superalign rlhf sft|rm|ppo|dpo|online-dpo|bon`: one config dataclass each, recorded in the
run store. Jobs that train a policy (PPO, DPO, online DPO) take ``--lora-rank`` (:mod:`superalign.models.lora`).

Every job is keyed by its config: rerunning a finished job returns the stored result and artefacts at once, so
chains (SFT → RM → PPO) resume where they stopped. On the offline testbed the defaults chain themselves:
``testbed-sft`` names the policy of the default SFT job and ``testbed-rm`` the reward model of the default RM
job, each trained on first use.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SuperalignError
from ..models.lm import encode_prompts, load_lm, save_lm
from ..models.lora import LoRAOptions, apply_lora, check_lora, merge_lora
from ..runs.files import write_text_atomic
from ..runs.jobs import JobBase, _f, run_job  # noqa: F401  (re-exported for the RLHF jobs)
from ..validate import check_fraction, check_int, check_nonempty, check_positive, check_seed, document_cli_overrides
from .dpo import DPOConfig, train_dpo
from .online_dpo import OnlineDPOConfig, train_online_dpo
from .ppo import PPOConfig, evaluate_policy, rollout, score_rollout, train_ppo
from .reward import RewardTrainConfig, load_reward_model, pair_accuracy, score_texts, train_reward_model
from .sft import SFTConfig, train_sft
from .testbed import GoldReward, label_pairs, sample_prompts, testbed_data

TESTBED_NAMES = ("testbed-sft", "testbed-rm")


SFT_CLI_OVERRIDES = {
    "lr": (1e-4, 3e-4, "the CLI's default policy is the small testbed LM, which a larger step finetunes in one pass"),
    "epochs": (2, 1, "one pass keeps `superalign rlhf sft` a quick CPU step of the testbed chain"),
}
"""CLI defaults of ``superalign rlhf sft`` that differ from :class:`SFTConfig`: ``{field: (library, cli, why)}``."""


@document_cli_overrides(SFTConfig, SFT_CLI_OVERRIDES)
@dataclass
class SFTJob(SFTConfig, JobBase):
    """Supervised finetuning of a causal LM on prompt/completion demonstrations."""

    policy: str = _f("testbed", "model to finetune: testbed, smollm2, hf:<id|path> or a folder")
    data: str = _f("testbed", "demonstrations: testbed (gold-filtered reviews) or a jsonl/csv/parquet file")
    prompt_col: str = _f("prompt", "prompt column of a data file")
    completion_col: str = _f("completion", "completion column of a data file")
    limit: int | None = _f(None, "use at most this many rows (none: all)")
    lr: float = _f(3e-4, "AdamW peak learning rate (cosine decay)")
    epochs: int = _f(1, "passes over the demonstrations")

    def __post_init__(self):
        super().__post_init__()
        for name, example in (("policy", "testbed"), ("data", "testbed"), ("prompt_col", "prompt"),
                              ("completion_col", "completion")):
            check_nonempty(name, getattr(self, name), example)
        check_int("limit", self.limit, example=2000, none_ok=True)


RM_CLI_OVERRIDES = {
    "lr": (5e-5, 3e-4, "the CLI's default backbone is the small testbed LM, which needs a larger step than a "
                       "pretrained model"),
}
"""CLI defaults of ``superalign rlhf rm`` that differ from :class:`RewardTrainConfig`."""


@document_cli_overrides(RewardTrainConfig, RM_CLI_OVERRIDES)
@dataclass
class RMJob(RewardTrainConfig, JobBase):
    """Reward model from comparisons (Bradley–Terry, K-wise rankings)."""

    base: str = _f("testbed-sft", "backbone: testbed-sft, testbed, smollm2, hf:<id|path> or a folder")
    data: str = _f("testbed", "comparisons: testbed (simulated labellers), anthropic_hh, tldr, hf:<name> or a file")
    data_dir: str | None = _f(None, "shared datasets folder for anthropic_hh/tldr (else $SUPERALIGN_DATA)")
    prompt_col: str = _f("prompt", "prompt column of a data file")
    chosen_col: str = _f("chosen", "chosen-completion column of a data file")
    rejected_col: str = _f("rejected", "rejected-completion column of a data file")
    limit: int | None = _f(None, "use at most this many comparisons (none: all)")
    eval_frac: float = _f(0.1, "fraction of comparisons held out for accuracy")
    sampler: str = _f("testbed-sft", "testbed: the policy whose samples the labellers compare")
    n_prompts: int = _f(3000, "testbed: prompts with labelled comparisons")
    k: int = _f(2, "testbed: completions ranked per prompt (K-wise, C(K,2) pairs)")
    label_beta: float = _f(5.0, "testbed: labeller Bradley–Terry inverse temperature (higher = less noise)")
    lr: float = _f(3e-4, "AdamW peak learning rate (linear decay)")

    def __post_init__(self):
        super().__post_init__()
        for name, example in (("base", "testbed-sft"), ("data", "testbed"), ("sampler", "testbed-sft"),
                              ("prompt_col", "prompt"), ("chosen_col", "chosen"), ("rejected_col", "rejected")):
            check_nonempty(name, getattr(self, name), example)
        check_int("limit", self.limit, example=1000, none_ok=True)
        check_fraction("eval_frac", self.eval_frac)
        check_int("n_prompts", self.n_prompts, example=3000)
        check_int("k", self.k, minimum=2, example=2)
        check_positive("label_beta", self.label_beta, example=5.0)


@dataclass
class PolicyRLOptions(LoRAOptions):
    """The models and prompts of an online RL job (PPO, GRPO, RLOO, online DPO) and its LoRA options."""

    policy: str = _f("testbed-sft", "initial policy: testbed-sft, smollm2, hf:<id|path> or a folder")
    ref: str | None = _f(None, "reference policy for the KL term (default: the initial policy)")
    reward: str = _f("testbed-rm", "reward model that scores the samples: a folder or testbed-rm")
    prompts: str = _f("testbed", "prompts: testbed or a file with a prompt column")
    prompt_col: str = _f("prompt", "prompt column of a prompt file")


def check_policy_rl(job: PolicyRLOptions) -> None:
    """The checks every online RL job's ``__post_init__`` shares."""
    for name, example in (("policy", "testbed-sft"), ("reward", "testbed-rm"), ("prompts", "testbed"),
                          ("prompt_col", "prompt")):
        check_nonempty(name, getattr(job, name), example)
    check_lora(job)


PPO_CLI_OVERRIDES = {
    "lr": (1e-5, 3e-5, "the CLI's default policy is the small testbed LM, which tolerates a larger step"),
}
"""CLI defaults of ``superalign rlhf ppo`` that differ from :class:`PPOConfig`."""


@document_cli_overrides(PPOConfig, PPO_CLI_OVERRIDES)
@dataclass
class PPOJob(PPOConfig, PolicyRLOptions, JobBase):
    """PPO against a reward model with a KL penalty to the reference policy."""

    value: str | None = _f(None, "value model initialisation (default: the reward model, as in InstructGPT)")
    lr: float = _f(3e-5, "AdamW learning rate of the policy")
    monitor: str | None = _f(None, "a saved activation monitor (`superalign monitor watch` artefact) that scores every "
                                   "rollout sample: history rows get monitor/score and monitor/flag_rate")
    ptx_data: str | None = _f(None, "pretraining text for the PPO-ptx term (--ptx-coef > 0): a .txt file (documents "
                                    "separated by blank lines), a .jsonl/.csv/.parquet file with a text column, or "
                                    "testbed (the testbed's SFT demonstrations); default with --prompts testbed: "
                                    "testbed")

    def __post_init__(self):
        super().__post_init__()
        check_policy_rl(self)
        _check_ptx(self.ptx_coef, self.ptx_data, self.prompts)

    def key(self) -> dict:
        return _ptx_key(_monitor_key(super().key(), self.monitor), self.ptx_data, self.prompts)


DPO_CLI_OVERRIDES = {
    "lr": (5e-6, 1e-4, "the library default suits pretrained LMs (as in TRL); the CLI's default policy is the small "
                       "testbed LM, which needs a larger step to move in one epoch"),
}
"""CLI defaults of ``superalign rlhf dpo`` that differ from :class:`DPOConfig`."""


@document_cli_overrides(DPOConfig, DPO_CLI_OVERRIDES)
@dataclass
class DPOJob(DPOConfig, LoRAOptions, JobBase):
    """DPO on preference pairs."""

    policy: str = _f("testbed-sft", "initial policy (also the reference unless --ref)")
    ref: str | None = _f(None, "reference policy (default: the initial policy)")
    data: str = _f("testbed", "pairs: testbed (simulated labellers), anthropic_hh, tldr, hf:<name> or a file")
    data_dir: str | None = _f(None, "shared datasets folder (else $SUPERALIGN_DATA)")
    limit: int | None = _f(None, "use at most this many pairs (none: all; testbed: 3000)")
    lr: float = _f(1e-4, "AdamW peak learning rate (linear decay)")

    def __post_init__(self):
        super().__post_init__()
        for name, example in (("policy", "testbed-sft"), ("data", "testbed")):
            check_nonempty(name, getattr(self, name), example)
        check_int("limit", self.limit, example=1000, none_ok=True)
        check_lora(self)

    def key(self) -> dict:
        """The sigmoid loss, the only one before IPO, stays out of the id: DPO runs stored earlier keep theirs
        (and so do full-finetuning runs, stored before LoRA)."""
        d = super().key()
        if d.get("loss") == "sigmoid":
            d.pop("loss")
        return d


ONLINE_DPO_CLI_OVERRIDES = {
    "lr": (5e-6, 1e-4, "the library default suits pretrained LMs (as DPO's); the CLI's default policy is the small "
                       "testbed LM, which needs a larger step"),
}
"""CLI defaults of ``superalign rlhf online-dpo`` that differ from :class:`OnlineDPOConfig`."""


@document_cli_overrides(OnlineDPOConfig, ONLINE_DPO_CLI_OVERRIDES)
@dataclass
class OnlineDPOJob(OnlineDPOConfig, PolicyRLOptions, JobBase):
    """Online DPO: pairs sampled from the current policy, ranked by a reward model (Guo et al. 2024)."""

    lr: float = _f(1e-4, "AdamW learning rate (constant)")

    def __post_init__(self):
        super().__post_init__()
        check_policy_rl(self)


@dataclass
class BoNJob(JobBase):
    """Best-of-n sampling: n samples per prompt, the reward model keeps the best."""

    policy: str = _f("testbed-sft", "policy to sample from")
    reward: str = _f("testbed-rm", "reward model folder (or testbed-rm)")
    prompts: str = _f("testbed", "prompts: testbed or a file with a prompt column")
    prompt_col: str = _f("prompt", "prompt column of a prompt file")
    n: int = _f(16, "samples per prompt")
    n_prompts: int = _f(64, "prompts to use (testbed or the file's first ones)")
    response_len: int = _f(24, "maximum new tokens per sample")
    temperature: float = _f(1.0, "sampling temperature")
    seed: int = _f(0, "sampling seed")
    monitor: str | None = _f(None, "a saved activation monitor (`superalign monitor watch` artefact): every sample's "
                                   "score is stored")
    drop_flagged: bool = _f(False, "drop samples the monitor flags before choosing the best (a prompt whose samples "
                                   "are all flagged keeps its lowest-scoring one)")

    def __post_init__(self):
        for name, example in (("policy", "testbed-sft"), ("reward", "testbed-rm"), ("prompts", "testbed"),
                              ("prompt_col", "prompt")):
            check_nonempty(name, getattr(self, name), example)
        check_int("n", self.n, example=16)
        check_int("n_prompts", self.n_prompts, example=64)
        check_int("response_len", self.response_len, example=24)
        check_positive("temperature", self.temperature, example=1.0)
        check_seed("seed", self.seed)
        if self.drop_flagged and not self.monitor:
            raise SuperalignError("--drop-flagged needs --monitor", "pass the folder of a calibrated monitor")

    def key(self) -> dict:
        d = _monitor_key(super().key(), self.monitor)
        if not d.get("drop_flagged"):
            d.pop("drop_flagged", None)
        return d


def _monitor_key(d: dict, monitor: str | None) -> dict:
    """A run id with a monitor includes the content of its files (a recalibrated monitor is a new run); without one
    it is the id the job had before monitors existed."""
    from pathlib import Path

    from ..monitor.runtime import monitor_fingerprint

    if not monitor:
        d.pop("monitor", None)
    else:
        d["monitor_fingerprint"] = monitor_fingerprint(monitor) if Path(monitor).is_dir() else None
    return d


def _check_ptx(ptx_coef: float, ptx_data: str | None, prompts: str) -> None:
    """PPO-ptx needs pretraining text, and pretraining text needs PPO-ptx; a named file must exist (its content
    enters the run id)."""
    from pathlib import Path

    if ptx_data is not None:
        check_nonempty("ptx_data", ptx_data, "texts.txt")
        if ptx_coef == 0:
            raise SuperalignError("--ptx-data is only used by the PPO-ptx term, which --ptx-coef 0 turns off",
                                  "pass --ptx-coef > 0 (InstructGPT: 27.8) or drop --ptx-data")
        path = Path(ptx_data[5:] if ptx_data.startswith("file:") else ptx_data).expanduser()
        if ptx_data != "testbed" and not path.is_file():
            raise SuperalignError(f"--ptx-data {ptx_data} does not exist" + (" (it is a folder)" if path.is_dir()
                                                                             else ""),
                                  "pass a .txt/.jsonl/.csv/.parquet file of pretraining text, or testbed")
    elif ptx_coef > 0 and prompts != "testbed":
        raise SuperalignError(f"--ptx-coef {ptx_coef} needs pretraining text: the testbed's is used only with "
                              "--prompts testbed", "pass --ptx-data <file> (or --ptx-data testbed), or --ptx-coef 0")


def _ptx_key(d: dict, ptx_data: str | None, prompts: str) -> dict:
    """Without --ptx-data (or with the testbed's, which --prompts testbed uses anyway) the id is the one PPO had
    before the option existed; with a file, the id includes the file's content."""
    from ..data.fingerprint import file_fingerprint

    if ptx_data is None or (ptx_data == "testbed" and prompts == "testbed"):
        d.pop("ptx_data", None)
    elif ptx_data != "testbed":
        d["ptx_data_fingerprint"] = file_fingerprint(ptx_data[5:] if ptx_data.startswith("file:") else ptx_data)
    return d


def _ptx_rows(job) -> list[dict] | None:
    """The PPO-ptx rows of a job (loaded and checked before anything is written): pretraining documents of
    --ptx-data, or the testbed's SFT demonstrations."""
    from .lm import load_documents

    if job.ptx_coef == 0:
        return None
    if job.ptx_data is None or job.ptx_data == "testbed":
        return testbed_data(n_sft=2000, seed=job.seed).sft
    return load_documents(job.ptx_data)


def _load_watch(monitor: str | None, policy: str, home, trust_remote_code: bool, need_threshold: bool = False):
    """The saved monitor, checked against the policy's config (hidden size, layer) before anything is written."""
    if not monitor:
        return None
    from ..monitor.runtime import load_monitor

    mon = load_monitor(monitor, policy, home, trust_remote_code)
    if need_threshold and mon.threshold is None:
        raise SuperalignError(f"the monitor in {monitor} has no threshold", "calibrate it (superalign monitor watch)")
    return mon


# ----------------------------------------------------------------------------- running and recording


def check_models(*names: str | None, trust_remote_code: bool = False) -> None:
    """Fail before anything is written when a model name or path cannot be loaded (configs only: cheap)."""
    from transformers import AutoConfig

    from ..models.lm import resolve_lm_path
    from ..models.registry import from_pretrained as _from_pretrained
    from ..validate import checkpoint_kind
    from .reward import check_reward_model_dir, is_reward_model_dir

    for name in names:
        if name is not None and is_reward_model_dir(name):
            check_reward_model_dir(name)
            continue
        if name is None or name in ("testbed", "smollm2") + TESTBED_NAMES:
            continue
        if (kind := checkpoint_kind(name)) and kind != "a reward model":
            raise SuperalignError(f"{name} is {kind}, not a language model", "pass a policy or reward-model folder, "
                                  "testbed, smollm2 or hf:<id|path>")
        path, kw = resolve_lm_path(name)
        if not kw:
            _from_pretrained(AutoConfig.from_pretrained, name, path, trust_remote_code=trust_remote_code)


def resolve_policy(name: str, home, progress: bool = True) -> str:
    if name == "testbed-sft":
        return run_sft(SFTJob(home=home, progress=progress))["artefacts"]["model"]
    if name == "testbed-rm":
        raise SuperalignError("testbed-rm is a reward model, not a policy", "pass --policy testbed-sft")
    return name


def resolve_reward(name: str, home, progress: bool = True) -> str:
    if name == "testbed-rm":
        return run_rm(RMJob(home=home, progress=progress))["artefacts"]["model"]
    return resolve_policy(name, home, progress)


def _runtime(job: JobBase):
    """The job's device, precision and data-parallel group (``accelerate launch``)."""
    from ..train.distributed import Runtime

    return Runtime.create(job.device, job.dtype)


def _frozen_dtype(rt) -> torch.dtype | None:
    """The dtype of models that are never trained in a job (a reference policy, a reward model that only scores, a
    policy that only samples): on a GPU they are kept in the run's low precision (bf16/fp16) — half the memory, and
    autocast would compute in it anyway; only trained models need fp32 master weights. On the CPU they stay fp32, so
    CPU results do not change."""
    return rt.autocast_dtype if rt.device.type == "cuda" else None


def _save_policy(rt, model, tok, path, meta: dict) -> None:
    """Rank 0 writes the trained policy (the other processes hold the same weights and write nothing)."""
    if rt.is_main:
        save_lm(rt.unwrap(model), tok, path, meta)


def run_sft(job: SFTJob) -> dict:
    # data are loaded and validated before anything is written
    if job.data == "testbed":
        rows = testbed_data(n_sft=job.limit or 2000, seed=job.seed).sft
    else:
        from .data import load_sft
        rows = load_sft(job.data, job.prompt_col, job.completion_col, job.limit)

    check_models(job.policy, trust_remote_code=job.trust_remote_code)

    def body(store, out):
        torch.manual_seed(job.seed)
        rt = _runtime(job)
        tok, model = load_lm(resolve_policy(job.policy, job.home, job.progress), job.home, job.trust_remote_code,
                             device=rt.device)
        fit = train_sft(model, tok, rows, job, progress=job.progress, rt=rt)
        _save_policy(rt, model, tok, out / "model", {"kind": "rlhf-sft", "config": job.key()})
        return ({"loss_first": fit.losses[0], "loss_last": float(np.mean(fit.losses[-10:])), "tokens": fit.tokens,
                 "tokens_per_s": fit.tokens / fit.wall_s, "wall_s": fit.wall_s, "rows": len(rows),
                 "losses": fit.losses}, {"model": str(out / "model")})
    return run_job("rlhf-sft", job, body)


def _testbed_comparisons(job, sampler: str, n_prompts: int, k: int, label_beta: float,
                         seed: int, rt=None) -> tuple[list[dict], dict]:
    """Rankings of K samples per prompt from ``sampler``, ordered by simulated labellers (Plackett–Luce with
    scores label_beta·gold, the K-wise form of Bradley–Terry noise), plus the gold rewards for diagnostics."""
    gold = GoldReward()
    # every process samples the same comparisons (same seed): cheap next to training, and no data to exchange
    device, dtype = (rt.device, _frozen_dtype(rt)) if rt is not None else (None, None)
    tok, policy = load_lm(resolve_policy(sampler, job.home, job.progress), job.home, job.trust_remote_code,
                          device=device, dtype=dtype)
    prompts = sample_prompts(n_prompts, seed + 11)
    ids = encode_prompts(tok, prompts)
    gen = torch.Generator().manual_seed(seed)
    cfg = PPOConfig(response_len=24, batch_size=1, minibatch_size=1)
    comps = []
    for _ in range(k):
        texts = []
        for b in range(0, len(ids), 256):
            with rt.autocast() if rt is not None else contextlib.nullcontext():
                texts += rollout(policy, tok, ids[b:b + 256], cfg, gen).texts
        comps.append(texts)
    rng = np.random.default_rng(seed)
    rows, golds = [], []
    for i, p in enumerate(prompts):
        cand = [comps[j][i] for j in range(k)]
        g = gold.batch([p] * k, cand)
        if k == 2:  # Bradley–Terry directly
            first = bool(label_pairs(g[:1], g[1:], label_beta, rng)[0])
            order = [0, 1] if first else [1, 0]
        else:  # Plackett–Luce: Gumbel-perturbed scores give a ranking with BT pairwise marginals
            order = list(np.argsort(-(label_beta * g + rng.gumbel(size=k))))
        rows.append({"prompt": p, "completions": [cand[j] for j in order]})
        golds.append([float(g[j]) for j in order])
    return rows, {"golds": golds}


def run_rm(job: RMJob) -> dict:
    from .data import load_preferences, preferences_to_rankings

    pairs = None
    if job.data != "testbed":
        pairs = load_preferences(job.data, job.data_dir, job.prompt_col, job.chosen_col, job.rejected_col,
                                 limit=job.limit)
    n = len(pairs) if pairs is not None else min(job.n_prompts, job.limit or job.n_prompts)
    if n - max(1, int(round(job.eval_frac * n))) < 1:  # checked again in the body; here before the store is touched
        raise SuperalignError(f"only {n} comparisons: nothing left to train on after holding out --eval-frac "
                              f"{job.eval_frac}", "pass more data (or a larger --limit / --n-prompts)")

    check_models(job.base, job.sampler if job.data == "testbed" else None, trust_remote_code=job.trust_remote_code)

    def body(store, out):
        torch.manual_seed(job.seed)
        rt = _runtime(job)
        if pairs is None:
            rankings, extra = _testbed_comparisons(job, job.sampler, job.n_prompts, job.k, job.label_beta, job.seed,
                                                   rt)
        else:
            rankings, extra = preferences_to_rankings(pairs), {}
        if job.limit and job.data == "testbed":
            rankings = rankings[:job.limit]
        rng = np.random.default_rng(job.seed)
        perm = rng.permutation(len(rankings))
        n_eval = max(1, int(round(job.eval_frac * len(rankings))))
        if len(rankings) - n_eval < 1:
            raise SuperalignError(f"only {len(rankings)} comparisons: nothing left to train on", "pass more data")
        ev, tr = [rankings[i] for i in perm[:n_eval]], [rankings[i] for i in perm[n_eval:]]
        tok, rm = load_reward_model(resolve_policy(job.base, job.home, job.progress), job.home, job.trust_remote_code,
                                    device=rt.device)
        with rt.autocast():
            acc0 = pair_accuracy(rm, tok, _first_pairs(ev), job.max_len)
        fit = train_reward_model(rm, tok, tr, job, progress=job.progress, rt=rt)
        rm.meta.update({"base": job.base, "data": job.data})
        if rt.is_main:
            rm.save(out / "model", tok)
        with rt.autocast():
            acc = pair_accuracy(rm, tok, _first_pairs(ev), job.max_len)
        metrics = {"eval_acc": acc, "eval_acc_untrained": acc0,
                   "train_acc_last": float(np.mean(fit.accuracies[-10:])), "loss_first": fit.losses[0],
                   "loss_last": float(np.mean(fit.losses[-10:])), "tokens": fit.tokens,
                   "tokens_per_s": fit.tokens / fit.wall_s, "wall_s": fit.wall_s, "bias_shift": fit.bias_shift,
                   "n_train": len(tr), "n_eval": len(ev), "losses": fit.losses}
        if extra.get("golds"):  # testbed: agreement with the noiseless gold preference
            golds = [extra["golds"][i] for i in perm[:n_eval]]
            with rt.autocast():
                pr = [score_texts(rm, tok, [r["prompt"]] * 2, r["completions"][:2], job.max_len) for r in ev]
            agree = [(p[0] > p[1]) == (g[0] > g[1]) for p, g in zip(pr, golds) if g[0] != g[1]]
            metrics["eval_gold_agreement"] = float(np.mean(agree)) if agree else float("nan")
            metrics["label_gold_agreement"] = float(np.mean([g[0] > g[1] for g in golds if g[0] != g[1]]))
        return metrics, {"model": str(out / "model")}
    return run_job("rlhf-rm", job, body)


def _first_pairs(rankings: list[dict]) -> list[dict]:
    """Held-out accuracy is measured on each ranking's best vs second-best (for pairs: the pair itself)."""
    return [{"prompt": r["prompt"], "chosen": r["completions"][0], "rejected": r["completions"][1]} for r in rankings]


def _prompts(source: str, col: str, n: int | None, seed: int) -> list[str]:
    if source == "testbed":
        return sample_prompts(n or 512, seed + 2)
    from .data import load_prompts
    return load_prompts(source, col, n)


def run_ppo(job: PPOJob, eval_prompts: list[str] | None = None) -> dict:
    prompts = _prompts(job.prompts, job.prompt_col, None, job.seed)
    ptx = _ptx_rows(job)
    check_models(job.policy, job.ref, job.reward, job.value, trust_remote_code=job.trust_remote_code)
    watch = _load_watch(job.monitor, job.policy, job.home, job.trust_remote_code)

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
        _, rm = load_reward_model(rm_path, job.home, job.trust_remote_code, device=rt.device)
        # the value model is always trained in full (a LoRA policy's included): it is a separate network
        value = load_reward_model(resolve_reward(job.value, job.home, job.progress), job.home,
                                  job.trust_remote_code, device=rt.device)[1] if job.value else copy.deepcopy(rm)
        rm = rm.to(frozen) if frozen is not None else rm  # scoring only; the value model trains in fp32
        encode_prompts(tok, prompts, job.max_prompt_len)  # fail fast on over-long prompts
        gold, evaluate = _policy_eval(job, rt, ref, rm, tok, prompts, eval_prompts)

        if watch is not None:
            from ..monitor.runtime import check_monitor_on

            check_monitor_on(watch, policy)
        res = train_ppo(policy, ref, rm, tok, prompts, job, value_model=value, gold=gold, ptx_rows=ptx,
                        eval_hook=lambda u, m: evaluate(m), progress=job.progress, rt=rt, watch=watch)
        # the EMA (of a LoRA policy: of its adapters) or the policy, as a plain model from here on
        trained = merge_lora(res.ema if res.ema is not None else policy)
        _save_policy(rt, trained, tok, out / "model", {"kind": "rlhf-ppo", "config": job.key()})
        metrics = _policy_metrics(res, evaluate(trained), evaluate(ref))
        last = res.history[-1]
        metrics |= {k.replace("/", "_"): last[k] for k in ("monitor/score", "monitor/flag_rate") if k in last}
        return metrics | {"history": res.history, "samples": res.samples, "evals": res.evals}, \
            {"model": str(out / "model"), "reward": rm_path}
    return run_job("rlhf-ppo", job, body)


def _policy_eval(job, rt, ref, rm, tok, prompts: list[str], eval_prompts: list[str] | None):
    """(gold reward or None, ``evaluate(policy) -> {kl, proxy, eos_rate[, gold]}``) of an online RL job: the
    testbed's gold reward and held-out prompts with --prompts testbed, else the first 64 training prompts."""
    testbed = job.prompts == "testbed"
    gold = (lambda p, c, e: GoldReward().batch(p, c, e)) if testbed else None
    evp = eval_prompts or (sample_prompts(128, job.seed + 3) if testbed else prompts[:64])

    def evaluate(m):  # every process evaluates the same prompts with the same seed: identical numbers
        with rt.autocast():
            return evaluate_policy(m, ref, rm, tok, evp, job.response_len, job.temperature, gold, seed=job.seed + 7)
    return gold, evaluate


def _policy_metrics(res, final: dict, initial: dict) -> dict:
    """The summary an online RL run stores: final_*/initial_* evaluations and the last update's numbers."""
    last = res.history[-1]
    metrics = {"final_" + k: v for k, v in final.items()} | {"initial_" + k: v for k, v in initial.items()}
    return metrics | {"kl": last["objective/kl"], "score": last["objective/scores"], "eos_rate": last["eos_rate"],
                      "wall_s": res.wall_s, "episodes": last["episodes"]}


def run_policy_rl(kind: str, job, train, eval_prompts: list[str] | None = None, summary=None) -> dict:
    """Run (or return the stored run of) an online RL job without a value model: ``train(policy, ref, rm, tok,
    prompts, job, gold=, eval_hook=, progress=, rt=) -> PPOResult`` trains the policy (LoRA adapters when
    ``job.lora_rank``; saved merged, as a plain model) against the job's reward model; the stored metrics are
    :func:`run_ppo`'s plus ``summary(result) -> dict``."""
    prompts = _prompts(job.prompts, job.prompt_col, None, job.seed)  # inputs checked before anything is written
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
        gold, evaluate = _policy_eval(job, rt, ref, rm, tok, prompts, eval_prompts)
        res = train(policy, ref, rm, tok, prompts, job, gold=gold, eval_hook=lambda u, m: evaluate(m),
                    progress=job.progress, rt=rt)
        policy = merge_lora(policy)  # a plain model from here on: saved and loaded like a fully trained one
        _save_policy(rt, policy, tok, out / "model", {"kind": kind, "config": job.key()})
        metrics = _policy_metrics(res, evaluate(policy), evaluate(ref)) | (summary(res) if summary else {})
        return metrics | {"history": res.history, "samples": res.samples, "evals": res.evals}, \
            {"model": str(out / "model"), "reward": rm_path}
    return run_job(kind, job, body)


def run_online_dpo(job: OnlineDPOJob, eval_prompts: list[str] | None = None) -> dict:
    """Train (or return the stored run of) an online DPO job: metrics as :func:`run_ppo`'s, plus the last ten
    updates' mean loss, preference accuracy and margin and the share of tied pairs."""
    def summary(res) -> dict:
        tail = [r for r in res.history[-10:] if r["loss"] is not None]
        mean = (lambda k: float(np.mean([r[k] for r in tail])) if tail else None)  # noqa: E731
        return {"loss_last": mean("loss"), "accuracy_last": mean("rewards/accuracies"),
                "margin_last": mean("rewards/margins"),
                "ties": float(np.mean([r["pairs/ties"] for r in res.history]))}
    return run_policy_rl("rlhf-online-dpo", job, train_online_dpo, eval_prompts, summary)


def run_dpo(job: DPOJob) -> dict:
    from .data import load_preferences

    pairs = None if job.data == "testbed" else load_preferences(job.data, job.data_dir, limit=job.limit)
    check_models(job.policy, job.ref, trust_remote_code=job.trust_remote_code)

    def body(store, out):
        torch.manual_seed(job.seed)
        rt = _runtime(job)
        pol_name = resolve_policy(job.policy, job.home, job.progress)
        tok, policy = load_lm(pol_name, job.home, job.trust_remote_code, device=rt.device)
        policy = apply_lora(policy, job.lora_rank, job.lora_alpha)  # the policy itself for rank 0
        _, ref = load_lm(resolve_policy(job.ref, job.home, job.progress) if job.ref else pol_name, job.home,
                         job.trust_remote_code, device=rt.device, dtype=_frozen_dtype(rt))
        data = pairs
        if data is None:
            rankings, _ = _testbed_comparisons(job, pol_name, job.limit or 3000, 2, 5.0, job.seed, rt)
            data = _first_pairs(rankings)
        fit = train_dpo(policy, ref, tok, data, job, progress=job.progress, rt=rt)
        policy = merge_lora(policy)  # a plain model from here on: saved, evaluated and loaded as a full one
        _save_policy(rt, policy, tok, out / "model", {"kind": "rlhf-dpo", "config": job.key()})
        metrics = {"loss_first": fit.losses[0], "loss_last": float(np.mean(fit.losses[-10:])),
                   "tokens": fit.tokens, "tokens_per_s": fit.tokens / fit.wall_s, "wall_s": fit.wall_s,
                   "accuracy_last": float(np.mean([m["rewards/accuracies"] for m in fit.metrics[-10:]])),
                   "margin_last": float(np.mean([m["rewards/margins"] for m in fit.metrics[-10:]])),
                   "losses": fit.losses}
        if job.data == "testbed":
            rm_path = resolve_reward("testbed-rm", job.home, job.progress)
            _, rm = load_reward_model(rm_path, job.home, device=rt.device, dtype=_frozen_dtype(rt))
            gold = lambda p, c, e: GoldReward().batch(p, c, e)  # noqa: E731
            evp = sample_prompts(128, job.seed + 3)
            with rt.autocast():
                metrics |= {"final_" + k: v for k, v in evaluate_policy(policy, ref, rm, tok, evp, 24, 1.0, gold,
                                                                        seed=job.seed + 7).items()}
                metrics |= {"initial_" + k: v for k, v in evaluate_policy(ref, ref, rm, tok, evp, 24, 1.0, gold,
                                                                          seed=job.seed + 7).items()}
        return metrics, {"model": str(out / "model")}
    return run_job("rlhf-dpo", job, body)


@torch.no_grad()
def best_of_n_samples(policy, rm, tok, prompts: list[str], n: int, response_len: int, temperature: float,
                      seed: int, watch=None,
                      monitor_scores: list | None = None) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """(texts [P][n], proxy scores [P, n], ended flags [P, n]) for n samples of each prompt. With ``watch`` (a
    monitor), every sample's monitor score is appended to ``monitor_scores`` (prompt-major: reshape to [P, n])."""
    gen = torch.Generator().manual_seed(seed)
    cfg = PPOConfig(response_len=response_len, temperature=temperature, batch_size=1, minibatch_size=1)
    ids = encode_prompts(tok, prompts)
    flat = [i for i in range(len(prompts)) for _ in range(n)]
    texts, scores, ended = [], [], []
    for b in range(0, len(flat), 256):
        ro = rollout(policy, tok, [ids[i] for i in flat[b:b + 256]], cfg, gen, watch=watch)
        if watch is not None:
            monitor_scores += ro.monitor.tolist()
        texts += ro.texts
        ended += ro.ended
        scores += score_rollout(rm, ro).tolist()
    P = len(prompts)
    return ([texts[i * n:(i + 1) * n] for i in range(P)], np.array(scores).reshape(P, n),
            np.array(ended).reshape(P, n))


def run_bon(job: BoNJob) -> dict:
    prompts = _prompts(job.prompts, job.prompt_col, job.n_prompts, job.seed)
    check_models(job.policy, job.reward, trust_remote_code=job.trust_remote_code)
    watch = _load_watch(job.monitor, job.policy, job.home, job.trust_remote_code, need_threshold=job.drop_flagged)

    def body(store, out):
        rt = _runtime(job)  # sampling and scoring only: every model in the low precision on a GPU
        tok, policy = load_lm(resolve_policy(job.policy, job.home, job.progress), job.home, job.trust_remote_code,
                              device=rt.device, dtype=_frozen_dtype(rt))
        _, rm = load_reward_model(resolve_reward(job.reward, job.home, job.progress), job.home, job.trust_remote_code,
                                  device=rt.device, dtype=_frozen_dtype(rt))
        if watch is not None:
            from ..monitor.runtime import check_monitor_on

            check_monitor_on(watch, policy)
        mon_flat: list[float] = []
        with rt.autocast():
            texts, proxy, ended = best_of_n_samples(policy, rm, tok, prompts, job.n, job.response_len,
                                                    job.temperature, job.seed, watch=watch, monitor_scores=mon_flat)
        best = proxy.argmax(1)
        monitor_metrics, mon = {}, None
        if watch is not None:
            mon = np.asarray(mon_flat).reshape(proxy.shape)
            monitor_metrics = {"monitor_mean": float(mon.mean())}
            if watch.threshold is not None:
                flagged = mon > watch.threshold
                monitor_metrics |= {"flag_rate": float(flagged.mean()),
                                    "best_flag_rate_unfiltered": float(flagged[np.arange(len(best)), best].mean())}
                if job.drop_flagged:  # flagged samples cannot win; all flagged: the least suspicious one is kept
                    best = np.where(flagged.all(1), mon.argmin(1), np.where(flagged, -np.inf, proxy).argmax(1))
                    monitor_metrics |= {"dropped_share": float(flagged.mean()),
                                        "prompts_all_flagged": float(flagged.all(1).mean())}
                monitor_metrics["best_flag_rate"] = float(flagged[np.arange(len(best)), best].mean())
        rows = [{"prompt": p, "best": t[b], "score": float(s[b]), "n": job.n}
                for p, t, s, b in zip(prompts, texts, proxy, best)]
        if mon is not None:
            for r, m, b in zip(rows, mon, best):
                r |= {"monitor": float(m[b]), "monitor_scores": [float(x) for x in m]}
        chosen = proxy[np.arange(len(best)), best]
        metrics = {"proxy_best": float(chosen.mean()), "proxy_mean": float(proxy.mean()),
                   "kl_bon": float(math.log(job.n) - (job.n - 1) / job.n)} | monitor_metrics
        if job.prompts == "testbed":
            gold = GoldReward()
            g = np.array([gold.batch([p] * job.n, t, list(e)) for p, t, e in zip(prompts, texts, ended)])
            metrics |= {"gold_best": float(g[np.arange(len(prompts)), best].mean()), "gold_mean": float(g.mean())}
            for r, gb in zip(rows, g[np.arange(len(prompts)), best]):
                r["gold"] = float(gb)
        path = out / "best_of_n.jsonl"
        if rt.is_main:
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        return metrics | {"samples": rows[:8]}, {"best_of_n": str(path)}
    return run_job("rlhf-bon", job, body)


def job_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
