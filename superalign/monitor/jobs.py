"""`superalign monitor probe`: zero-shot vs CCS vs mass-mean vs logistic regression on one contrast-pair dataset, per
layer, with bootstrap CIs — recorded in the run store like every job; `superalign monitor pairs`: the filled contrast
pairs of a dataset + template (what the probes read), printed or written to a file.

Robustness checks (Burns et al. 2022; Farquhar et al. 2023) are options of the same job: ``--prefix misleading``
prepends wrongly answered demonstrations to every text, ``--distractor banana-shed`` appends an arbitrary binary
feature; with a distractor every method is scored against the truth AND the distractor labels per layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SuperalignError
from ..runs.files import write_json_atomic
from ..runs.jobs import JobBase, _f, run_job
from ..validate import check_choice, check_fraction, check_int, check_nonempty, check_seed
from .pairs import DISTRACTORS, PREFIXES

METHODS = ("zero_shot", "logreg", "mass_mean", "ccs")
PROBES = ("logreg", "mass_mean", "ccs")


@dataclass
class PairsSpec:
    """Which contrast pairs: the dataset, its template and the robustness conditions (shared by both commands)."""

    dataset: str = _f("sst2", "sst2, boolq (shared data), a built-in task (vader, textblob-polarity, …) or a local "
                              ".jsonl/.csv (then --template-text and --answers)")
    template: str = _f("", "built-in template name (default: the dataset's first)")
    template_text: str = _f("", "template for a local file or a task without one, with {answer} and {column} "
                                "placeholders")
    answers: list[str] = field(default_factory=list, metadata={"help": "a custom template's two answers: false true"})
    columns: list[str] = field(default_factory=list, metadata={
        "help": "rename a local file's columns to the template's fields: file_column=field …, e.g. review=text"})
    label_col: str = _f("label", "label column (0/1)")
    split: str = _f("validation", "split of a shared dataset")
    data_dir: str = _f("", "shared data folder (else $SUPERALIGN_DATA)")
    n: int = _f(400, "contrast pairs used (the first n)")
    prefix: str = _f("none", "misleading: prepend --prefix-k demonstrations answered wrongly (Burns et al. 2022), "
                             "taken from the rows after the n evaluated ones", choices=PREFIXES)
    prefix_k: int = _f(4, "demonstrations in a misleading prefix")
    distractor: str = _f("none", "banana-shed: append 'Banana.' to one side of each pair and 'Shed.' to the other at "
                                 "random (Farquhar et al. 2023); methods are scored against both label sets",
                         choices=tuple(DISTRACTORS))
    seed: int = _f(0, "seed of the split, CCS restarts, bootstrap and the distractor")

    def check_pairs_spec(self) -> None:
        from .pairs import parse_columns

        check_int("n", self.n, minimum=4, example=400)
        check_int("prefix_k", self.prefix_k, minimum=1, example=4)
        check_choice("prefix", self.prefix, PREFIXES)
        check_choice("distractor", self.distractor, DISTRACTORS)
        check_seed("seed", self.seed)
        parse_columns(self.columns)
        if self.template_text and len(self.answers) != 2:
            raise SuperalignError("--template-text needs two --answers (false, true)", "pass e.g. --answers no yes")

    def pairs(self):
        """The contrast pairs this spec names (data read and checked now)."""
        from .pairs import Template, add_distractor, dataset_kind, load_pairs, parse_columns

        kind = dataset_kind(self.dataset)
        if self.template_text:
            template = Template("custom", self.template_text, tuple(self.answers))
        elif kind == "file":
            raise SuperalignError(f"{self.dataset}: a local file needs --template-text and --answers",
                                  "e.g. --template-text 'Claim: {text} True? {answer}' --answers no yes")
        else:
            template = self.template or None
        pairs = load_pairs(self.dataset, template, self.split, self.data_dir or None, self.n,
                           columns=parse_columns(self.columns), label_col=self.label_col, prefix=self.prefix,
                           prefix_k=self.prefix_k)
        return add_distractor(pairs, self.distractor, self.seed)

    def data_fingerprint(self) -> str | None:
        """The content identity of what the spec reads (a file's hash, or a built-in task's fingerprint)."""
        from pathlib import Path

        from ..data.fingerprint import file_fingerprint
        from .pairs import dataset_kind, shared_path

        kind = dataset_kind(self.dataset)
        if kind == "task":
            from ..data.tasks import task_fingerprint

            return task_fingerprint(self.dataset)
        path = shared_path(self.dataset, self.split, self.data_dir or None) if kind == "shared" else Path(self.dataset)
        return file_fingerprint(path) if path.is_file() else None


@dataclass
class ProbeJob(JobBase, PairsSpec):
    """Fit and compare latent-knowledge probes on a causal LM's hidden states of contrast pairs (Burns et al. 2022;
    Marks & Tegmark 2023): per layer, accuracy and AUROC on held-out pairs with bootstrap 95% CIs."""

    model: str = _f("smollm2", "causal LM: smollm2, testbed, hf:<id|path> or a folder")
    test_frac: float = _f(0.5, "share of pairs held out for evaluation")
    layers: list[int] = field(default_factory=list, metadata={"help": "layers to probe (0 = embeddings; default: all)"})
    pool: str = _f("last", "hidden state of the last token or the mean over tokens", choices=("last", "mean"))
    ccs_restarts: int = _f(10, "CCS random restarts (the lowest loss is kept)")
    ccs_epochs: int = _f(1000, "CCS full-batch AdamW steps per restart")
    sign_pairs: int = _f(8, "labelled training pairs that only orient CCS's sign, for reporting")

    def __post_init__(self):
        self.check_pairs_spec()
        check_fraction("test_frac", self.test_frac, example=0.5)
        check_int("ccs_restarts", self.ccs_restarts, minimum=1, example=10)
        check_int("ccs_epochs", self.ccs_epochs, minimum=1, example=1000)
        check_int("sign_pairs", self.sign_pairs, minimum=1, example=8)
        check_nonempty("model", self.model, "smollm2")

    def key(self) -> dict:
        """The config plus the content of the data it reads, so an edited file is a new run."""
        d = super().key()
        d["data_fingerprint"] = self.data_fingerprint()
        return d


def _scores(y: np.ndarray, p: np.ndarray, seed: int, n_boot: int = 1000) -> dict:
    """Accuracy and AUROC with percentile-bootstrap 95% CIs over held-out pairs. The resamples are scored all at once
    (accuracy as a mean of the per-pair hits; AUROC as Mann–Whitney U from row-wise ranks, NaN for a resample with
    one class): the same numbers as scoring each resample with :mod:`superalign.train.metrics`, ~100× faster."""
    from ..train.metrics import accuracy, bootstrap_auroc, bootstrap_indices, percentile_ci

    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    idx = bootstrap_indices(len(y), n_boot, seed)
    accs = ((p > 0.5).astype(int) == y)[idx].mean(1)
    auc, auc_ci = bootstrap_auroc(y, p, seed, n_boot)
    return {"acc": accuracy(y, p), "acc_ci": percentile_ci(accs), "auroc": auc, "auroc_ci": auc_ci}


def _any_sign(acc: float) -> float:
    """Accuracy of a direction whichever way round it is read: what a feature was found, not its orientation."""
    return float(max(acc, 1.0 - acc))


def _check_layers(job: ProbeJob) -> None:
    """Layers out of range are a one-line error before the run is claimed (the model's config is read, not its
    weights)."""
    from ..models.lm import _spec
    from ..models.registry import load_config, truncate_config
    from .extract import check_layer

    spec = _spec(job.model, job.home)
    cfg = load_config(spec, job.trust_remote_code)
    truncate_config(spec, cfg)
    for layer in job.layers:
        check_layer(layer, cfg.num_hidden_layers)


def probe_layers(h_neg: np.ndarray, h_pos: np.ndarray, p_zero: np.ndarray, labels, layers: list[int],
                 distractor=None, test_frac: float = 0.5, seed: int = 0, ccs_restarts: int = 10,
                 ccs_epochs: int = 1000, sign_pairs: int = 8) -> tuple[dict, dict]:
    """(headline metrics, the per-layer record) of every method on cached hidden states [L+1, N, d] and the
    zero-shot P(true) [N]: a seeded train/test split of the pairs, each probe fitted per layer on the train pairs
    and scored on the test pairs. With ``distractor`` labels, each method is also scored against them, and the
    headline says what CCS found: at the layer where its direction separates best by either label set (read either
    way round, since CCS's sign is arbitrary), ``ccs_truth_acc`` vs ``ccs_distractor_acc``."""
    from .extract import check_layer
    from .probes import fit_ccs, fit_logreg, fit_mass_mean

    y = np.asarray(labels)
    d = None if distractor is None else np.asarray(distractor)
    n_layers = h_pos.shape[0] - 1
    for layer in layers:
        check_layer(layer, n_layers)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = max(2, int(round(test_frac * len(y))))
    te, tr = perm[:n_test], perm[n_test:]
    if len(np.unique(y[tr])) < 2 or len(np.unique(y[te])) < 2:
        raise SuperalignError("the train or test split has one class only", "raise --n or change --seed")

    def score(p):
        res = _scores(y[te], p, seed)
        if d is not None:
            res["vs_distractor"] = _scores(d[te], p, seed)
            res["truth_acc_any_sign"] = _any_sign(res["acc"])
            res["distractor_acc_any_sign"] = _any_sign(res["vs_distractor"]["acc"])
        return res

    per_layer = {}
    for layer in layers:
        xp, xn = h_pos[layer], h_neg[layer]
        ccs = fit_ccs(xp[tr], xn[tr], ccs_restarts, ccs_epochs, seed=seed)
        ccs.fix_sign(xp[tr][:sign_pairs], xn[tr][:sign_pairs], y[tr][:sign_pairs])
        res = {}
        for name, probe in (("logreg", fit_logreg(xp[tr], xn[tr], y[tr], seed=seed)),
                            ("mass_mean", fit_mass_mean(xp[tr], xn[tr], y[tr])), ("ccs", ccs)):
            res[name] = score(probe.predict(xp[te], xn[te]))
        res["ccs"]["loss"] = ccs.loss
        per_layer[str(layer)] = res
    zs = score(p_zero[te])
    # Burns et al.'s calibrated zero-shot: the median held-out log-odds as the threshold, so that a model's prior for
    # one answer word does not count as an error (no labels used; AUROC is unchanged by it)
    log_odds = np.log(np.clip(p_zero[te], 1e-12, 1)) - np.log(np.clip(1 - p_zero[te], 1e-12, 1))
    zs["calibrated_acc"] = float(((log_odds > np.median(log_odds)).astype(int) == y[te]).mean())
    best = {m: max(per_layer, key=lambda k: per_layer[k][m]["acc"]) for m in PROBES}
    metrics = {"zero_shot_acc": zs["acc"], "zero_shot_calibrated_acc": zs["calibrated_acc"],
               "zero_shot_auroc": zs["auroc"], "n_pairs": int(len(y)),
               "n_test": int(len(te)),
               **{f"{m}_best_acc": per_layer[best[m]][m]["acc"] for m in best},
               **{f"{m}_best_auroc": per_layer[best[m]][m]["auroc"] for m in best},
               **{f"{m}_best_layer": int(best[m]) for m in best}}
    if d is not None:
        found = max(per_layer, key=lambda k: max(per_layer[k]["ccs"]["truth_acc_any_sign"],
                                                  per_layer[k]["ccs"]["distractor_acc_any_sign"]))
        c = per_layer[found]["ccs"]
        metrics.update({"ccs_truth_acc": c["truth_acc_any_sign"], "ccs_distractor_acc": c["distractor_acc_any_sign"],
                        "ccs_found_layer": int(found),
                        "ccs_finds_distractor": float(c["distractor_acc_any_sign"] > c["truth_acc_any_sign"]),
                        "zero_shot_distractor_acc": zs["distractor_acc_any_sign"],
                        **{f"{m}_distractor_acc": per_layer[best[m]][m]["distractor_acc_any_sign"]
                           for m in ("logreg", "mass_mean")}})
    return metrics, {"zero_shot": zs, "layers": per_layer, "n_train": int(len(tr)), "n_test": int(len(te))}


_LOADED: dict = {}
"""the last model loaded by a probe run of this process, {key: (tokenizer, model)}: a benchmark or sweep running
several probe jobs on one model loads it once"""


def _load_model(job: ProbeJob, device: str, precision: str):
    from ..models.lm import load_lm

    key = (job.model, str(job.home), device, precision, job.trust_remote_code)
    if key not in _LOADED:
        _LOADED.clear()
        tok, model = load_lm(job.model, home=job.home, device=device,
                             dtype={"fp32": None}.get(precision, precision), trust_remote_code=job.trust_remote_code,
                             require_eos=False)
        tok.padding_side = "right"
        _LOADED[key] = (tok, model)
    return _LOADED[key]


def run_probe(job: ProbeJob) -> dict:
    if job.layers:
        _check_layers(job)
    pairs = job.pairs()  # bad data is a one-line error before the run is claimed
    if len(np.unique(pairs.labels)) < 2:
        raise SuperalignError(f"the first {len(pairs)} pairs all have label {pairs.labels[0]}",
                              "raise --n or shuffle the file")

    def body(store, art):
        from .extract import pair_features

        tok, model = _load_model(job, *job.placement())
        h_neg, h_pos, p_zero = pair_features(model, tok, pairs, job.pool)
        layers = job.layers or list(range(h_pos.shape[0]))
        metrics, record = probe_layers(h_neg, h_pos, p_zero, pairs.labels, layers, pairs.distractor, job.test_frac,
                                       job.seed, job.ccs_restarts, job.ccs_epochs, job.sign_pairs)
        write_json_atomic(art / "per_layer.json", {
            **record, "pairs": pairs.fingerprint, "template": pairs.template.text, "prefix": pairs.prefix,
            "prefix_kind": job.prefix, "distractor": pairs.distractor_name, "example": {
                "neg": pairs.neg[0], "pos": pairs.pos[0], "prompt": pairs.prompts[0], "label": pairs.labels[0]}})
        return metrics, {"per_layer": str(art / "per_layer.json")}

    return run_job("monitor-probe", job, body)


@dataclass
class PairsCommand(PairsSpec):
    """Print (or write as jsonl) the filled contrast pairs of a dataset and template: exactly the texts the probes
    read, with the misleading prefix and the distractor applied."""

    show: int = _f(3, "pairs printed (0: none)")
    out: str = _f("", "write every pair as jsonl here (neg, pos, prompt, label, distractor)")

    def __post_init__(self):
        self.check_pairs_spec()
        check_int("show", self.show, minimum=0, example=3)


def add_pairs_arguments(parser) -> None:
    from ..config import add_dataclass_args

    add_dataclass_args(parser, PairsCommand)


def pairs_command(ns) -> int:
    import json

    from ..config import from_args
    from ..runs.files import write_text_atomic

    cmd = from_args(PairsCommand, ns)
    pairs = cmd.pairs()
    rows = [{"neg": n, "pos": p, "prompt": q, "label": y,
             **({"distractor": pairs.distractor[i]} if pairs.distractor is not None else {})}
            for i, (n, p, q, y) in enumerate(zip(pairs.neg, pairs.pos, pairs.prompts, pairs.labels))]
    print(f"{len(pairs)} contrast pairs from {pairs.source}, template {pairs.template.name!r} "
          f"{pairs.template.text!r} answers {pairs.template.answers}; prefix {cmd.prefix}"
          f"{f' ({cmd.prefix_k} demonstrations)' if cmd.prefix != 'none' else ''}; distractor {pairs.distractor_name}; "
          f"fingerprint {pairs.fingerprint}; {sum(pairs.labels)} of {len(pairs)} true answers are the second")
    for r in rows[:cmd.show]:
        print("-" * 60)
        print(json.dumps(r, ensure_ascii=False, indent=1))
    if cmd.out:
        write_text_atomic(cmd.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"wrote {cmd.out}")
    return 0
