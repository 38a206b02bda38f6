"""`superalign monitor watch`: a linear monitor scores a causal LM's generations as they are sampled
(``sample(watch=)``), with its threshold calibrated on held-out clean samples for a target false-positive rate.

The monitor is a saved one (``--monitor DIR``) or fitted here on the same model: a difference of means of the hidden
states of two classes of texts (``--fit mean_diff``, e.g. negative vs positive SST-2 reviews), or one of the pillar's
contrast-pair probes (``--fit mass_mean|logreg|ccs``, turned into a one-state monitor by
:func:`superalign.monitor.runtime.probe_monitor`). Two prompt sets are generated from: clean ones and ones whose
generations should be flagged. Half of the clean samples set the thresholds; on the rest and the flagged ones the job
reports AUROC (bootstrap CI) and TPR at 1% and 5% FPR (with the realised FPR), and the cost of monitoring per scored
token. The calibrated monitor is saved as an artefact, for ``rlhf ppo|bon --monitor`` and ``HFLocalLLM(watch=)``.

Built-in offline demo (the defaults): SmolLM2 is asked to "write a short negative …" (flagged) or "… positive …"
(clean) review of one of 40 things; the monitor is the SST-2 negative − positive mean difference (whitened) at the
middle layer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SuperalignError
from ..runs.files import write_text_atomic
from ..runs.jobs import JobBase, _f, run_job
from ..validate import check_choice, check_fraction, check_int, check_nonempty, check_range, check_seed

FITS = ("mean_diff", "mass_mean", "logreg", "ccs")
REPORT_FPRS = (0.01, 0.05)

DEMO_ITEMS = (
    "a pizza restaurant", "a science-fiction movie", "a pair of running shoes", "a hotel by the sea", "a mystery novel",
    "a coffee shop", "a smartphone", "a museum", "a rock concert", "a cooking class", "a video game", "a city bus line",
    "a dentist", "a laptop", "a documentary", "a theme park", "a bakery", "a yoga studio", "an airline flight",
    "a music album", "a car rental company", "a board game", "a sushi bar", "a public library", "a hiking trail",
    "a washing machine", "a comedy show", "a language app", "a gym", "a furniture store", "a podcast", "a ski resort",
    "a pet groomer", "a wireless headset", "a stage play", "a camping tent", "an online course", "a taxi ride",
    "a vegetarian cookbook", "a toy store")
DEMO_PHRASINGS = ("Write a short {tone} review of {item}.", "In two sentences, give a {tone} opinion of {item}.")
DEMO_SETS = {"demo-negative": "negative", "demo-positive": "positive"}
"""built-in prompt sets: 80 review requests each, identical but for the tone asked for"""


def demo_prompts(name: str) -> list[str]:
    tone = DEMO_SETS[name]
    return [ph.format(tone=tone, item=it) for it in DEMO_ITEMS for ph in DEMO_PHRASINGS]


@dataclass
class WatchJob(JobBase):
    """Generate from clean and to-be-flagged prompts with a linear activation monitor watching every token; calibrate
    its threshold on held-out clean samples; report AUROC, TPR at 1%/5% FPR and the cost per scored token."""

    model: str = _f("smollm2", "causal LM: smollm2, testbed, hf:<id|path> or a folder")
    monitor: str = _f("", "a saved monitor folder (else one is fitted here with --fit)")
    fit: str = _f("mean_diff", "how to fit the monitor without --monitor: mean_diff (difference of the two classes' "
                               "mean hidden states over --text-col) or a contrast-pair probe: mass_mean, logreg, ccs",
                  choices=FITS)
    dataset: str = _f("sst2", "fitting data: sst2, boolq (shared data) or a local .jsonl/.csv")
    split: str = _f("train", "split of a shared fitting dataset")
    data_dir: str = _f("", "shared data folder (else $SUPERALIGN_DATA)")
    template: str = _f("", "probes: built-in template name (default: the dataset's first)")
    template_text: str = _f("", "probes on a local file: template with {answer} and {column} placeholders")
    answers: list[str] = field(default_factory=list, metadata={"help": "probes on a local file: two answers, "
                                                                        "false then true"})
    text_col: str = _f("text", "mean_diff: text column of the fitting data")
    label_col: str = _f("label", "label column (0/1) of the fitting data")
    n_fit: int = _f(400, "fitting rows (the first n)")
    whiten: bool = _f(True, "mean_diff: divide the mean difference by each dimension's within-class variance (see "
                            "monitor.runtime.mean_difference_monitor)")
    flag_label: int = _f(0, "label of the fitting data the monitor flags (sst2: 0 = negative)", choices=(0, 1))
    layer: int | None = _f(None, "hidden-state layer the monitor reads (0 = embeddings; default: the middle one)")
    fit_pool: str = _f("auto", "fitting states: last token or mean over tokens (auto: mean for mean_diff, last for "
                               "probes)", choices=("auto", "last", "mean"))
    pool: str = _f("mean", "a sample's score: mean or max of its token scores", choices=("mean", "max"))
    ccs_restarts: int = _f(10, "CCS random restarts")
    ccs_epochs: int = _f(1000, "CCS full-batch steps per restart")
    sign_pairs: int = _f(8, "CCS: labelled pairs that orient its sign")
    clean: str = _f("demo-positive", "clean prompts: demo-positive, demo-negative or a .jsonl/.csv with --prompt-col")
    flagged: str = _f("demo-negative", "prompts whose generations should be flagged (same forms as --clean)")
    prompt_col: str = _f("prompt", "prompt column of a prompt file")
    n_prompts: int = _f(80, "prompts used per set (the first n)")
    chat: bool = _f(True, "send prompts as a user message (the model's chat template, if it has one)")
    max_new_tokens: int = _f(32, "tokens generated per prompt")
    temperature: float = _f(0.7, "sampling temperature (0: greedy)")
    calib_frac: float = _f(0.5, "share of clean samples that set the thresholds (the rest evaluate them)")
    fpr: float = _f(0.01, "target false-positive rate of the saved monitor's threshold")
    batch_size: int = _f(16, "prompts sampled together")
    timing_repeats: int = _f(1, "unwatched/watched generation pairs timed (the fastest of each counts)")
    n_boot: int = _f(1000, "bootstrap resamples for the AUROC CI")
    seed: int = _f(0, "seed of sampling, the calibration split and the bootstrap")

    def __post_init__(self):
        check_nonempty("model", self.model, "smollm2")
        check_choice("fit", self.fit, FITS)
        check_int("n_fit", self.n_fit, minimum=4, example=400)
        if self.flag_label not in (0, 1):
            raise SuperalignError(f"--flag-label must be 0 or 1, got {self.flag_label!r}", "pass 0 or 1")
        check_int("layer", self.layer, minimum=-1000, example=15, none_ok=True)
        check_choice("fit_pool", self.fit_pool, ("auto", "last", "mean"))
        check_choice("pool", self.pool, ("mean", "max"))
        check_int("ccs_restarts", self.ccs_restarts, example=10)
        check_int("ccs_epochs", self.ccs_epochs, example=1000)
        check_int("sign_pairs", self.sign_pairs, example=8)
        for name in ("clean", "flagged", "prompt_col"):
            check_nonempty(name, getattr(self, name), {"clean": "demo-positive", "flagged": "demo-negative"}
                           .get(name, "prompt"))
        check_int("n_prompts", self.n_prompts, minimum=4, example=80)
        check_int("max_new_tokens", self.max_new_tokens, example=32)
        check_range("temperature", self.temperature, 0.0, 100.0, example=0.7)
        check_fraction("calib_frac", self.calib_frac, example=0.5)
        check_range("fpr", self.fpr, 0.0, 1.0, low_open=True, high_open=True, example=0.01)
        check_int("batch_size", self.batch_size, example=16)
        check_int("timing_repeats", self.timing_repeats, example=1)
        check_int("n_boot", self.n_boot, minimum=10, example=1000)
        check_seed("seed", self.seed)
        if self.template_text and len(self.answers) != 2:
            raise SuperalignError("--template-text needs two --answers (false, true)", "pass e.g. --answers no yes")

    def key(self) -> dict:
        """The config plus the content of every file it reads (prompt files, the fitting data, the monitor), so an
        edited file is a new run."""
        from ..data.fingerprint import file_fingerprint
        from .runtime import monitor_fingerprint

        d = super().key()
        d["prompt_fingerprints"] = {s: file_fingerprint(Path(getattr(self, s))) for s in ("clean", "flagged")
                                    if getattr(self, s) not in DEMO_SETS and Path(getattr(self, s)).is_file()}
        if self.monitor:
            d["monitor_fingerprint"] = monitor_fingerprint(self.monitor) if Path(self.monitor).is_dir() else None
        else:
            path = fit_data_path(self)
            d["data_fingerprint"] = file_fingerprint(path) if path.is_file() else None
        return d


def fit_data_path(job: WatchJob) -> Path:
    """The file the monitor is fitted on: a shared dataset's split file or a local file (built-in tasks have no file
    and are refused here: fit their probes with ``monitor probe``)."""
    from .pairs import dataset_kind, shared_path

    kind = dataset_kind(job.dataset)
    if kind == "task":
        raise SuperalignError(f"monitor watch fits on a shared dataset (sst2, boolq) or a local file, not the built-in "
                              f"task {job.dataset!r}", "pass --dataset sst2 or a .jsonl/.csv file")
    return shared_path(job.dataset, job.split, job.data_dir or None) if kind == "shared" else Path(job.dataset)


def load_prompt_set(source: str, prompt_col: str = "prompt", limit: int | None = None) -> list[str]:
    """A built-in prompt set (``demo-negative``, ``demo-positive``) or a local file's prompt column."""
    if source in DEMO_SETS:
        rows = demo_prompts(source)
        return rows[:limit] if limit else rows
    from ..rlhf.data import load_prompts

    return load_prompts(source, prompt_col, limit)


