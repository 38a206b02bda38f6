"""`superalign monitor probe`: zero-shot vs CCS vs mass-mean vs logistic regression on one contrast-pair dataset, per
layer, with bootstrap CIs — recorded in the run store like every job."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SuperalignError
from ..runs.files import write_json_atomic
from ..runs.jobs import JobBase, _f, run_job
from ..validate import check_fraction, check_int, check_nonempty, check_seed

METHODS = ("zero_shot", "logreg", "mass_mean", "ccs")


@dataclass
class ProbeJob(JobBase):
    """Fit and compare latent-knowledge probes on a causal LM's hidden states of contrast pairs (Burns et al. 2022;
    Marks & Tegmark 2023): per layer, accuracy and AUROC on held-out pairs with bootstrap 95% CIs."""

    model: str = _f("smollm2", "causal LM: smollm2, testbed, hf:<id|path> or a folder")
    dataset: str = _f("sst2", "sst2, boolq (shared data) or a local .jsonl/.csv (then --template-text and --answers)")
    template: str = _f("", "built-in template name (default: the dataset's first)")
    template_text: str = _f("", "template for a local file, with {answer} and {column} placeholders")
    answers: list[str] = field(default_factory=list, metadata={"help": "a local file's two answers: false true"})
    label_col: str = _f("label", "label column (0/1)")
    split: str = _f("validation", "split of a shared dataset")
    data_dir: str = _f("", "shared data folder (else $SUPERALIGN_DATA)")
    n: int = _f(400, "contrast pairs used (the first n)")
    test_frac: float = _f(0.5, "share of pairs held out for evaluation")
    layers: list[int] = field(default_factory=list, metadata={"help": "layers to probe (0 = embeddings; default: all)"})
    pool: str = _f("last", "hidden state of the last token or the mean over tokens", choices=("last", "mean"))
    ccs_restarts: int = _f(10, "CCS random restarts (the lowest loss is kept)")
    ccs_epochs: int = _f(1000, "CCS full-batch AdamW steps per restart")
    sign_pairs: int = _f(8, "labelled training pairs that only orient CCS's sign, for reporting")
    seed: int = _f(0, "seed of the split, CCS restarts and bootstrap")

    def __post_init__(self):
        check_int("n", self.n, minimum=4, example=400)
        check_fraction("test_frac", self.test_frac, example=0.5)
        check_int("ccs_restarts", self.ccs_restarts, minimum=1, example=10)
        check_int("ccs_epochs", self.ccs_epochs, minimum=1, example=1000)
        check_int("sign_pairs", self.sign_pairs, minimum=1, example=8)
        check_seed("seed", self.seed)
        check_nonempty("model", self.model, "smollm2")
        if self.template_text and len(self.answers) != 2:
            raise SuperalignError("--template-text needs two --answers (false, true)", "pass e.g. --answers no yes")

    def key(self) -> dict:
        """The config plus the content of the data file it reads, so an edited file is a new run."""
        from ..data.fingerprint import file_fingerprint

        d = super().key()
        path = _data_path(self)
        d["data_fingerprint"] = file_fingerprint(path) if path.is_file() else None
        return d


def _data_path(job: ProbeJob):
    from pathlib import Path

    from .pairs import TEMPLATES, shared_path

    return shared_path(job.dataset, job.split, job.data_dir or None) if job.dataset in TEMPLATES else Path(job.dataset)


def _pairs(job: ProbeJob):
    from .pairs import TEMPLATES, Template, load_pairs

    if job.dataset in TEMPLATES:
        return load_pairs(job.dataset, job.template or None, job.split, job.data_dir or None, job.n,
                          label_col=job.label_col)
    if not job.template_text:
        raise SuperalignError(f"{job.dataset}: a local file needs --template-text and --answers",
                              "e.g. --template-text 'Claim: {text} True? {answer}' --answers no yes")
    return load_pairs(job.dataset, Template("custom", job.template_text, tuple(job.answers)), limit=job.n,
                      label_col=job.label_col)


def _scores(y: np.ndarray, p: np.ndarray, seed: int, n_boot: int = 1000) -> dict:
    """Accuracy and AUROC with percentile-bootstrap 95% CIs over held-out pairs."""
    from ..train.metrics import accuracy, auroc, percentile_ci

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (n_boot, len(y)))
    accs = np.array([accuracy(y[i], p[i]) for i in idx])
    aucs = np.array([auroc(y[i], p[i]) for i in idx])
    return {"acc": accuracy(y, p), "acc_ci": percentile_ci(accs), "auroc": auroc(y, p), "auroc_ci": percentile_ci(aucs)}


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


def run_probe(job: ProbeJob) -> dict:
    if job.layers:
        _check_layers(job)

    def body(store, art):
        from ..models.lm import load_lm
        from .extract import check_layer, hidden_states, zero_shot
        from .probes import fit_ccs, fit_logreg, fit_mass_mean

        pairs = _pairs(job)
        y = np.asarray(pairs.labels)
        if len(np.unique(y)) < 2:
            raise SuperalignError(f"the first {len(y)} pairs all have label {y[0]}", "raise --n or shuffle the file")
        device, precision = job.placement()
        tok, model = load_lm(job.model, home=job.home, device=device, dtype={"fp32": None}.get(precision, precision),
                             trust_remote_code=job.trust_remote_code, require_eos=False)
        tok.padding_side = "right"
        h_neg = hidden_states(model, tok, pairs.neg, job.pool)
        h_pos = hidden_states(model, tok, pairs.pos, job.pool)
        p_zero = zero_shot(model, tok, pairs)
        n_layers = h_pos.shape[0] - 1
        layers = job.layers or list(range(n_layers + 1))
        for layer in layers:
            check_layer(layer, n_layers)
        rng = np.random.default_rng(job.seed)
        perm = rng.permutation(len(y))
        n_test = max(2, int(round(job.test_frac * len(y))))
        te, tr = perm[:n_test], perm[n_test:]
        if len(np.unique(y[tr])) < 2 or len(np.unique(y[te])) < 2:
            raise SuperalignError("the train or test split has one class only", "raise --n or change --seed")
        per_layer = {}
        for layer in layers:
            xp, xn = h_pos[layer], h_neg[layer]
            res = {}
            for name, probe in (("logreg", fit_logreg(xp[tr], xn[tr], y[tr], seed=job.seed)),
                                ("mass_mean", fit_mass_mean(xp[tr], xn[tr], y[tr])),
                                ("ccs", fit_ccs(xp[tr], xn[tr], job.ccs_restarts, job.ccs_epochs, seed=job.seed)
                                 .fix_sign(xp[tr][:job.sign_pairs], xn[tr][:job.sign_pairs],
                                           y[tr][:job.sign_pairs]))):
                res[name] = _scores(y[te], probe.predict(xp[te], xn[te]), job.seed)
                if name == "ccs":
                    res[name]["loss"] = probe.loss
            per_layer[str(layer)] = res
        zs = _scores(y[te], p_zero[te], job.seed)
        best = {m: max(per_layer, key=lambda k: per_layer[k][m]["acc"]) for m in ("logreg", "mass_mean", "ccs")}
        metrics = {"zero_shot_acc": zs["acc"], "n_pairs": int(len(y)), "n_test": int(len(te)),
                   **{f"{m}_best_acc": per_layer[best[m]][m]["acc"] for m in best},
                   **{f"{m}_best_layer": int(best[m]) for m in best}}
        write_json_atomic(art / "per_layer.json", {"zero_shot": zs, "layers": per_layer,
                                                    "pairs": pairs.fingerprint, "template": pairs.template.text})
        return metrics, {"per_layer": str(art / "per_layer.json")}

    return run_job("monitor-probe", job, body)
