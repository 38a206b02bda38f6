"""`superalign interp cache|sae`: one config dataclass per job, recorded in the run store (keyed by config)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SuperalignError
from ..runs.jobs import JobBase, _f, run_job, stored_result
from ..validate import (
    check_fraction,
    check_int,
    check_nonempty,
    check_nonnegative,
    document_cli_overrides,
)
from .relu_sae import ReLUSAE, ReLUSAEConfig
from .sae import SAEConfig, TopKSAE
from .sae_base import architecture_names
from .train_sae import SAETrainConfig, evaluate_sae, train_sae


@dataclass
class CacheJob(JobBase):
    """Cache a model's residual-stream activations at a hook point over a corpus."""

    model: str = _f("minilm", "model: minilm, minilm-l<k>, hf:<id|path> (encoder or causal LM)")
    texts: str = _f("textblob-subjectivity", "corpus: a registered task's texts (superalign tasks) or a data file")
    text_col: str = _f("text", "text column of a data file")
    hook: str = _f("layers.3", "hook point: embeddings or layers.<i> (output of block i)")
    max_length: int = _f(128, "tokens per text (longer texts are truncated)")
    batch_size: int = _f(32, "texts per forward pass")
    limit: int | None = _f(None, "use at most this many texts (none: all)")

    def __post_init__(self):
        for name, example in (("model", "minilm"), ("texts", "textblob-subjectivity"), ("text_col", "text"),
                              ("hook", "layers.3")):
            check_nonempty(name, getattr(self, name), example)
        check_int("max_length", self.max_length, minimum=2, example=128)
        check_int("batch_size", self.batch_size, example=32)
        check_int("limit", self.limit, example=1000, none_ok=True)

    def key(self) -> dict:
        # the corpus's content, not only its name, identifies the cache: an edited corpus file is a new run
        return {**super().key(), "texts": _corpus_ref(self.texts, fingerprint=True)}


SAE_CLI_OVERRIDES = {
    "batch_size": (4096, 1024, "the CLI's default cache (MiniLM over a small offline corpus) has ~10⁵ tokens: smaller "
                               "batches give enough steps"),
    "epochs": (1, 8, "the same small default cache: 8 passes reach a stable FVU (docs/interp.md)"),
    "lr": (None, 1e-3, "Gao et al.'s scaled rate (None) is tuned for long runs; 1e-3 converges within 8 epochs on "
                       "the default cache"),
    "n_latents": (4096, 2048, "the default cache's 384-wide activations: 2048 latents is already 5× overcomplete"),
    "dead_tokens": (10_000_000, 20000, "a small cache has far fewer than 10⁷ tokens: a latent silent for 20000 "
                                       "counts as dead"),
}
"""CLI defaults of ``superalign interp sae`` that differ from the library's :class:`SAETrainConfig`,
:class:`SAEConfig` and :class:`ReLUSAEConfig`: ``{field: (library, cli, why)}``."""


