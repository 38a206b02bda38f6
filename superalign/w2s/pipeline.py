"""The weak-to-strong pipeline, stage by stage, each stage cached by a content hash of its inputs:

1. splits (seeded, class-balanced, group-aware when the task has groups): weak-train / weak-label / validation / test
2. features: every layer of each transformer, one pass, cached per text
3. weak supervisor: trained on ground truth of weak-train; labels weak-label, validation and test
4. (optional) bootstrapping: intermediate models relabel weak-label, each trained on the previous labels
5. ceiling: the strong model trained on ground truth of weak-label
6. student: the strong model trained on weak labels of weak-label with the chosen loss; early stopping on
   weak-labelled validation (ground-truth early stopping kept only as a marked diagnostic)

A pairwise task (preference pairs) runs the same stages on pairs instead of rows, every model a Bradley–Terry reward
model, scored by pairwise accuracy: see superalign/w2s/pairwise.py.

Identities. A run's id hashes every semantic config field plus the task's content fingerprint (which includes the
sha256 of every input file), so an edited data file is a new run. Each stage's cache key is its upstream key plus
exactly the arguments that stage passes on: split key = task fingerprint + fractions + cap + seed; weak key = split
key + the weak model's fingerprint and the training arguments its mode uses; bootstrap key = weak key + each
intermediate model's fingerprint and mode arguments + the loss and that loss's parameters; ceiling key = split key +
the strong model's fingerprint and mode arguments. Fields in ``NON_SEMANTIC`` change none of them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..data import Task, TaskSpec, load_task, make_splits
from ..data.tasks import task_fingerprint
from ..errors import SuperalignError
from ..models.features import EncodeStats, count_truncated, encode_texts, warn_truncated
from ..models.registry import ModelSpec, load_config, resolve_model
from ..runs.cache import StageCache
from ..runs.ledger import open_ledger
from ..runs.store import RunStore, run_id
from ..train.distributed import Runtime
from ..train.loop import TrainConfig, fit, load_state
from ..train.losses import get_loss, get_pair_loss
from ..train.metrics import accuracy, auroc
from ..train.students import LinearProbe, TextClassifier, predict_proba
from .config import W2SConfig
from .pairwise import PairRewardModel, PairTable, bow_pair_rm, pair_splits
from .pgr import agreement, multiple_choice_accuracy, pairwise_accuracy, pgr_checked

# Fields that do not change what a run computes: where it is stored or run, how it is shown or summarised, and
# inputs whose effect the task fingerprint already carries (``data``: the folder the files come from; their content
# is in the fingerprint). weak/strong/loss/seed are per-cell and enter the run id through the cell.
NON_SEMANTIC = ("home", "executor", "address", "progress", "n_boot", "min_gap", "device", "trust_remote_code", "data",
                "weak", "strong", "loss", "seed", "dtype")
# ``dtype`` is semantic but enters identities only when it is not fp32 (see base_config and model_args): the CPU
# default keeps the run ids and stage keys it had before precisions existed, so stored runs and caches stay valid.
# Stage-key version: bump when a stage's computation changes without its arguments changing.
KEY_VERSION = 2


@dataclass(frozen=True)
class Cell:
    """One weak-to-strong run of the grid."""

    weak: str
    strong: str
    loss: str
    seed: int


def cells(cfg: W2SConfig) -> list[Cell]:
    return [Cell(w, s, loss, sd) for sd in cfg.seed for w in cfg.weak for s in cfg.strong for loss in cfg.loss]


def task_spec(cfg: W2SConfig) -> TaskSpec:
    return TaskSpec(cfg.task, cfg.data, cfg.text_col, cfg.label_col, cfg.label_map, cfg.hf_split, cfg.group_col,
                    cfg.convert)


def base_config(cfg: W2SConfig) -> dict:
    """The semantic config of a grid plus the task's content fingerprint (reloaded only when an input changed)."""
    d = dataclasses.asdict(cfg)
    out = {**{k: v for k, v in d.items() if k not in NON_SEMANTIC}, "task_fp": task_fingerprint(task_spec(cfg))}
    if cfg.dtype != "fp32":
        out["dtype"] = cfg.dtype
    return out