def _fit_texts(job: WatchJob) -> tuple[list[str], np.ndarray]:
    """(texts, 0/1 labels) of the fitting data for ``mean_diff``."""
    from ..data.files import read_table

    df = read_table(fit_data_path(job))
    for col in (job.text_col, job.label_col):
        if col not in df.columns:
            raise SuperalignError(f"column {col!r} not found in {fit_data_path(job)} (columns: "
                                  f"{', '.join(map(str, df.columns))})", "pass --text-col / --label-col")
    df = df.head(job.n_fit)
    y = df[job.label_col].to_numpy()
    if not np.isin(y, (0, 1)).all() or len(np.unique(y)) < 2:
        raise SuperalignError(f"the fitting labels must be 0/1 with both classes among the first {len(y)} rows",
                              "map the labels to 0/1 and raise --n-fit")
    return [str(t) for t in df[job.text_col]], y.astype(int)


def _pairs(job: WatchJob):
    from .pairs import SHARED_FILES, Template, load_pairs

    if fit_data_path(job) and job.dataset in SHARED_FILES:
        return load_pairs(job.dataset, job.template or None, job.split, job.data_dir or None, job.n_fit,
                          label_col=job.label_col)
    if not job.template_text:
        raise SuperalignError(f"{job.dataset}: probes on a local file need --template-text and --answers",
                              "e.g. --template-text 'Claim: {text} True? {answer}' --answers no yes")
    return load_pairs(job.dataset, Template("custom", job.template_text, tuple(job.answers)), limit=job.n_fit,
                      label_col=job.label_col)