@document_cli_overrides((SAETrainConfig, SAEConfig, ReLUSAEConfig), SAE_CLI_OVERRIDES)
@dataclass
class SAEJob(SAETrainConfig, JobBase):
    """Train a TopK (Gao et al. 2024) or ReLU + L1 (Anthropic, April 2024) SAE on cached activations; on a causal
    LM's cache also measure CE/KL loss recovered with the SAE spliced into the model."""

    cache: str = _f("", "activation cache folder (printed by superalign interp cache)")
    architecture: str = _f("topk", "topk (Gao et al. 2024) or relu (ReLU + decoder-norm-weighted L1)",
                           choices=architecture_names)
    n_latents: int = _f(2048, "number of latents")
    k: int = _f(32, "topk: active latents per token")
    l1_coef: float = _f(5.0, "relu: L1 weight relative to FVU, on the scale of Anthropic's λ (higher: sparser)")
    loss_recovered_texts: int = _f(64, "causal LMs: held-out texts (not trained on) for CE/KL loss recovered; 0: skip")
    aux_coef: float = _f(1 / 32, "AuxK weight (0: off)")
    dead_tokens: int = _f(20000, "tokens without firing after which a latent counts as dead")
    multi_topk: int = _f(0, "Multi-TopK multiplier (0: off; the paper uses 4)")
    eval_frac: float = _f(0.1, "fraction of tokens held out for FVU")
    batch_size: int = _f(1024, "activation vectors per step")
    epochs: int = _f(8, "passes over the activations")
    lr: float | None = _f(1e-3, "Adam learning rate (None: Gao et al.'s scaling)")
    topk: SAEConfig = dataclasses.field(default_factory=SAEConfig, metadata={
        "help": "the rest of the TopK SAE's library config (superalign.interp.sae.SAEConfig); its d_in comes from the "
                "cache and the flags above set the fields they name",
        "skip": ("d_in", "n_latents", "k", "aux_coef", "dead_tokens", "multi_topk")})

    def key(self) -> dict:
        # Of the nested config only what no flag above sets identifies the run, and only when not at its default:
        # runs from before --aux-k/--multi-topk-coef existed keep their ids.
        d = super().key()
        lib, default = d.pop("topk"), SAEConfig()
        extra = {k: v for k, v in lib.items() if k in ("aux_k", "multi_topk_coef") and v != getattr(default, k)}
        return d | ({"topk": extra} if extra else {})

    def __post_init__(self):
        super().__post_init__()
        if not self.cache:
            raise SuperalignError("no activation cache given", "pass --cache DIR (from superalign interp cache)")
        check_fraction("eval_frac", self.eval_frac)
        if self.architecture not in ("topk", "relu"):
            raise SuperalignError(f"unknown SAE architecture {self.architecture!r}", "pass --architecture topk or relu")
        if not self.l1_coef >= 0:
            raise SuperalignError(f"l1_coef must be ≥ 0, got {self.l1_coef}", "pass e.g. --l1-coef 5")
        check_nonnegative("l1_coef", self.l1_coef, example=5.0)
        check_int("loss_recovered_texts", self.loss_recovered_texts, minimum=0, example=64)
        check_int("n_latents", self.n_latents, example=2048)
        check_int("k", self.k, example=32, maximum=self.n_latents if self.architecture == "topk" else None)
        check_nonnegative("aux_coef", self.aux_coef, example=1 / 32)
        check_int("dead_tokens", self.dead_tokens, example=20000)
        check_int("multi_topk", self.multi_topk, minimum=0, example=4)
        if self.architecture == "topk" and self.multi_topk * self.k > self.n_latents:
            raise SuperalignError(f"--multi-topk {self.multi_topk} × --k {self.k} exceeds --n-latents "
                                  f"{self.n_latents}", "lower --multi-topk or --k")


def _texts(job: CacheJob) -> list[str]:
    from ..data import list_tasks, load_task
    from ..data.files import read_table

    if job.texts in list_tasks():
        texts = list(load_task(job.texts).texts)
    else:
        df = read_table(job.texts[5:] if job.texts.startswith("file:") else job.texts)
        if df.empty:
            raise SuperalignError(f"the corpus {job.texts!r} has no rows", "pass a file with at least one text")
        if job.text_col not in df.columns:
            raise SuperalignError(f"{job.texts}: column {job.text_col!r} not found (columns: "
                                  f"{', '.join(map(str, df.columns))})", "pass --text-col naming the text column")
        texts = [t for t in df[job.text_col].tolist() if isinstance(t, str) and t.strip()]
    texts = texts[:job.limit] if job.limit else texts
    if not texts:
        raise SuperalignError(f"the corpus {job.texts!r} is empty", "pass a file with at least one non-empty text")
    return texts


def _corpus_ref(texts: str, fingerprint: bool = False) -> str:
    """A corpus name that still resolves from another working directory: task names as they are, files absolute.

    ``fingerprint=True``: the name plus ``@`` and the corpus's content fingerprint (a file's sha256, a task's
    content fingerprint), the corpus's part of a cache job's identity, so an edited corpus is a new run."""
    from ..data import list_tasks
    from ..data.fingerprint import file_fingerprint
    from ..data.tasks import task_fingerprint

    path = Path(texts[5:] if texts.startswith("file:") else texts)
    is_task = texts in list_tasks()
    ref = texts if is_task or not path.exists() else str(path.resolve())
    if not fingerprint:
        return ref
    if is_task:
        return f"{ref}@{task_fingerprint(texts)}"
    return f"{ref}@{file_fingerprint(path)}" if path.is_file() else ref  # a missing file fails in _texts