def cell_config(cfg: W2SConfig, cell: Cell) -> dict:
    return {**base_config(cfg), **dataclasses.asdict(cell)}


def cell_run_id(cfg: W2SConfig, cell: Cell) -> str:
    return run_id("w2s", cell_config(cfg, cell))


class Experiment:
    """Holds the task, splits and features for one config, and runs cells of its grid."""

    def __init__(self, cfg: W2SConfig, store: RunStore | None = None):
        self.cfg = cfg
        # validate everything before the store is touched: bad input leaves nothing half-written
        self.task: Task = load_task(task_spec(cfg))
        self.specs: dict[str, ModelSpec] = {m: resolve_model(m) for m in self.all_models()}
        self.fps = {m: spec.fingerprint() for m, spec in self.specs.items()}  # stats files: compute once
        for spec in self.specs.values():
            if spec.is_transformer:
                load_config(spec, cfg.trust_remote_code)  # an unknown hub id fails here, before the store
        if "human" in [*cfg.strong, *cfg.bootstrap_via]:
            raise SuperalignError("'human' can only be a weak supervisor",
                                  "use a transformer for --strong/--bootstrap-via")
        if "human" in cfg.weak and self.task.human_weak is None:
            raise SuperalignError(f"task {self.task.name} has no human weak labels", "use a model as --weak (e.g. bow)")
        self.task_fp = self.task.fingerprint()
        # reward-model mode: the unit of splits, labels, predictions and metrics is the pair (see pairwise.py)
        self.pairs: PairTable | None = PairTable(self.task) if self.task.pairwise else None
        self.y = self.pairs.y if self.pairs is not None else self.task.labels
        self.store = store or RunStore(cfg.home)
        self.cache = StageCache(self.store.cache_dir)
        self._rt: Runtime | None = None
        self.tokens = 0  # tokens (probes: examples) this process trained and predicted on, for the ledger
        self._splits: dict[int, object] = {}
        self._feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._truncated: dict[str, np.ndarray] = {}  # model path → bool per task row (-1: not counted yet)
        self.encode_stats = EncodeStats()

    @property
    def rt(self) -> Runtime:
        """Where the models train and in what precision; under `accelerate launch`, this process's place in the
        data-parallel group (every process runs the same stages; only rank 0 writes the store and the caches).
        Made on first use: computing identities needs no device."""
        if self._rt is None:
            self._rt = Runtime.create(self.cfg.device, self.cfg.dtype)
        return self._rt

    # ------------------------------------------------------------------ data
    def splits(self, seed: int):
        """The seed's splits, of rows — or of pairs on a pairwise task (made from the group-aware row splits)."""
        if seed not in self._splits:
            rows = make_splits(self.task.labels, seed, tuple(self.cfg.split_fracs), self.cfg.max_examples,
                               groups=self.task.groups)
            self._splits[seed] = pair_splits(rows, self.pairs) if self.pairs is not None else rows
        return self._splits[seed]

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        """Task rows of split indices (pairs → both of their rows)."""
        return self.pairs.rows(idx) if self.pairs is not None else idx

    def _scores(self, y: np.ndarray, p: np.ndarray) -> dict:
        """Accuracy and AUROC of predictions ``p``; on pairs, pairwise accuracy only (AUROC over arbitrarily oriented
        pairs measures nothing about the reward model)."""
        if self.pairs is not None:
            return {"acc": pairwise_accuracy(y, p)}
        return {"acc": accuracy(y, p), "auroc": auroc(y, p)}

    def split_key(self, seed: int) -> dict:
        return {"v": KEY_VERSION, "task": self.task_fp, "fracs": list(self.cfg.split_fracs),
                "max": self.cfg.max_examples, "seed": seed}

    def all_models(self) -> list[str]:
        return list(dict.fromkeys([*self.cfg.weak, *self.cfg.strong, *self.cfg.bootstrap_via]))

    def prepare_features(self, seeds: list[int] | None = None) -> None:
        """Encode, once per model path, every text any of the seeds needs (cached per text on disk)."""
        c = self.cfg
        need = [m for m in c.weak if c.weak_mode == "probe"]
        need += [*c.strong, *c.bootstrap_via] if c.mode == "probe" else []
        by_path = {self.specs[m].path: self.specs[m] for m in dict.fromkeys(need) if self.specs[m].is_transformer}
        if not by_path:
            return
        seeds = seeds if seeds is not None else self.cfg.seed
        union = np.unique(np.concatenate([self._rows(np.concatenate(list(self.splits(s).as_dict().values())))
                                          for s in seeds]))
        todo = {path: spec for path, spec in by_path.items()
                if not (path in self._feats and np.isin(union, self._feats[path][1]).all())}
        if not todo:
            return
        rt = self.rt
        if not rt.is_main:
            rt.barrier()  # data-parallel: rank 0 encodes and caches first; the others then read its cache
        for path, spec in todo.items():  # one pass per checkpoint: the whole depth ladder shares it
            arr = encode_texts(spec, [self.task.texts[i] for i in union], self.store.cache_dir, self.cfg.max_length,
                               device=rt.device, trust_remote_code=self.cfg.trust_remote_code,
                               progress=self.cfg.progress and rt.is_main, stats=self.encode_stats,
                               dtype=self.cfg.dtype)
            self._feats[path] = (arr, union)
        if rt.is_main and rt.world_size > 1:
            rt.barrier()

    def features(self, model: str, idx: np.ndarray) -> torch.Tensor:
        spec = self.specs[model]
        if spec.path not in self._feats or not np.isin(idx, self._feats[spec.path][1]).all():
            self.prepare_features()
        arr, union = self._feats[spec.path]
        layer = spec.layer if spec.layer is not None else arr.shape[0] - 1
        if layer >= arr.shape[0]:
            raise SuperalignError(f"model {model!r}: layer {layer} but the model has {arr.shape[0] - 1}")
        return torch.from_numpy(arr[layer, np.searchsorted(union, idx)])

    def n_truncated(self, model: str, seed: int) -> int:
        """How many of the seed's rows (all four splits) are longer than --max-length tokens for ``model``
        (0 for bow and human). Counted once per checkpoint and row; warns once per checkpoint and seed."""
        spec = self.specs.get(model)
        if spec is None or not spec.is_transformer:
            return 0
        idx = self._rows(np.concatenate(list(self.splits(seed).as_dict().values())))
        flags = self._truncated.setdefault(spec.path, np.full(len(self.task), -1, dtype=np.int8))
        todo = idx[flags[idx] < 0]
        if len(todo):
            flags[todo] = count_truncated(spec, [self.task.texts[i] for i in todo], self.cfg.max_length,
                                          self.cfg.trust_remote_code)
            warn_truncated(model, int((flags[idx] > 0).sum()), len(idx), self.cfg.max_length, f"w2s seed {seed}")
        return int((flags[idx] > 0).sum())

    # ------------------------------------------------------------------ models
    def _train_cfg(self, mode: str) -> TrainConfig:
        c = self.cfg
        return TrainConfig(c.epochs, c.lr, c.batch_size, c.weight_decay) if mode == "probe" else \
            TrainConfig(c.ft_epochs, c.ft_lr, c.batch_size, c.weight_decay)

    def model_args(self, model: str, mode: str) -> dict:
        """Exactly what training ``model`` in ``mode`` depends on besides its data (see train_and_predict)."""
        if model in ("bow", "human"):  # fixed TF-IDF + logistic regression / the task's own labels
            return {"model": model}
        c = self.cfg
        d = {"model": model, "fp": self.fps[model], "mode": mode, "train": dataclasses.asdict(self._train_cfg(mode)),
             "max_length": c.max_length}
        if mode == "last-n":
            d["n_train_layers"] = c.n_train_layers
        if mode == "lora":
            d["lora_rank"] = c.lora_rank
        if c.dtype != "fp32":  # features are encoded, and finetuning runs, in this precision
            d["dtype"] = c.dtype
        return d

    def loss_args(self, loss: str) -> dict:
        """The loss and exactly the parameters it takes (see _loss)."""
        c = self.cfg
        if loss == "aux_conf":
            return {"loss": loss, "alpha": c.aux_alpha, "warmup": c.aux_warmup}
        if loss == "product":
            return {"loss": loss, "beta": c.product_beta, "warmup": c.aux_warmup}
        return {"loss": loss}

    def weak_key(self, seed: int, weak: str) -> dict:
        return {"stage": "weak", "split": self.split_key(seed), **self.model_args(weak, self.cfg.weak_mode)}

    def boot_key(self, seed: int, weak: str, loss: str) -> dict:
        # the intermediates train on soft labels: --hard-weak-labels only changes the final student's targets
        return {"stage": "boot", "weak": self.weak_key(seed, weak), "loss": self.loss_args(loss),
                "via": [self.model_args(m, self.cfg.mode) for m in self.cfg.bootstrap_via]}

    def ceiling_key(self, seed: int, strong: str) -> dict:
        return {"stage": "ceiling", "split": self.split_key(seed), **self.model_args(strong, self.cfg.mode)}

    def _inputs(self, model: str, mode: str, idx: np.ndarray):
        """Rows ``idx``: features [n, d] or texts; pairs ``idx``: features [n, 2, d] or (text A, text B) tuples."""
        if self.pairs is not None:
            if mode == "probe":
                return self.features(model, self.pairs.rows(idx)).reshape(len(idx), 2, -1)
            return [(self.task.texts[a], self.task.texts[b]) for a, b in self.pairs.ab[idx]]
        return self.features(model, idx) if mode == "probe" else [self.task.texts[i] for i in idx]

    def _new_model(self, model: str, mode: str, train_inputs, seed: int):
        torch.manual_seed(seed)
        if mode == "probe":
            if self.pairs is not None:  # standardised with the statistics of every training text, A and B alike
                return PairRewardModel(LinearProbe(train_inputs.reshape(-1, train_inputs.shape[-1])))
            return LinearProbe(train_inputs)
        net = TextClassifier(self.specs[model], mode, self.cfg.n_train_layers, self.cfg.max_length,
                             str(self.rt.device), self.cfg.trust_remote_code, self.cfg.lora_rank, self.rt.precision)
        return PairRewardModel(net) if self.pairs is not None else net

    def train_and_predict(self, model: str, mode: str, seed: int, train_idx, targets, val_idx, val_targets,
                          predict: dict[str, np.ndarray], loss_fn=None, diag_val_labels=None, desc="train"):
        """Train ``model`` on (train_idx, soft targets), early-stop on (val_idx, val_targets), and return
        ({name: P(class 1) — on pairs P(A ≻ B) — on predict[name]}, fit result, flops estimate, diagnostic
        predictions). ``loss_fn`` defaults to cross-entropy (on pairs: Bradley–Terry)."""
        loss_fn = loss_fn or self._loss("xent")
        if mode != "probe":
            self.n_truncated(model, seed)  # finetuning tokenizes raw texts: warn about what --max-length cuts
        x_tr = self._inputs(model, mode, train_idx)
        net = self._new_model(model, mode, x_tr, seed)
        rt = self.rt
        res = fit(net, x_tr, targets, loss_fn, self._train_cfg(mode), seed, self._inputs(model, mode, val_idx),
                  val_targets, diag_val_labels, desc=desc, progress=self.cfg.progress and mode != "probe", rt=rt)
        load_state(net, res.best_state)
        preds = {k: predict_proba(net, self._inputs(model, mode, v), autocast=rt.autocast) for k, v in predict.items()}
        diag = {}
        if res.diag_state is not None:
            load_state(net, res.diag_state)
            diag = {k: predict_proba(net, self._inputs(model, mode, v), autocast=rt.autocast)
                    for k, v in predict.items()}
        # FLOPs and tokens this process did (under data parallelism its shard of training; run_cell sums them)
        if mode == "probe":
            n_pred = sum(len(v) for v in predict.values()) + len(val_idx) * len(res.history)
            flops = net.flops_per_example(True) * res.examples_seen + net.flops_per_example(False) * n_pred
            self.tokens += res.examples_seen + n_pred
        else:
            net = net.scorer if isinstance(net, PairRewardModel) else net  # the transformer counts its tokens
            # forward 2N per token, backward 4N through trainable blocks (LoRA: activation grads everywhere ≈ 2N)
            if getattr(net, "prefix_layers", None) is not None:  # cached frozen prefix: only the top blocks run
                flops = net.prefix_flops + 6.0 * net.n_trainable * float(net.tokens_seen)
            else:
                bwd = 2 * net.n_params if mode == "lora" else 4 * net.n_trainable
                flops = float(net.tokens_seen) * (2 * net.n_params + bwd)
            self.tokens += net.tokens_seen
        return preds, res, flops, diag

    # ------------------------------------------------------------------ stages
    def _cache_get(self, stage: str, key: dict):
        """A stage-cache hit or None, the same on every process: under data parallelism rank 0 looks and tells the
        others (a stage is then computed by all of them together, or by none), so a cache entry written between two
        processes' looks never splits the group."""
        hit = self.cache.get(stage, key) if self.rt.is_main else None
        return self.rt.broadcast(hit)

    def _cache_put(self, stage: str, key: dict, arrays: dict, meta: dict | None = None) -> None:
        if self.rt.is_main:  # the other processes computed the same arrays; one writer is enough
            self.cache.put(stage, key, arrays, meta)

    def weak_stage(self, seed: int, weak: str) -> tuple[dict[str, np.ndarray], dict]:
        """Weak supervisor's P(class 1) on weak_label / val / test (cached)."""
        s = self.splits(seed)
        key = self.weak_key(seed, weak)
        hit = self._cache_get("weak", key)
        if hit:
            return hit[0], {**hit[1], "cached": True}
        y = self.y
        targets = {"weak_label": s.weak_label, "val": s.val, "test": s.test}
        t0 = time.perf_counter()
        flops = 0.0
        if weak == "human":
            if self.task.human_weak is None:
                raise SuperalignError(f"task {self.task.name} has no human weak labels",
                                      "use a model as --weak (e.g. minilm-l1)")
            preds = {k: self.task.human_weak[v].astype(np.float64) for k, v in targets.items()}
        elif weak == "bow" and self.pairs is not None:
            preds, flops = bow_pair_rm(self.task.texts, self.pairs, s.weak_train, targets, seed)
        elif weak == "bow":
            from sklearn.feature_extraction.text import TfidfVectorizer
            from sklearn.linear_model import LogisticRegression
            vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
            xtr = vec.fit_transform([self.task.texts[i] for i in s.weak_train])
            clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(xtr, y[s.weak_train])
            preds = {k: clf.predict_proba(vec.transform([self.task.texts[i] for i in v]))[:, 1]
                     for k, v in targets.items()}
            flops = 6.0 * xtr.nnz * 100
        else:
            preds, _, flops, _ = self.train_and_predict(weak, self.cfg.weak_mode, seed, s.weak_train, y[s.weak_train],
                                                        s.val, y[s.val], targets, desc=f"weak {weak}")
        meta = {**self._scores(y[s.test], preds["test"]), "flops": flops, "wall_s": time.perf_counter() - t0}
        self._cache_put("weak", key, preds, meta)
        return preds, {**meta, "cached": False}

    def label_stage(self, seed: int, weak: str, loss: str) -> tuple[dict[str, np.ndarray], float]:
        """The labels the student trains on: the weak supervisor's, or — bootstrapping — those of the last
        intermediate model of the chain weak → m1 → … (each trained on the previous labels with ``loss``).

        Each intermediate relabels weak-label by 2-fold cross-fitting (train on one half, label the other) so it
        never labels examples it was trained on; validation labels average the two folds."""
        wp, _ = self.weak_stage(seed, weak)
        labels = {"weak_label": wp["weak_label"], "val": wp["val"]}
        if not self.cfg.bootstrap_via:
            return labels, 0.0
        key = self.boot_key(seed, weak, loss)
        hit = self._cache_get("boot", key)
        if hit:
            return hit[0], 0.0
        s = self.splits(seed)
        flops = 0.0
        for m in self.cfg.bootstrap_via:
            rng = np.random.default_rng(seed)
            half = rng.permutation(len(s.weak_label)) < len(s.weak_label) // 2
            new_wl = np.zeros(len(s.weak_label))
            new_val = np.zeros(len(s.val))
            for fold in (half, ~half):
                preds, _, f, _ = self.train_and_predict(
                    m, self.cfg.mode, seed, s.weak_label[fold], labels["weak_label"][fold], s.val, labels["val"],
                    {"other": s.weak_label[~fold], "val": s.val}, loss_fn=self._loss(loss), desc=f"bootstrap {m}")
                new_wl[~fold] = preds["other"]
                new_val += preds["val"] / 2
                flops += f
            labels = {"weak_label": new_wl, "val": new_val}
        self._cache_put("boot", key, labels)
        return labels, flops

    def ceiling_stage(self, seed: int, strong: str) -> tuple[dict[str, np.ndarray], dict]:
        s = self.splits(seed)
        key = self.ceiling_key(seed, strong)
        hit = self._cache_get("ceiling", key)
        if hit:
            return hit[0], {**hit[1], "cached": True}
        y = self.y
        t0 = time.perf_counter()
        preds, _, flops, _ = self.train_and_predict(strong, self.cfg.mode, seed, s.weak_label, y[s.weak_label], s.val,
                                                    y[s.val], {"test": s.test}, desc=f"ceiling {strong}")
        meta = {**self._scores(y[s.test], preds["test"]), "flops": flops, "wall_s": time.perf_counter() - t0}
        self._cache_put("ceiling", key, preds, meta)
        return preds, {**meta, "cached": False}

    def _loss(self, loss: str):
        get = get_pair_loss if self.pairs is not None else get_loss  # same names and parameters on pairs
        if loss == "aux_conf":
            return get(loss, alpha=self.cfg.aux_alpha, warmup_frac=self.cfg.aux_warmup)
        if loss == "product":
            return get(loss, beta=self.cfg.product_beta, warmup_frac=self.cfg.aux_warmup)
        return get(loss)

    def run_cell(self, cell: Cell) -> tuple[dict, dict[str, np.ndarray], dict]:
        """(metrics, test-set predictions, compute record) of one (weak, strong, loss, seed) run. The compute record
        is a :class:`~superalign.runs.ledger.Ledger` summary, like every job's (FLOPs per stage under ``flops``),
        plus ``cached_stages`` and the student's ``history``."""
        rt = self.rt
        device = "cpu" if rt.device.type == "cpu" else str(rt.device)  # Accelerate calls a process's CPU 'cpu:0'
        with open_ledger(device, rt.precision, rt.world_size) as ledger:
            m, preds, stage_flops, cached, history, tokens = self._run_cell(cell)
            if rt.world_size > 1:  # each process counted the work it did: the run's are the sums
                stage_flops = {k: rt.all_sum(v) for k, v in stage_flops.items()}
                tokens = int(rt.all_sum(tokens))
            for stage, f in stage_flops.items():
                ledger.add(f, stage=stage)
            ledger.add(tokens=tokens)
            compute = ledger.summary()
        return m, preds, {**compute, "cached_stages": cached, "history": history}

    def _run_cell(self, cell: Cell):
        tokens0 = self.tokens
        s = self.splits(cell.seed)
        y = self.y
        wp, wmeta = self.weak_stage(cell.seed, cell.weak)
        labels, boot_flops = self.label_stage(cell.seed, cell.weak, cell.loss)
        cp, cmeta = self.ceiling_stage(cell.seed, cell.strong)
        train_t = labels["weak_label"]
        val_t = labels["val"]
        if self.cfg.hard_weak_labels:
            train_t = (train_t > 0.5).astype(float)
        sp, res, sflops, diag = self.train_and_predict(
            cell.strong, self.cfg.mode, cell.seed, s.weak_label, train_t, s.val, val_t, {"test": s.test},
            loss_fn=self._loss(cell.loss), diag_val_labels=y[s.val], desc=f"student {cell.strong} {cell.loss}")
        yt = y[s.test]
        # on pairs: pairwise accuracy under the same names (weak_acc …), no AUROC, and metric = "pairwise_acc"
        pairwise = self.pairs is not None
        acc = pairwise_accuracy if pairwise else accuracy
        m = {f"{who}_{k}": v for who, p in (("weak", wp), ("student", sp), ("ceiling", cp))
             for k, v in self._scores(yt, p["test"]).items()}
        m.update({
            "weak_label_acc": acc(y[s.weak_label], train_t),
            "best_epoch": res.best_epoch,
            # diagnostic only: early stopping on ground-truth validation labels (not available in a real W2S setting)
            "diag_gt_es_student_acc": acc(yt, diag["test"]) if diag else float("nan"),
            "diag_gt_es_best_epoch": res.diag_best_epoch,
            "n_train": len(s.weak_label), **s.sizes(),
            "n_dropped_balance": s.n_dropped_balance, "n_dropped_cap": s.n_dropped_cap,
            "test_majority_rate": float(max(yt.mean(), 1 - yt.mean())),
            **agreement(yt, wp["test"], sp["test"]),
        })
        if pairwise:
            m["metric"] = "pairwise_acc"
        for metric in (("acc",) if pairwise else ("acc", "auroc")):
            value, note = pgr_checked(yt, m[f"weak_{metric}"], m[f"student_{metric}"], m[f"ceiling_{metric}"],
                                      "pair_acc" if pairwise else metric, self.cfg.min_gap)
            m[f"pgr_{metric}"] = value
            if note:
                m[f"pgr_{metric}_note"] = note
        preds = {"y": yt.astype(np.int64), "p_weak": wp["test"], "p_student": sp["test"], "p_ceiling": cp["test"]}
        if self.task.questions is not None and not pairwise:  # a pair is its own 2-way question: pair acc says it
            q = self.task.questions[s.test]
            for who in ("weak", "student", "ceiling"):
                m[f"{who}_mc_acc"], m["n_mc_questions"] = multiple_choice_accuracy(yt, preds[f"p_{who}"], q)
            preds["question"] = q.astype(np.int64)
        if self.task.meta.get("label_map_dropped"):
            m["n_dropped_label_map"] = self.task.meta["label_map_dropped"]
        for who, model in (("weak", cell.weak), ("strong", cell.strong)):
            m[f"n_truncated_{who}"] = self.n_truncated(model, cell.seed)
        if self.cfg.bootstrap_via:
            m["n_truncated_via"] = max(self.n_truncated(v, cell.seed) for v in self.cfg.bootstrap_via)
        if diag:
            preds["p_student_gt_es"] = diag["test"]
        stage_flops = {"weak": 0.0 if wmeta.get("cached") else wmeta["flops"], "bootstrap": boot_flops,
                       "ceiling": 0.0 if cmeta.get("cached") else cmeta["flops"], "student": sflops}
        cached = [k for k, meta in (("weak", wmeta), ("ceiling", cmeta)) if meta.get("cached")]
        return m, preds, stage_flops, cached, res.history, self.tokens - tokens0