def fit_monitor(job: WatchJob, model, tok, layer: int):
    """The job's monitor fitted on ``model``'s hidden states at ``layer`` (see :class:`WatchJob` ``--fit``)."""
    from .extract import hidden_states
    from .runtime import mean_difference_monitor, probe_monitor

    pool = job.fit_pool if job.fit_pool != "auto" else ("mean" if job.fit == "mean_diff" else "last")
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        if job.fit == "mean_diff":
            texts, y = _fit_texts(job)
            h = hidden_states(model, tok, texts, pool)[layer]
            meta = {"fit": "mean_diff", "data": str(fit_data_path(job)), "text_col": job.text_col,
                    "flag_label": job.flag_label, "fit_pool": pool}
            return mean_difference_monitor(h[y == job.flag_label], h[y != job.flag_label], layer, job.pool,
                                           whiten=job.whiten, meta=meta)
        from .probes import fit_ccs, fit_logreg, fit_mass_mean

        pairs = _pairs(job)
        y = np.asarray(pairs.labels)
        if len(np.unique(y)) < 2:
            raise SuperalignError(f"the first {len(y)} pairs all have label {y[0]}", "raise --n-fit")
        xn = hidden_states(model, tok, pairs.neg, pool)[layer]
        xp = hidden_states(model, tok, pairs.pos, pool)[layer]
        if job.fit == "logreg":
            probe = fit_logreg(xp, xn, y, seed=job.seed)
        elif job.fit == "mass_mean":
            probe = fit_mass_mean(xp, xn, y)
        else:
            k = job.sign_pairs
            probe = fit_ccs(xp, xn, job.ccs_restarts, job.ccs_epochs, seed=job.seed).fix_sign(xp[:k], xn[:k], y[:k])
        return probe_monitor(probe, layer, job.flag_label, job.pool,
                             meta={"fit": job.fit, "pairs": pairs.fingerprint, "template": pairs.template.text,
                                   "fit_pool": pool})
    finally:
        tok.padding_side = side