def run_cache(job: CacheJob) -> dict:
    from ..models import resolve_model
    from ..models.placement import resolve_dtype
    from ..models.registry import load_config, load_hf
    from .activations import cache_activations, parse_hook, repair_cache_run

    texts = _texts(job)
    spec = resolve_model(job.model)
    if not spec.is_transformer:
        raise SuperalignError(f"model {job.model!r} has no activations", "use minilm or hf:<id|path>")
    cfg = load_config(spec, job.trust_remote_code)
    parse_hook(job.hook, getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)  # fail before writing

    device, precision = job.placement()  # an absent device is a one-line error before anything is written

    def body(store, out):
        # inference only: the weights load directly in the run's precision, on its device; the activations are
        # stored in that same precision (bf16 activations stay bf16 on disk: half the size, nothing lost)
        tok, model, _ = load_hf(spec, job.trust_remote_code, device=device, dtype=precision)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        folder = cache_activations(model, tok, texts, job.hook, out / "acts", model_name=job.model,
                                   max_length=job.max_length, batch_size=job.batch_size, progress=job.progress,
                                   dtype=resolve_dtype(precision))
        import json
        meta = json.loads((folder / "meta.json").read_text())
        # how to re-read the same corpus (doc i = texts[i]): run_sae needs the texts for loss recovered
        meta["texts_spec"] = {"texts": _corpus_ref(job.texts), "text_col": job.text_col, "limit": job.limit}
        (folder / ".meta.json.tmp").write_text(json.dumps(meta, indent=2))
        (folder / ".meta.json.tmp").replace(folder / "meta.json")  # atomic: the cache stays whole
        return {"tokens": meta["tokens"], "texts": meta["texts"], "d": meta["d"]}, {"cache": str(folder)}
    if (done := stored_result("interp-cache", job)) is not None:  # a damaged cache folder is a miss: recomputed
        return repair_cache_run(done, lambda folder: body(None, folder.parent))
    return run_job("interp-cache", job, body)