def save_preds(path: Path, preds: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in preds.items()}, str(tmp))
    tmp.replace(path)


def load_preds(path: str | Path) -> dict[str, np.ndarray]:
    return load_file(str(path))


def run_and_record(exp: Experiment, cell: Cell, group_id: str | None = None) -> dict:
    """Claim one cell, run it and record it (claimed → done, or failed with the error); returns its stored row.

    A cell already done is returned as stored, without running; a cell another live process is computing is not
    run either: its row comes back with status 'running' and the caller waits for it. The row's ``cached`` is
    False only when this call computed it."""
    store = exp.store
    conf = cell_config(exp.cfg, cell)  # once: it stats the task's input files
    rid = run_id("w2s", conf)
    if not store.claim(rid, "w2s", conf, group_id).claimed:
        return {**store.get(rid), "cached": True}  # type: ignore[dict-item]
    try:
        metrics, preds, compute = exp.run_cell(cell)
        return {**record_result(store, rid, metrics, preds, compute), "cached": False}
    except BaseException as e:
        store.fail(rid, f"{type(e).__name__}: {e}")  # writes nothing once the run is done or no longer ours
        raise


def record_result(store: RunStore, rid: str, metrics: dict, preds: dict[str, np.ndarray], compute: dict) -> dict:
    """Write a finished cell this process holds: its test predictions as an artefact, then the run row as done
    (one transaction). A cell taken over by another process meanwhile is left to it; its row is returned."""
    history = compute.pop("history")
    if store.holds(rid):
        p = store.artefact_dir(rid) / "preds.safetensors"
        save_preds(p, preds)
        store.finish(rid, metrics, {"preds": str(p), "history": history}, compute)
    return store.get(rid)  # type: ignore[return-value]