def _checked_inputs(job: WatchJob) -> tuple[list[str], list[str], int | None]:
    """Everything that can be checked before the run is claimed: the prompt sets, the model's config against the
    monitor or the fitting layer, the fitting data file. Returns (clean prompts, flagged prompts, layer to fit)."""
    from .extract import check_layer
    from .runtime import load_monitor, model_shape

    clean = load_prompt_set(job.clean, job.prompt_col, job.n_prompts)
    flagged = load_prompt_set(job.flagged, job.prompt_col, job.n_prompts)
    n_cal = int(round(job.calib_frac * len(clean)))
    if n_cal < 1 or len(clean) - n_cal < 1:
        raise SuperalignError(f"{len(clean)} clean prompts cannot be split into calibration and evaluation halves "
                              f"(--calib-frac {job.calib_frac})", "pass more clean prompts")
    from ..models.lm import load_tokenizer

    load_tokenizer(job.model, job.home, job.trust_remote_code, require_eos=True)  # generation stops at EOS
    shape = model_shape(job.model, job.home, job.trust_remote_code)
    if job.monitor:
        load_monitor(job.monitor, job.model, job.home, job.trust_remote_code)
        return clean, flagged, None
    layer = job.layer
    if shape is not None:
        n_layers = shape[1]
        layer = n_layers // 2 if layer is None else layer
        check_layer(layer, n_layers)
        layer = layer % (n_layers + 1)
    if not fit_data_path(job).is_file():
        raise SuperalignError(f"fitting data {fit_data_path(job)} does not exist",
                              "check --dataset (or set SUPERALIGN_DATA / --data-dir)")
    return clean, flagged, layer


