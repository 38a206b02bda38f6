"""openai/weak-to-strong's own training code against superalign: same models, rows, losses and seeds.

Usage:
    python benchmarks/w2s_vs_openai.py --openai-repo /path/to/weak-to-strong   # (or set $W2S_OPENAI_REPO)
    python benchmarks/w2s_vs_openai.py --quick                                  # tiny smoke version

What runs. The grid is weak → strong for two GPT-2-shaped models built here (default ``weak``: 1 block × 24 wide,
``strong``: 2 blocks × 64 wide; input embeddings from MiniLM-L6's word/position embeddings projected on their top
principal directions, random blocks, dropout 0; saved once with ``save_pretrained`` together with MiniLM's WordPiece
tokenizer cut to the tokens the rows use; both sides load those very folders: see build_models), losses
{xent, logconf ↔ aux_conf}, seeds 0..S-1, on class-balanced SST-2 train rows from the shared data folder
($SUPERALIGN_DATA or --data). The sizes were chosen so that, with 1,000 training rows per half, the weak model is
well above chance and the strong one above it (deeper/wider random-block models collapsed to one class at this
learning rate on this little data) and the whole grid (3 seeds) takes ~7 minutes on 2 busy CPU cores.

Per seed and side: the weak model trained on ground truth of the weak half, its soft labels on the strong half,
the ceiling (strong model on ground truth) and one student per loss; test accuracy of each; PGR per side with
superalign.w2s.pgr.bootstrap_pgr on each side's saved test predictions (the same estimator for both). The sides
alternate seed by seed (theirs, ours, theirs, ...) so machine load hits both alike; wall seconds are summed per
side.

Same rows. superalign cuts each seed's rows (``make_splits``: weak-train / weak-label / val / test). Their side
gets those rows through a dataset registered in its registry, ordered so that *their own* ``train_simple.main``
(its load_dataset shuffle and ``train_test_split(test_size=0.5, seed=seed)``) puts exactly superalign's weak-train
rows in its first half (weak model and ceiling train there), its weak-label rows in the second half (weak labels
and students) and superalign's test rows in its test set. The permutation is found by running their two shuffles
on a column of row positions. superalign's validation rows (early stopping, a small extra cut) have no
counterpart in their code, which trains for a fixed number of epochs and keeps the last state.

Their side is ``train_simple.main`` itself, called in-process once per (model, loss, seed) as their sweep.py does
per subprocess, with ``lr`` given explicitly (so its default-LR table is not used) and default minibatch size
per device (1: one forward per example, then one optimizer step per batch of 32). Nothing in their checkout is
edited. What this script patches, in-process only:
  * device choice: ``torch.cuda.get_device_properties`` / ``is_bf16_supported`` answer for a CPU (read by the
    module-level MODEL_CONFIGS of train_simple.py at import; nothing of it is used for our models),
    ``torch.cuda.device_count`` returns 1 during their calls (so their single-device branch is taken, as on one
    GPU), ``TransformerWithHead.to("cuda")`` moves to the CPU instead, and ``torch.cuda.empty_cache`` /
    ``memory_allocated`` (their clear_mem) are no-ops returning 0 on a machine without CUDA;
  * missing optional imports: ``wandb`` (their logger only calls it when $WANDB_PROJECT is set — it is not) and
    ``torch_optimizer`` (only for adafactor, not used) are stubbed when not installed; ``fire`` likewise;
  * transformers 5 compatibility: their train.py imports ``load_sharded_checkpoint`` from
    ``transformers.modeling_utils`` (used only to resume a saved sharded run; never here), which transformers 5 moved
    to ``transformers.trainer_utils``: the name is re-exported where they look for it; and
    ``TransformerWithHead.save_pretrained`` (its ``lm`` and ``transformer`` attributes share every tensor, which
    transformers 5's safetensors writer refuses) writes config.json + pytorch_model.bin with ``torch.save``, as
    transformers 4.3x (their era, and the file name their resume code reads) did;
  * registries: our two model folders as ModelConfig entries of train_simple.MODELS_DICT (eval batch 32, their
    GPT-2 setting), and each seed's rows as a dataset in weak_to_strong.datasets' registry.
Their losses run as they are, including logconf's warm-up (coef = step_frac during the first 10%, then a jump to
aux_coef 0.5: the "logconf warm-up bug"); superalign's aux_conf gets α = 0.5 and warm-up 0.1 but ramps linearly.

Knobs matched on our side: ``mode=full`` and ``weak_mode=full`` (their code finetunes every weight), ft_epochs,
ft_lr, batch size 32, weight_decay 0 (their Adam has none), cosine schedule over the run (both). Left different
(each side's own design): superalign shuffles and length-buckets batches each epoch (theirs: one fixed order),
early-stops on weak-labelled validation AUROC over the epochs, and trains the ceiling on ground truth of the
weak-label rows (theirs: of the weak-train rows, the same number of rows); its head has a bias and a small random
init (theirs: zero, no bias).

Output: a table on stdout and benchmarks/results/w2s_vs_openai.json (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import pickle
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("WANDB_PROJECT", None)  # their logger would log to wandb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
THEIR_LOSS = {"xent": "xent", "aux_conf": "logconf"}


# ---------------------------------------------------------------------------------------------------------- models
def build_models(root: Path, texts: list[str], shapes: dict[str, tuple[int, int, bool]]) -> dict[str, str]:
    """GPT-2-shaped causal LMs (``shapes``: name → (blocks, width, MiniLM embeddings or random ones)) over
    MiniLM-L6's WordPiece tokenizer cut down to the tokens the benchmark's texts use, with input embeddings from
    MiniLM (its word and position embeddings projected on their top ``width`` principal directions: pretrained
    input representations, random blocks), dropout 0.

    The cut vocabulary tokenizes every one of ``texts`` exactly as the full one does (checked: WordPiece's
    greedy longest match only ever picks tokens the full tokenization uses), keeps [PAD] at id 0 (which their
    TransformerWithHead assumes when it counts tokens ≠ 0), and makes the embedding table ~10× smaller than
    MiniLM's 30,522 rows, so CPU steps are spent in the blocks. Built once per folder, deterministically."""
    import shutil

    import torch
    from transformers import AutoModel, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from superalign.models.registry import minilm_path

    full = AutoTokenizer.from_pretrained(minilm_path())
    used = sorted({i for ids in full(texts)["input_ids"] for i in ids} | set(full.all_special_ids))
    vocab = full.convert_ids_to_tokens(used)
    tok_dir = root / f"tokenizer_{len(used)}"
    if not (tok_dir / "vocab.txt").exists():
        tmp = tok_dir.with_name(tok_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(Path(minilm_path()) / f, tmp / f)
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
        os.replace(tmp, tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    old_of_new = np.asarray(used)
    for a, b in zip(full(texts)["input_ids"], tok(texts)["input_ids"]):
        if list(old_of_new[b]) != a:
            raise SystemExit("the cut vocabulary tokenizes a text differently from MiniLM's: a bug in this script")
    if tok.pad_token_id != 0:
        raise SystemExit("the cut vocabulary moved [PAD] off id 0")
    bert = AutoModel.from_pretrained(minilm_path())
    word = bert.embeddings.word_embeddings.weight.detach()[torch.as_tensor(old_of_new)]
    pos = bert.embeddings.position_embeddings.weight.detach()[:128]
    # principal directions of the words actually used; positions go through the same projection (BERT adds the
    # two in one space, so one basis serves both)
    mean = word.mean(0)
    basis = torch.linalg.svd(word - mean, full_matrices=False).Vh
    out = {}
    for name, (n_layer, width, pretrained) in shapes.items():
        d = root / f"gpt2_{n_layer}x{width}_v{len(used)}_{'minilm' if pretrained else 'random'}_emb"
        out[name] = str(d)
        if (d / "config.json").exists():
            continue
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=len(used), n_positions=128, n_embd=width, n_layer=n_layer,
                         n_head=max(1, width // 32), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
        lm = GPT2LMHeadModel(cfg)
        if pretrained:
            with torch.no_grad():
                proj = basis[:width].T  # [384, width]
                w = (word - mean) @ proj
                scale = 0.02 / w.std()  # GPT-2's init scale, so the blocks' residual stream starts where it expects
                lm.transformer.wte.weight.copy_(w * scale)
                lm.transformer.wpe.weight.copy_((pos - pos.mean(0)) @ proj * scale)
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, d)
    return out


# ------------------------------------------------------------------------------------------------------------ data
def write_pool(path: Path, n: int, data: Path) -> Path:
    """The first ``n`` class-balanced SST-2 train rows with a text of at least 4 words, as JSONL (text, label)."""
    src = data / "sst2" / "train.jsonl"
    rows = {0: [], 1: []}
    with open(src) as f:
        for line in f:
            r = json.loads(line)
            if len(r["text"].split()) >= 4 and len(rows[r["label"]]) < n // 2:
                rows[r["label"]].append({"text": r["text"], "label": int(r["label"])})
            if all(len(v) >= n // 2 for v in rows.values()):
                break
    # interleave so that the file itself carries no class order
    lines = [json.dumps(r) for pair in zip(rows[0], rows[1]) for r in pair]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------------------ their side
def _stub(name: str, **attrs) -> None:
    if importlib.util.find_spec(name) is None:
        sys.modules[name] = types.ModuleType(name)
        # a spec, so that libraries probing with importlib.util.find_spec do not raise on the stub
        sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
        for k, v in attrs.items():
            setattr(sys.modules[name], k, v)


@contextlib.contextmanager
def _cuda_on_cpu():
    """Their code's device choice, pointed at the CPU (see the module docstring for the list)."""
    import torch

    saved = {k: getattr(torch.cuda, k) for k in ("device_count", "empty_cache", "memory_allocated",
                                                   "get_device_properties", "is_bf16_supported")}
    torch.cuda.device_count = lambda: 1
    torch.cuda.empty_cache = lambda: None
    torch.cuda.memory_allocated = lambda *a, **k: 0
    torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(total_memory=0)
    torch.cuda.is_bf16_supported = lambda *a, **k: False
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(torch.cuda, k, v)


class TheirSide:
    """Their checkout imported from its path, with our models and datasets registered."""

    def __init__(self, repo: Path, models: dict[str, str], results: Path):
        import transformers.modeling_utils as mu  # first: it probes for wandb (through accelerate) at import

        _stub("wandb", init=lambda *a, **k: None, log=lambda *a, **k: None, finish=lambda *a, **k: None)
        _stub("torch_optimizer", Adafactor=None)
        _stub("fire", Fire=lambda *a, **k: None)
        if not hasattr(mu, "load_sharded_checkpoint"):  # transformers 5 moved it (their resume path; unused here)
            from transformers.trainer_utils import load_sharded_checkpoint

            mu.load_sharded_checkpoint = load_sharded_checkpoint
        sys.path.insert(0, str(repo))
        with _cuda_on_cpu():
            self.ts = importlib.import_module("train_simple")
        self.ds = importlib.import_module("weak_to_strong.datasets")
        model_mod = importlib.import_module("weak_to_strong.model")
        to = model_mod.TransformerWithHead.to

        def to_cpu(self_, *args, **kwargs):  # their `.to("cuda")`: the only device they name
            args = tuple("cpu" if a == "cuda" else a for a in args)
            if kwargs.get("device") == "cuda":
                kwargs["device"] = "cpu"
            return to(self_, *args, **kwargs)

        model_mod.TransformerWithHead.to = to_cpu

        def save_pretrained(self_, save_directory, **kwargs):  # transformers 4.3x's default format, see docstring
            import torch

            os.makedirs(save_directory, exist_ok=True)
            self_.config.save_pretrained(save_directory)
            torch.save(self_.state_dict(), os.path.join(save_directory, "pytorch_model.bin"))

        model_mod.TransformerWithHead.save_pretrained = save_pretrained
        for path in models.values():
            self.ts.MODELS_DICT[path] = self.ts.ModelConfig(name=path, default_lr=5e-5, eval_batch_size=32)
        self.results = results

    def register_rows(self, name: str, texts: list[str], labels: np.ndarray, seed: int, weak_train: np.ndarray,
                      weak_label: np.ndarray, test: np.ndarray) -> int:
        """Register dataset ``name`` so that their load_dataset + train_test_split(0.5, seed) give exactly
        (weak_train, weak_label) as (train1, train2) and ``test`` as the test split. Returns n_docs."""
        from datasets import Dataset

        n = len(weak_train) + len(weak_label)
        probe = Dataset.from_dict({"pos": list(range(n))}).shuffle(seed=seed).train_test_split(test_size=0.5, seed=seed)
        p1, p2 = probe["train"]["pos"], probe["test"]["pos"]
        if len(p1) != len(weak_train) or len(p2) != len(weak_label):
            raise SystemExit(f"their halves are {len(p1)}/{len(p2)} rows, superalign's {len(weak_train)}/"
                             f"{len(weak_label)}: use an even number of training rows split 50/50")
        order = np.empty(n, dtype=np.int64)
        order[np.asarray(p1)] = weak_train
        order[np.asarray(p2)] = weak_label
        splits = {"train": order, "test": np.asarray(test)}

        def loader(split):
            idx = splits[split]
            return Dataset.from_dict({"text": [texts[i] for i in idx], "label": [int(labels[i]) for i in idx]})

        def formatter(ex, rng):
            return {"txt": ex["text"], "hard_label": ex["label"]}

        self.ds.register_dataset(name, self.ds.DatasetConfig(loader=loader, formatter=formatter))
        if name not in self.ts.VALID_DATASETS:
            self.ts.VALID_DATASETS.append(name)
        return n

    def main(self, **kw):
        t0 = time.perf_counter()
        with _cuda_on_cpu(), contextlib.redirect_stdout(_Quiet()):
            self.ts.main(results_folder=str(self.results), **kw)
        who = "student " + kw["loss"] if kw.get("weak_model_size") else Path(kw["model_size"]).name
        print(f"  openai seed {kw['seed']} {who}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    def test_preds(self, sub: str, **cfg) -> tuple[np.ndarray, np.ndarray]:
        """(ground truth, P(class 1)) on their test set for the run ``cfg`` (their results.pkl)."""
        name = self.ts.get_config_foldername(cfg)
        with open(self.results / sub / name / "results.pkl", "rb") as f:
            r = pickle.load(f)
        tr = r["test_results"]
        return np.asarray(tr["gt_label"], dtype=np.int64), np.asarray([p[1] for p in tr["soft_label"]])


    def check_rows(self, sub: str, cfg: dict, weak_label_texts: list[str], test_texts: list[str]) -> None:
        """Their weak model's labelled half (its saved weak_labels) and its test set are exactly superalign's
        weak-label rows (same order) and test rows: the row mapping did what it says."""
        from datasets import load_from_disk

        d = self.results / sub / self.ts.get_config_foldername(cfg)
        if list(load_from_disk(str(d / "weak_labels"))["txt"]) != list(weak_label_texts):
            raise SystemExit("their second half differs from superalign's weak-label rows: a bug in this script")
        with open(d / "results.pkl", "rb") as f:
            their_test = pickle.load(f)["test_results"]["txt"]
        if sorted(their_test) != sorted(test_texts):
            raise SystemExit("their test rows differ from superalign's: a bug in this script")


class _Quiet:
    """Their scripts print a line per step: keep them off the table (counted in nobody's time)."""

    def write(self, s):
        return len(s)

    def flush(self):
        pass


# ------------------------------------------------------------------------------------------------------- benchmark
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--openai-repo", default=os.environ.get("W2S_OPENAI_REPO"),
                    help="a checkout of github.com/openai/weak-to-strong (default $W2S_OPENAI_REPO)")
    ap.add_argument("--data", default=None, help="shared datasets folder with sst2/ (default $SUPERALIGN_DATA)")
    ap.add_argument("--n-train", type=int, default=2000, help="training rows (half weak-train, half weak-label)")
    ap.add_argument("--n-val", type=int, default=100, help="superalign's validation rows (early stopping)")
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--weak-layers", type=int, default=1)
    ap.add_argument("--strong-layers", type=int, default=2)
    ap.add_argument("--weak-width", type=int, default=24)
    ap.add_argument("--weak-minilm", action=argparse.BooleanOptionalAction, default=True,
                    help="MiniLM embeddings for the weak model too (--no-weak-minilm: random ones)")
    ap.add_argument("--strong-width", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--out", default=str(HERE / "results" / "w2s_vs_openai.json"))
    ap.add_argument("--quick", action="store_true", help="smoke test: 200 train / 40 val / 100 test rows, 1 seed")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_val, a.n_test, a.seeds = 200, 40, 100, 1
        a.out = str(Path(a.out).with_name("w2s_vs_openai_quick.json"))
    if not a.openai_repo or not (Path(a.openai_repo) / "train_simple.py").exists():
        print("skipped: no openai/weak-to-strong checkout (pass --openai-repo PATH or set $W2S_OPENAI_REPO to a "
              "clone of https://github.com/openai/weak-to-strong)")
        return None
    if a.n_train % 2:
        raise SystemExit("--n-train must be even (their train_simple.py halves it)")
    from superalign.data import resolve_data_dir
    from superalign.errors import SuperalignError

    try:
        data = resolve_data_dir(a.data, "benchmarks/w2s_vs_openai.py")
    except SuperalignError as e:
        print(f"skipped: {e}")
        return None

    import torch

    from superalign import w2s
    from superalign.train.metrics import auroc
    from superalign.w2s.pgr import bootstrap_pgr
    from superalign.w2s.pipeline import Experiment

    torch.set_num_threads(a.threads)
    work = Path(a.work or tempfile.mkdtemp(prefix="w2s_vs_openai_"))
    work.mkdir(parents=True, exist_ok=True)
    n_all = a.n_train + a.n_val + a.n_test
    pool = write_pool(work / f"sst2_pool_{n_all}.jsonl", n_all, data)
    pool_texts = [json.loads(line)["text"] for line in pool.read_text().splitlines()]
    models = build_models(work / "models", pool_texts, {"weak": (a.weak_layers, a.weak_width, a.weak_minilm),
                                                        "strong": (a.strong_layers, a.strong_width, True)})
    half = a.n_train // 2
    fracs = [half / n_all, half / n_all, a.n_val / n_all, a.n_test / n_all]
    seeds = list(range(a.seeds))
    home = work / f"superalign_home_{time.time_ns()}"
    ours_cfg = dict(task=f"file:{pool}", text_col=["text"], label_col="label", weak=[f"hf:{models['weak']}"],
                    strong=[f"hf:{models['strong']}"], loss=["xent", "aux_conf"], mode="full", weak_mode="full",
                    ft_epochs=a.epochs, ft_lr=a.lr, batch_size=a.batch_size, weight_decay=0.0, aux_alpha=0.5,
                    aux_warmup=0.1, max_examples=n_all, split_fracs=fracs, max_length=128, device="cpu",
                    home=str(home), progress=False)
    exp = Experiment(w2s.W2SConfig(**{**ours_cfg, "seed": seeds}))
    texts, labels = exp.task.texts, exp.task.labels

    their = TheirSide(Path(a.openai_repo), models, work / f"their_results_{time.time_ns()}")
    common = dict(batch_size=a.batch_size, max_ctx=1024, lr=a.lr, epochs=a.epochs, lr_schedule="cosine_anneal")
    wall = {"openai": 0.0, "superalign": 0.0}
    per_seed = {"openai": [], "superalign": []}
    for seed in seeds:
        s = exp.splits(seed)
        ds_name = f"sst2_sa_seed{seed}"
        n_docs = their.register_rows(ds_name, texts, labels, seed, s.weak_train, s.weak_label, s.test)
        run = dict(common, ds_name=ds_name, n_docs=n_docs, n_test_docs=len(s.test), seed=seed)
        # theirs: weak and ceiling on ground truth (sweep.py's first loop), then the students on weak labels
        t0 = time.perf_counter()
        their.main(model_size=models["weak"], loss="xent", **run)
        their.main(model_size=models["strong"], loss="xent", **run)
        for loss in THEIR_LOSS.values():
            their.main(model_size=models["strong"], weak_model_size=models["weak"], loss=loss, **run)
        wall["openai"] += time.perf_counter() - t0
        base = dict(batch_size=a.batch_size, max_ctx=1024, ds_name=ds_name, n_docs=n_docs, n_test_docs=len(s.test),
                    lr=a.lr, optim="adam", epochs=a.epochs, seed=seed, train_with_dropout=False, linear_probe=False,
                    lr_schedule="cosine_anneal", eval_every=1000000)
        their.check_rows("default", {**base, "loss": "xent", "model_size": models["weak"]},
                         [texts[i] for i in s.weak_label], [texts[i] for i in s.test])
        y, p_weak = their.test_preds("default", **base, loss="xent", model_size=models["weak"])
        _, p_ceiling = their.test_preds("default", **base, loss="xent", model_size=models["strong"])
        for ours_loss, their_loss in THEIR_LOSS.items():
            y2, p_student = their.test_preds("default", **base, loss=their_loss, model_size=models["strong"],
                                             weak_model_size=models["weak"])
            assert (y2 == y).all()
            per_seed["openai"].append({"seed": seed, "loss": ours_loss, "y": y, "p_weak": p_weak,
                                       "p_student": p_student, "p_ceiling": p_ceiling})
        # ours: the same seed's cells through the public sweep API (fresh store: nothing cached from other runs)
        t0 = time.perf_counter()
        res = w2s.sweep(**{**ours_cfg, "seed": [seed]})
        wall["superalign"] += time.perf_counter() - t0
        print(f"  superalign seed {seed}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        for rec in res.records:
            from superalign.w2s.pipeline import load_preds

            p = load_preds(rec["artefacts"]["preds"])
            per_seed["superalign"].append({"seed": seed, "loss": rec["config"]["loss"], **p})
        print(f"seed {seed}: openai {wall['openai']:.1f} s, superalign {wall['superalign']:.1f} s (cumulative)",
              flush=True)

    rows = []
    for side in ("openai", "superalign"):
        for loss in THEIR_LOSS:
            runs = [r for r in per_seed[side] if r["loss"] == loss]
            est = bootstrap_pgr(runs, "acc", n_boot=1000)
            est_auc = bootstrap_pgr(runs, "auroc", n_boot=1000)
            acc = {k: float(np.mean([((r[f"p_{k}"] > 0.5) == r["y"]).mean() for r in runs]))
                   for k in ("weak", "student", "ceiling")}
            auc = {f"{k}_auroc": float(np.mean([auroc(r["y"], r[f"p_{k}"]) for r in runs]))
                   for k in ("weak", "student", "ceiling")}
            rows.append({"side": side, "loss": loss if side == "superalign" else THEIR_LOSS[loss], **acc, **auc,
                         "pgr": est.value, "pgr_ci": [est.ci_low, est.ci_high], "pgr_per_seed": est.per_seed,
                         "note": est.note, "pgr_auroc": est_auc.value,
                         "pgr_auroc_ci": [est_auc.ci_low, est_auc.ci_high],
                         "pgr_auroc_per_seed": est_auc.per_seed, "note_auroc": est_auc.note,
                         "acc_per_seed": {k: [float(((r[f"p_{k}"] > 0.5) == r["y"]).mean()) for r in runs]
                                          for k in ("weak", "student", "ceiling")}})
    ratio = wall["openai"] / wall["superalign"]
    print(f"\n{'side':11} {'loss':8} {'accuracy: weak':>14} {'student':>7} {'ceiling':>7} {'PGR':>6}  95% CI"
          f"      | AUROC: weak student ceiling    PGR  95% CI")
    for r in rows:
        print(f"{r['side']:11} {r['loss']:8} {r['weak']:14.3f} {r['student']:7.3f} {r['ceiling']:7.3f} "
              f"{r['pgr']:6.2f}  [{r['pgr_ci'][0]:.2f}, {r['pgr_ci'][1]:.2f}] | {r['weak_auroc']:11.3f} "
              f"{r['student_auroc']:7.3f} {r['ceiling_auroc']:7.3f} {r['pgr_auroc']:6.2f}  "
              f"[{r['pgr_auroc_ci'][0]:.2f}, {r['pgr_auroc_ci'][1]:.2f}]")
        for note in dict.fromkeys(n for n in (r["note"], r["note_auroc"]) if n):
            print(f"{'':21}note: {note}")
    print(f"\nwall seconds for the grid: openai/weak-to-strong {wall['openai']:.1f}, superalign "
          f"{wall['superalign']:.1f} → superalign {ratio:.2f}× faster")
    out = {"benchmark": "w2s_vs_openai", "args": vars(a), "machine": machine(),
           "models": {"weak": {"path": models["weak"], "blocks": a.weak_layers, "width": a.weak_width},
                      "strong": {"path": models["strong"], "blocks": a.strong_layers, "width": a.strong_width}},
           "rows_per_split": {"weak_train": half, "weak_label": half, "val": a.n_val, "test": a.n_test},
           "wall_s": wall, "speedup": ratio, "table": rows}
    write_json(a.out, out)
    print("wrote", a.out)
    return out


if __name__ == "__main__":
    main()