def _held_out_texts(job: SAEJob, cache) -> tuple[torch.Tensor | None, list[str], str]:
    """(doc ids, texts, why skipped) for loss recovered: ``loss_recovered_texts`` texts of a causal LM's cache,
    drawn with the job's seed (at most half the corpus). Encoders have no LM loss: nothing, silently."""
    from ..models import resolve_model
    from ..models.registry import is_causal_config, load_config

    name = cache.meta.get("model")
    if not job.loss_recovered_texts or not name:
        return None, [], ""
    try:
        spec = resolve_model(name)
        causal = spec.is_transformer and is_causal_config(load_config(spec, job.trust_remote_code))
    except SuperalignError as e:
        raise SuperalignError(f"cannot load the cache's model for loss recovered: {e}",
                              "pass --loss-recovered-texts 0 to skip it") from None
    if not causal:
        return None, [], ""
    spec_t = cache.meta.get("texts_spec")
    if spec_t is None:
        return None, [], "the cache does not record its corpus (made by an older version): re-run interp cache"
    texts = _texts(CacheJob(texts=spec_t["texts"], text_col=spec_t["text_col"], limit=spec_t["limit"]))
    if len(texts) != cache.meta["texts"]:
        raise SuperalignError(f"the corpus {spec_t['texts']!r} now has {len(texts)} texts, the cache was made from "
                              f"{cache.meta['texts']}",
                              "re-run superalign interp cache, or pass --loss-recovered-texts 0")
    n = min(job.loss_recovered_texts, len(texts) // 2)
    if n == 0:
        return None, [], "the corpus has a single text: nothing to hold out"
    docs = torch.randperm(len(texts), generator=torch.Generator().manual_seed(job.seed))[:n].sort().values
    return docs, [texts[i] for i in docs.tolist()], ""


def run_sae(job: SAEJob) -> dict:
    from .activations import load_activations

    if (done := stored_result("interp-sae", job)) is not None:
        return done
    cache = load_activations(job.cache)  # validates the folder before anything is written
    held_docs, held_texts, note = _held_out_texts(job, cache)  # so is the corpus, for loss recovered
    acts = cache.acts.float()
    if not torch.isfinite(acts).all():  # a bad input, found before a failed run is recorded
        raise SuperalignError(f"the activation cache {job.cache} contains NaN or inf",
                              "re-run superalign interp cache (the model produced non-finite activations)")
    # the loss-recovered texts' tokens are kept out of training and of the FVU split (none for encoders)
    pool = torch.arange(len(acts)) if held_docs is None else (~torch.isin(cache.doc, held_docs)).nonzero()[:, 0]
    if len(pool) - max(1, int(job.eval_frac * len(pool))) < 1:
        raise SuperalignError(f"the activation cache {job.cache} has {len(pool)} usable tokens: none left to train "
                              f"on after holding out --eval-frac {job.eval_frac}", "cache more texts")

    device, precision = job.placement()  # an absent device is a one-line error before anything is written

    def body(store, out):
        from ..runs.files import write_json_atomic
        from ..train.distributed import Runtime

        # under `accelerate launch` every process trains its share of each global batch; rank 0 evaluates and
        # writes (run_job gives the others a scratch folder and returns rank 0's record)
        rt = Runtime.create(job.device, job.dtype)
        perm = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(job.seed))]
        n_eval = max(1, int(job.eval_frac * len(pool)))
        if job.architecture == "relu":
            sae = ReLUSAE(ReLUSAEConfig(d_in=acts.shape[1], n_latents=job.n_latents, l1_coef=job.l1_coef,
                                        dead_tokens=job.dead_tokens), seed=job.seed)
        else:
            # the nested library config (--aux-k, --multi-topk-coef) with the job's own fields and the cache's width
            sae = TopKSAE(dataclasses.replace(job.topk, d_in=acts.shape[1], n_latents=job.n_latents, k=job.k,
                                              aux_coef=job.aux_coef, dead_tokens=job.dead_tokens,
                                              multi_topk=job.multi_topk), seed=job.seed)
        train_cfg = SAETrainConfig(**{f.name: getattr(job, f.name) for f in dataclasses.fields(SAETrainConfig)})
        fit = train_sae(sae, acts[perm[n_eval:]], train_cfg, progress=job.progress and rt.is_main, rt=rt)
        if not rt.is_main:
            return {}, {}
        metrics = evaluate_sae(sae, acts[perm[:n_eval]])
        metrics |= {"train_fvu_last": fit.fvu[-1], "tokens_per_s": fit.tokens / fit.wall_s, "wall_s": fit.wall_s,
                    "n_train": len(pool) - n_eval, "n_eval": n_eval, "world_size": rt.world_size}
        if held_texts:
            from ..models.lm import load_lm
            from .loss_recovered import loss_recovered

            # the LM in the run's precision on its device; the SAE (fp32 weights, same device) reconstructs from
            # the LM's activations and its output is cast back to the LM's dtype at the splice
            tok, lm = load_lm(cache.meta["model"], trust_remote_code=job.trust_remote_code, require_eos=False,
                              device=rt.device, dtype=precision)
            metrics |= loss_recovered(lm, tok, sae, held_texts, cache.meta["hook"],
                                      max_length=cache.meta.get("max_length", 128), progress=job.progress).metrics()
        elif note:
            metrics["loss_recovered_skipped"] = note
        sae.save(out / "sae", meta={"model": cache.meta.get("model"), "hook": cache.meta.get("hook"),
                                    "cache": str(Path(job.cache))})
        # the training curve (global-batch FVU and AuxK per step): comparable across devices and process counts
        write_json_atomic(out / "train_curve.json", {"fvu": fit.fvu, "aux": fit.aux})
        return metrics, {"sae": str(out / "sae"), "train_curve": str(out / "train_curve.json")}
    return run_job("interp-sae", job, body)