def calibrate_and_evaluate(clean_scores, flagged_scores, calib_frac: float, fprs, seed: int,
                           n_boot: int = 1000) -> dict:
    """Thresholds from a random ``calib_frac`` of the clean scores for each target FPR; on the other clean scores
    and all flagged ones: the realised FPR and the TPR at each threshold, and the AUROC with a bootstrap CI."""
    from ..models.watch import threshold_at_fpr
    from ..train.metrics import bootstrap_auroc

    clean, flagged = np.asarray(clean_scores, np.float64), np.asarray(flagged_scores, np.float64)
    perm = np.random.default_rng(seed).permutation(len(clean))
    n_cal = int(round(calib_frac * len(clean)))
    cal, ev = clean[perm[:n_cal]], clean[perm[n_cal:]]
    if len(cal) == 0 or len(ev) == 0 or len(flagged) == 0:
        raise SuperalignError("calibration needs clean samples on both sides of the split and flagged samples",
                              "pass more prompts")
    y = np.r_[np.zeros(len(ev)), np.ones(len(flagged))]
    s = np.r_[ev, flagged]
    auc, ci = bootstrap_auroc(y, s, seed, n_boot)
    out = {"auroc": auc, "auroc_ci": list(ci), "n_calib": len(cal), "n_clean_eval": len(ev), "n_flagged": len(flagged),
           "calib_index": perm[:n_cal].tolist()}
    for f in fprs:
        tag = f"{f * 100:g}pct"
        need = int(np.ceil(1 / f - 1e-9))
        if len(cal) < need:  # the threshold would be the largest clean score whatever f is: not an f-FPR threshold
            out |= {f"threshold_at_{tag}": None, f"tpr_at_{tag}": None, f"fpr_at_{tag}": None,
                    f"tpr_at_{tag}_na": f"n/a: {len(cal)} clean calibration samples cannot set a {f:.0%} FPR "
                                        f"threshold (needs ≥ {need}; raise --n-prompts or --calib-frac)"}
            continue
        t = threshold_at_fpr(cal, f)
        out |= {f"threshold_at_{tag}": t, f"tpr_at_{tag}": float((flagged > t).mean()),
                f"fpr_at_{tag}": float((ev > t).mean())}
    return out


def _timed_generate(llm, prompts, job, watch) -> tuple[list[str], float]:
    llm.watch = watch
    t = time.perf_counter()
    texts = llm.generate(prompts, job.max_new_tokens, job.temperature, seed=job.seed)
    return texts, time.perf_counter() - t


