"""`superalign interp explain|score`: explain → simulate → score (Bills et al. 2023) over neurons or SAE latents.

``explain`` picks units (random live latents of an SAE, or neurons of the cache's hook point), builds their
activation records from the activation cache (see :mod:`.records`) and writes one explanation per unit;
``score`` reads those records and explanations and scores each explanation by simulation (``ev_correlation``,
``rsquared``) and optionally by detection and fuzzing. Both are recorded in the run store and keyed by their config.
A score run writes each finished unit to ``scores.partial.jsonl`` as it goes, so an interrupted run resumes
without redoing the units it had finished.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import SuperalignError
from ..models.lm import load_tokenizer
from ..runs.jobs import JobBase, _f, run_job, stored_result, write_text_atomic
from ..validate import check_int, check_seed
from .records import build_records, records_from_json, records_to_json, unit_activations

SCORERS = ("simulation", "detection", "fuzzing", "embedding")
SIMULATORS = ("all-at-once", "per-token", "generate", "token-lookup")



@dataclass
class ExplainJob(JobBase):
    """Explain neurons or SAE latents from their top-activating records (Bills et al. 2023)."""

    cache: str = _f("", "activation cache folder (superalign interp cache)")
    sae: str | None = _f(None, "SAE checkpoint folder (superalign interp sae); without it, explain the hook's neurons")
    units: int = _f(50, "how many units to explain: random live latents (or neurons), seeded")
    unit_ids: list[int] | None = _f(None, "explain exactly these latents/neurons instead")
    explainer: str = _f("token-lookup", "token-lookup (baseline) or an LLM: smollm2, hf:<id|path>, openai:<model>, "
                                        "http://host:port/v1#<model>")
    n_explain: int = _f(10, "top-activating records shown to the explainer")
    n_score_top: int = _f(5, "held-out top-activating records for scoring")
    n_random: int = _f(5, "random records for scoring")
    window: int = _f(24, "tokens per record")
    max_new_tokens: int = _f(40, "LLM explainer: tokens to generate")
    llm_concurrency: int = _f(4, "HTTP LLMs: simultaneous requests")
    allow_insecure_http: bool = _f(False, "HTTP LLMs: allow sending the API key over plain http:// to a remote host")
    seed: int = _f(0, "unit choice and random records")

    def key(self) -> dict:
        return _without_permissions(super().key())

    def __post_init__(self):
        if not self.cache:
            raise SuperalignError("no activation cache given", "pass --cache DIR (from superalign interp cache)")
        if self.units < 1 and not self.unit_ids:
            raise SuperalignError(f"--units must be ≥ 1, got {self.units}", "pass --units 50 or --unit-ids 3 17 …")
        check_int("n_explain", self.n_explain, example=10)
        check_int("window", self.window, example=24)
        check_int("n_score_top", self.n_score_top, minimum=0, example=5)
        check_int("n_random", self.n_random, minimum=0, example=5)
        if self.n_score_top + self.n_random < 1:
            raise SuperalignError("--n-score-top and --n-random are both 0: nothing to score the explanations on",
                                  "pass e.g. --n-score-top 5 --n-random 5")
        check_int("units", self.units, minimum=0 if self.unit_ids else 1, example=50)
        for unit in self.unit_ids or ():
            check_int("unit_ids", unit, minimum=0, example=3)
        if self.unit_ids and len(set(self.unit_ids)) != len(self.unit_ids):
            raise SuperalignError(f"--unit-ids repeats a unit: {self.unit_ids}", "pass each unit once")
        check_int("max_new_tokens", self.max_new_tokens, example=40)
        check_int("llm_concurrency", self.llm_concurrency, example=4)
        check_seed("seed", self.seed)


@dataclass
class ScoreJob(JobBase):
    """Score explanations by simulation (ev_correlation, R²), detection and fuzzing."""

    explanations: str = _f("", "an explain run's id (prefix) or its artefact folder")
    simulator: str = _f("all-at-once", "all-at-once (echo logprobs), per-token (next-token logprobs), generate "
                                       "(logprob-free) or token-lookup (no LLM)", choices=SIMULATORS)
    llm: str = _f("smollm2", "simulator / judge LLM: smollm2, hf:<id|path>, openai:<model>, http://host:port/v1#<model>")
    scorers: list[str] = _f(("simulation",), "scorers to run (any of them)", choices=SCORERS)
    embedder: str = _f("minilm", "sentence encoder of the embedding scorer (minilm or hf:<encoder>)")
    llm_concurrency: int = _f(4, "HTTP LLMs: simultaneous requests")
    allow_insecure_http: bool = _f(False, "HTTP LLMs: allow sending the API key over plain http:// to a remote host")
    seed: int = _f(0, "fuzzing's random markings")

    def key(self) -> dict:
        return _without_permissions(super().key())

    def __post_init__(self):
        self.scorers = list(self.scorers)
        if not self.explanations:
            raise SuperalignError("no explanations given",
                                  "pass --explanations RUN_ID (from superalign interp explain)")
        bad = [s for s in self.scorers if s not in SCORERS]
        if bad or not self.scorers:
            raise SuperalignError(f"unknown scorer(s) {bad}", f"use any of {', '.join(SCORERS)}")
        if self.simulator not in SIMULATORS:
            raise SuperalignError(f"unknown simulator {self.simulator!r}", f"use one of {', '.join(SIMULATORS)}")
        if len(set(self.scorers)) != len(self.scorers):
            raise SuperalignError(f"--scorers repeats a scorer: {' '.join(self.scorers)}", "pass each scorer once")
        check_int("llm_concurrency", self.llm_concurrency, example=4)
        check_seed("seed", self.seed)


def _without_permissions(key: dict) -> dict:
    """A job's identity without the permission flags: allowing plain http changes where the key may go, not what the
    run computes, so it must not give a finished run a new id."""
    key.pop("allow_insecure_http", None)
    return key


def llm_options(job: ExplainJob | ScoreJob, spec: str) -> dict:
    """:func:`~superalign.interp.llm.make_llm`'s keyword arguments for a job: an HTTP endpoint's options, or a local
    model's device and precision (the job's ``--device``/``--dtype``; the weights load in that dtype)."""
    from .llm import http_llm_options, is_http_spec

    if is_http_spec(spec):
        return http_llm_options(spec, job.home, job.llm_concurrency, job.allow_insecure_http)
    device, precision = job.placement()
    return {"device": device, "dtype": precision, "trust_remote_code": job.trust_remote_code}


def choose_units(acts: torch.Tensor, sae, n: int, seed: int, batch_size: int = 8192) -> list[int]:
    """``n`` random live units (active on at least one cached token), sorted."""
    if sae is None:
        live = torch.nonzero((acts > 0).any(0)).squeeze(1)
    else:
        fired = torch.zeros(sae.cfg.n_latents, dtype=torch.bool)
        with torch.no_grad():
            for b in range(0, len(acts), batch_size):
                a = sae.latent_acts(acts[b:b + batch_size].float())
                fired |= (a > 0).any(0)
        live = torch.nonzero(fired).squeeze(1)
    if len(live) == 0:
        raise SuperalignError("no unit is ever active on this cache", "train the SAE longer or use another cache")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(live), size=min(n, len(live)), replace=False)
    return sorted(int(live[i]) for i in pick)


def run_explain(job: ExplainJob) -> dict:
    from .activations import load_activations
    from .explain import EXAMPLE_EXPLANATION, LLMExplainer, TokenLookupExplainer

    if (done := stored_result("interp-explain", job)) is not None:
        return done
    cache = load_activations(job.cache)              # every input is checked before anything is written
    sae = None
    if job.sae:
        from .sae import load_sae
        sae = load_sae(job.sae, expect_d_in=cache.acts.shape[1])
    # the cached model's tokenizer (records decode its token ids); an encoder's may have no EOS
    tok = load_tokenizer(cache.meta.get("model", ""), job.home, job.trust_remote_code, require_eos=False)
    if job.explainer != "token-lookup":
        from .llm import make_llm
        llm = make_llm(job.explainer, **llm_options(job, job.explainer))
        explainer = LLMExplainer(llm, max_new_tokens=job.max_new_tokens)
    else:
        explainer = TokenLookupExplainer()
    t0 = time.perf_counter()
    acts = cache.acts.float()
    n_units = sae.cfg.n_latents if sae is not None else acts.shape[1]
    if job.unit_ids and max(job.unit_ids) >= n_units:
        raise SuperalignError(f"--unit-ids {max(job.unit_ids)} is out of range: the "
                              f"{'SAE has' if sae is not None else 'hook point has'} {n_units} units",
                              f"pass ids in 0…{n_units - 1}")
    # chosen before the run store is touched: a cache on which nothing fires is a bad input, not a failed run
    units = sorted(set(job.unit_ids)) if job.unit_ids else choose_units(acts, sae, job.units, job.seed)

    def body(store, out: Path):
        ua = unit_activations(acts, units, sae)
        recs = build_records(ua, units, cache.tokens, cache.doc, cache.pos, tok, job.n_explain, job.n_score_top,
                             job.n_random, job.window, job.seed)
        t_rec = time.perf_counter() - t0
        expl = []
        from tqdm.auto import tqdm
        for i in tqdm(range(0, len(recs), 8), desc=f"explain ({explainer.name})", disable=not job.progress):
            expl += explainer.explain(recs[i:i + 8])
        write_text_atomic(out / "records.json", json.dumps({"meta": {"model": cache.meta.get("model"),
                                                                 "hook": cache.meta.get("hook"),
                                                                 "sae": job.sae, "explainer": explainer.name},
                                                        "records": records_to_json(recs)}))
        write_text_atomic(out / "explanations.jsonl", "".join(
            json.dumps({"unit": r.unit, "explanation": e, "max_act": r.max_act, "density": r.density}) + "\n"
            for r, e in zip(recs, expl)))
        metrics = {"n_units": len(recs), "explainer": explainer.name, "records_wall_s": t_rec,
                   "explain_wall_s": time.perf_counter() - t0 - t_rec,
                   "mean_density": float(np.mean([r.density for r in recs])),
                   # small models often repeat the prompt's worked example instead of reading the records
                   "copied_example_frac": float(np.mean([e.strip().lower() == EXAMPLE_EXPLANATION for e in expl])),
                   "examples": [{"unit": r.unit, "explanation": e} for r, e in zip(recs[:10], expl[:10])]}
        return metrics, {"explanations": str(out / "explanations.jsonl"), "records": str(out / "records.json")}
    return run_job("interp-explain", job, body)


def _explanations_folder(ref: str, home) -> Path:
    from ..runs.store import RunStore, default_home

    p = Path(ref).expanduser()
    if p.is_dir() and (p / "explanations.jsonl").exists():
        return p
    problem = f"{ref!r} is neither a finished explain run nor a folder with explanations.jsonl"
    fix = "pass the run id printed by superalign interp explain"
    db = (Path(home).expanduser() if home else default_home()) / "runs.db"
    if not db.exists():  # looking a run up must not create a store
        raise SuperalignError(f"{problem} (no run store at {db.parent})", fix)
    store = RunStore(home)
    r = store.get(ref) or store.find(ref)
    if r is None or r["kind"] != "interp-explain" or r["status"] != "done":
        raise SuperalignError(problem, fix)
    return Path(r["artefacts"]["explanations"]).parent


def read_explanations(folder: Path) -> tuple[list, dict[int, str], dict]:
    """(unit records, {unit: explanation}, records meta) of an explain run's folder; a missing, non-UTF-8 or
    corrupt records.json or explanations.jsonl is a one-line error naming the file."""
    from ..validate import read_json_file, read_text_utf8

    fix = "rerun superalign interp explain (its folder is damaged)"
    rec_json = read_json_file(folder / "records.json", "activation records", fix)
    try:
        recs = records_from_json(rec_json["records"])
    except (KeyError, TypeError, ValueError) as e:
        raise SuperalignError(f"{folder / 'records.json'} is not an explain run's records ({type(e).__name__}: {e})",
                              fix) from None
    expl = {}
    for i, line in enumerate(read_text_utf8(folder / "explanations.jsonl", "explanations").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            expl[int(d["unit"])] = str(d["explanation"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise SuperalignError(f"{folder / 'explanations.jsonl'}:{i}: not an explanation line "
                                  f"({type(e).__name__})", fix) from None
    meta = rec_json.get("meta") if isinstance(rec_json.get("meta"), dict) else {}  # an object: checked above
    return recs, expl, meta


def _summary(values: list[float]) -> dict:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std(ddof=1)) if len(v) > 1
            else 0.0, "n": int(len(v))}


def run_score(job: ScoreJob) -> dict:
    from .scoring import TextEmbedder, score_detection, score_embedding, score_fuzzing, score_simulation
    from .simulate import make_simulator

    if (done := stored_result("interp-score", job)) is not None:
        return done  # without loading the simulator LLM and the embedder again
    folder = _explanations_folder(job.explanations, job.home)
    recs, expl, rec_meta = read_explanations(folder)
    needs_llm = job.simulator != "token-lookup" and "simulation" in job.scorers \
        or any(s in ("detection", "fuzzing") for s in job.scorers)
    llm = None
    if needs_llm:
        from .llm import make_llm
        llm = make_llm(job.llm, **llm_options(job, job.llm))
    sim = make_simulator(job.simulator, llm) if "simulation" in job.scorers else None
    embed = TextEmbedder(job.embedder, trust_remote_code=job.trust_remote_code) if "embedding" in job.scorers else None

    def body(store, out: Path):
        from tqdm.auto import tqdm
        partial = out / "scores.partial.jsonl"
        done = {}
        if partial.exists():  # resume: keep every unit an interrupted run had finished
            for line in partial.read_text().splitlines():
                try:
                    d = json.loads(line)
                    done[d["unit"]] = d
                except (json.JSONDecodeError, KeyError):
                    break  # a torn last line from the interruption
        t0 = time.perf_counter()
        with partial.open("a", encoding="utf-8") as fh:
            for r in tqdm(recs, desc="score", disable=not job.progress):
                if r.unit in done:
                    continue
                e = expl[r.unit]
                row = {"unit": r.unit, "explanation": e}
                if sim is not None:
                    s = score_simulation(sim, e, r)
                    row |= {k: getattr(s, k) for k in ("ev_correlation", "ev_correlation_top",
                                                       "ev_correlation_random", "rsquared", "predictions")}
                if "detection" in job.scorers:
                    c = score_detection(llm, e, r)
                    row |= {"detection_bacc": c.balanced_accuracy, "detection_auroc": c.auroc}
                if "fuzzing" in job.scorers:
                    c = score_fuzzing(llm, e, r, job.seed)
                    row |= {"fuzzing_bacc": c.balanced_accuracy, "fuzzing_auroc": c.auroc}
                if embed is not None:
                    row["embedding_auroc"] = score_embedding(embed, e, r).auroc
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                done[r.unit] = row
        rows = [done[r.unit] for r in recs]
        write_text_atomic(out / "scores.jsonl", "".join(json.dumps(x) + "\n" for x in rows))
        metrics = {"n_units": len(rows), "explainer": rec_meta.get("explainer"),
                   "simulator": sim.name if sim else None, "wall_s": time.perf_counter() - t0}
        for key in ("ev_correlation", "ev_correlation_top", "ev_correlation_random", "rsquared", "detection_bacc",
                    "detection_auroc", "fuzzing_bacc", "fuzzing_auroc", "embedding_auroc"):
            if any(key in x for x in rows):
                s = _summary([x.get(key) for x in rows])
                metrics |= {f"{key}_{k}": v for k, v in s.items() if k != "n" or key == "ev_correlation"}
        return metrics, {"scores": str(out / "scores.jsonl"), "explanations": str(folder / "explanations.jsonl"),
                         "records": str(folder / "records.json")}
    return run_job("interp-score", job, body)
