"""`superalign interp cache|sae`: one config dataclass per job, recorded in the run store (keyed by config)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SuperalignError
from ..rlhf.jobs import JobBase, run_job
from .sae import SAEConfig, TopKSAE
from .train_sae import SAETrainConfig, evaluate_sae, train_sae


def _f(default, help_: str):
    return field(default=default, metadata={"help": help_})


@dataclass
class CacheJob(JobBase):
    """Cache a model's residual-stream activations at a hook point over a corpus."""

    model: str = _f("minilm", "model: minilm, minilm-l<k>, hf:<id|path> (encoder or causal LM)")
    texts: str = _f("textblob-subjectivity", "corpus: a registered task's texts (superalign tasks) or a data file")
    text_col: str = _f("text", "text column of a data file")
    hook: str = _f("layers.3", "hook point: embeddings or layers.<i> (output of block i)")
    max_length: int = _f(128, "tokens per text (longer texts are truncated)")
    batch_size: int = _f(32, "texts per forward pass")
    limit: int | None = _f(None, "use at most this many texts")


@dataclass
class SAEJob(SAETrainConfig, JobBase):
    """Train a TopK SAE (Gao et al. 2024) on cached activations."""

    cache: str = _f("", "activation cache folder (printed by superalign interp cache)")
    n_latents: int = _f(2048, "number of latents")
    k: int = _f(32, "active latents per token")
    aux_coef: float = _f(1 / 32, "AuxK weight (0: off)")
    dead_tokens: int = _f(20000, "tokens without firing after which a latent counts as dead")
    multi_topk: int = _f(0, "Multi-TopK multiplier (0: off; the paper uses 4)")
    eval_frac: float = _f(0.1, "fraction of tokens held out for FVU")
    batch_size: int = _f(1024, "activation vectors per step")
    epochs: int = _f(8, "passes over the activations")
    lr: float | None = _f(1e-3, "Adam learning rate (None: Gao et al.'s scaling)")

    def __post_init__(self):
        super().__post_init__()
        if not self.cache:
            raise SuperalignError("no activation cache given", "pass --cache DIR (from superalign interp cache)")
        if not 0 < self.eval_frac < 1:
            raise SuperalignError("eval_frac must be in (0, 1)", "pass e.g. --eval-frac 0.1")


def _texts(job: CacheJob) -> list[str]:
    from ..data import list_tasks, load_task
    from ..data.files import read_table

    if job.texts in list_tasks():
        texts = list(load_task(job.texts).texts)
    else:
        df = read_table(job.texts[5:] if job.texts.startswith("file:") else job.texts)
        if job.text_col not in df.columns:
            raise SuperalignError(f"{job.texts}: column {job.text_col!r} not found (columns: "
                                  f"{', '.join(map(str, df.columns))})", "pass --text-col naming the text column")
        texts = [t for t in df[job.text_col].tolist() if isinstance(t, str) and t.strip()]
    texts = texts[:job.limit] if job.limit else texts
    if not texts:
        raise SuperalignError(f"the corpus {job.texts!r} is empty", "pass a file with at least one non-empty text")
    return texts


def run_cache(job: CacheJob) -> dict:
    from ..models import resolve_model
    from ..models.registry import load_config, load_hf
    from .activations import cache_activations, parse_hook

    texts = _texts(job)
    spec = resolve_model(job.model)
    if not spec.is_transformer:
        raise SuperalignError(f"model {job.model!r} has no activations", "use minilm or hf:<id|path>")
    cfg = load_config(spec, job.trust_remote_code)
    parse_hook(job.hook, getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer"))  # fail before writing

    def body(store, out):
        tok, model, _ = load_hf(spec, job.trust_remote_code)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        folder = cache_activations(model, tok, texts, job.hook, out / "acts", model_name=job.model,
                                   max_length=job.max_length, batch_size=job.batch_size, progress=job.progress)
        import json
        meta = json.loads((folder / "meta.json").read_text())
        return {"tokens": meta["tokens"], "texts": meta["texts"], "d": meta["d"]}, {"cache": str(folder)}
    return run_job("interp-cache", job, body)


def run_sae(job: SAEJob) -> dict:
    from .activations import load_activations

    cache = load_activations(job.cache)  # validates the folder before anything is written

    def body(store, out):
        acts = cache.acts.float()
        perm = torch.randperm(len(acts), generator=torch.Generator().manual_seed(job.seed))
        n_eval = max(1, int(job.eval_frac * len(acts)))
        sae = TopKSAE(SAEConfig(d_in=acts.shape[1], n_latents=job.n_latents, k=job.k, aux_coef=job.aux_coef,
                                dead_tokens=job.dead_tokens, multi_topk=job.multi_topk), seed=job.seed)
        train_cfg = SAETrainConfig(**{f.name: getattr(job, f.name) for f in dataclasses.fields(SAETrainConfig)})
        fit = train_sae(sae, acts[perm[n_eval:]], train_cfg, progress=job.progress)
        metrics = evaluate_sae(sae, acts[perm[:n_eval]])
        metrics |= {"train_fvu_last": fit.fvu[-1], "tokens_per_s": fit.tokens / fit.wall_s, "wall_s": fit.wall_s,
                    "n_train": len(acts) - n_eval, "n_eval": n_eval}
        sae.save(out / "sae", meta={"model": cache.meta.get("model"), "hook": cache.meta.get("hook"),
                                    "cache": str(Path(job.cache))})
        return metrics, {"sae": str(out / "sae")}
    return run_job("interp-sae", job, body)


JOBS = {"cache": (CacheJob, run_cache), "sae": (SAEJob, run_sae)}