def run_watch(job: WatchJob) -> dict:
    clean, flagged, fit_layer = _checked_inputs(job)

    def body(store, art):
        from ..interp.llm import HFLocalLLM
        from ..models.lm import load_lm
        from ..models.registry import model_params, num_layers
        from ..models.watch import LinearMonitor
        from ..runs.ledger import add_flops
        from .runtime import TimedMonitor, check_monitor_on

        device, precision = job.placement()
        tok, model = load_lm(job.model, home=job.home, device=device, dtype={"fp32": None}.get(precision, precision),
                             trust_remote_code=job.trust_remote_code)
        model.eval()
        if job.monitor:
            mon = LinearMonitor.load(job.monitor)
        else:
            n_layers = num_layers(model.config)
            layer = fit_layer if fit_layer is not None else (n_layers // 2 if job.layer is None else job.layer)
            from .extract import check_layer

            check_layer(layer, n_layers)
            mon = fit_monitor(job, model, tok, layer % (n_layers + 1))
            mon.meta["model"] = job.model
        check_monitor_on(mon, model)
        llm = HFLocalLLM.from_model(tok, model, name=job.model, batch_size=job.batch_size)
        prompts = [[{"role": "user", "content": p}] if job.chat else p for p in clean + flagged]
        llm.generate(prompts[:job.batch_size], 2, job.temperature, seed=job.seed)  # warm-up: allocations, kernels
        plain_s, watched_s, timed = [], [], None
        for _ in range(job.timing_repeats):
            plain, s0 = _timed_generate(llm, prompts, job, None)
            timed = TimedMonitor(mon)
            texts, s1 = _timed_generate(llm, prompts, job, timed)
            plain_s.append(s0)
            watched_s.append(s1)
        scores, n_tok = llm.monitor_scores, llm.generated_tokens
        tokens = int(n_tok.sum())
        add_flops(float(timed.flops_per_token()) * tokens, tokens=0, stage="monitor")
        res = calibrate_and_evaluate(scores[:len(clean)], scores[len(clean):], job.calib_frac,
                                     sorted({*REPORT_FPRS, job.fpr}), job.seed, job.n_boot)
        cal_clean = scores[:len(clean)][res.pop("calib_index")]
        mon.calibrate(cal_clean, job.fpr)
        mon.meta |= {"calibration": {"n": len(cal_clean), "clean": job.clean, "fpr_target": job.fpr,
                                     "model": job.model, "max_new_tokens": job.max_new_tokens,
                                     "temperature": job.temperature}}
        mon.save(art / "monitor")
        rows = [{"set": "clean" if i < len(clean) else "flagged", "prompt": (clean + flagged)[i], "text": texts[i],
                 "score": float(scores[i]), "tokens": int(n_tok[i]), "flag": bool(scores[i] > mon.threshold)}
                for i in range(len(texts))]
        write_text_atomic(art / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        d = int(mon.direction.size)
        params = model_params(model)
        best_plain, best_watched = min(plain_s), min(watched_s)
        metrics = res | {
            "layer": int(mon.layer), "hidden_size": d, "samples_identical": texts == plain,
            "clean_score_mean": float(np.mean(scores[:len(clean)])),
            "flagged_score_mean": float(np.mean(scores[len(clean):])),
            "generated_tokens": tokens, "generation_s_unwatched": best_plain, "generation_s_watched": best_watched,
            "extra_s_per_token": (best_watched - best_plain) / max(tokens, 1),
            "monitor_s_per_token": timed.seconds / max(tokens, 1),
            "monitor_share_of_generation": timed.seconds / best_watched,
            "monitor_flops_per_token": timed.flops_per_token(), "model_flops_per_token": 2 * params,
            "monitor_flops_share": timed.flops_per_token() / (2 * params),
        }
        return metrics, {"monitor": str(art / "monitor"), "samples": str(art / "samples.jsonl")}

    return run_job("monitor-watch", job, body)


def watch_section(runs: list[dict]) -> str:
    """Report: one row per `monitor watch` run: detection at fixed FPRs (realised FPR in brackets) and the cost of
    monitoring per scored token."""
    from ..runs.html import esc, fmt, table

    runs = [r for r in runs if r.get("kind") == "monitor-watch" and r.get("status") == "done"]
    if not runs:
        return ""
    rows = []
    for r in runs:
        c, m = r.get("config") or {}, r.get("metrics") or {}
        ci = m.get("auroc_ci") or [None, None]
        rows.append([f"<code>{esc(r['id'][:16])}</code>", esc(c.get("model")),
                     esc(c.get("monitor") or c.get("fit")), fmt(m.get("layer")), esc(c.get("flagged")),
                     f"{fmt(m.get('auroc'))} [{fmt(ci[0])}, {fmt(ci[1])}]",
                     f"{fmt(m.get('tpr_at_1pct'), pct=True)} ({fmt(m.get('fpr_at_1pct'), pct=True)})",
                     f"{fmt(m.get('tpr_at_5pct'), pct=True)} ({fmt(m.get('fpr_at_5pct'), pct=True)})",
                     fmt(m.get("monitor_s_per_token")), fmt(m.get("monitor_share_of_generation"))])
    heads = ["run", "model", "monitor", "layer", "flagged prompts", "AUROC [95% CI]", "TPR at 1% FPR (realised FPR)",
             "TPR at 5% FPR (realised FPR)", "monitor s/token", "monitor share of generation time"]
    return "<h3>Run-time monitors (monitor watch)</h3>" + table(heads, rows, numeric={3, 5, 6, 7, 8, 9})
