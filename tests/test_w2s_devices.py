"""Weak-to-strong on any device and precision, and data-parallel under `accelerate launch`."""

import numpy as np
import pytest
import torch

from superalign import w2s
from superalign.cli import main
from superalign.errors import SuperalignError
from superalign.runs.ledger import Ledger
from superalign.runs.store import RunStore
from superalign.train.distributed import Runtime
from superalign.train.losses import GlobalBatch, aux_conf_loss, product_loss, xent_loss

TEXTS = [f"{w} movie number {i} {'really ' * (i % 5)}" for i, w in enumerate(["great", "awful"] * 12)]
LABELS = np.array([1.0, 0.0] * 12)


@pytest.fixture(scope="module")
def bert_no_dropout(tmp_path_factory) -> str:
    """A 2-layer random BERT without dropout: with dropout, N processes draw other masks than one process does, so
    their loss curves agree only in distribution (see docs/w2s.md)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from superalign.models.registry import minilm_path

    d = tmp_path_factory.mktemp("bert_nodrop")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_on_a_machine_without_one_is_one_line_and_writes_nothing(tmp_path, capsys):
    home = tmp_path / "h"
    rc = main(["w2s", "run", "--weak", "bow", "--strong", "minilm-l1", "--loss", "xent", "--seed", "0", "--device",
               "cuda", "--home", str(home), "--progress", "false"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no CUDA GPU" in err
    assert not home.exists()


def test_unknown_dtype_is_refused(tmp_path, capsys):
    with pytest.raises(SuperalignError, match="--dtype"):
        w2s.W2SConfig(dtype="fp8", home=str(tmp_path / "h"))
    with pytest.raises(SystemExit) as e:  # the CLI's choices refuse it before any config is built
        main(["w2s", "run", "--dtype", "fp8", "--home", str(tmp_path / "h")])
    assert e.value.code == 2 and not (tmp_path / "h").exists()


def test_ray_under_accelerate_launch_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SuperalignError, match="--executor ray"):
        w2s.sweep(executor="ray", home=str(tmp_path / "h"), weak=["bow"], strong=["minilm-l1"], loss=["xent"],
                  seed=[0], progress=False)
    assert not (tmp_path / "h").exists()


# ------------------------------------------------------------------------------------------------ identities

def _keys(**kw):
    from superalign.runs.cache import content_hash
    from superalign.w2s.pipeline import Experiment, cell_run_id, cells

    cfg = w2s.W2SConfig(task="textblob-polarity", weak=["bow"], strong=["minilm-l1"], loss=["xent"], seed=[0],
                        max_examples=100, progress=False, **kw)
    exp, c = Experiment(cfg, RunStore(kw.get("home"), create=False)), cells(cfg)[0]
    return {"run": cell_run_id(cfg, c), "split": content_hash(exp.split_key(0)),
            "weak": content_hash(exp.weak_key(0, "bow")), "ceiling": content_hash(exp.ceiling_key(0, "minilm-l1"))}


def test_dtype_changes_exactly_the_stages_it_runs_in(tmp_path):
    home = str(tmp_path / "h")
    fp32, auto, bf16 = _keys(home=home, dtype="fp32"), _keys(home=home), _keys(home=home, dtype="bf16")
    assert auto == fp32  # on this CPU auto is fp32: one configuration, one identity
    # the bag-of-words supervisor and the split do not run in a dtype; the transformer student and ceiling do
    assert {k for k in fp32 if fp32[k] != bf16[k]} == {"run", "ceiling"}
    assert _keys(home=home, dtype="fp16")["ceiling"] not in (fp32["ceiling"], bf16["ceiling"])


def test_feature_cache_is_per_dtype_and_stays_fp32(tmp_path, tiny_bert):
    from superalign.models.features import encode_texts
    from superalign.models.registry import resolve_model

    spec = resolve_model(f"hf:{tiny_bert}")
    f32 = encode_texts(spec, TEXTS[:6], tmp_path, progress=False)
    b16 = encode_texts(spec, TEXTS[:6], tmp_path, progress=False, dtype="bf16")
    assert f32.dtype == np.float32 and b16.dtype == np.float32
    assert len(list((tmp_path / "features").iterdir())) == 2  # two keys: a bf16 feature never answers for fp32
    assert not np.array_equal(f32, b16) and np.allclose(f32, b16, atol=0.1)
    # a process's own torch.device, as Accelerate names it ('cpu:0'), is taken as it is
    assert np.array_equal(encode_texts(spec, TEXTS[:6], None, progress=False, device=torch.device("cpu", 0)), f32)


# ------------------------------------------------------------------------------------------------ losses

@pytest.mark.parametrize("loss", [xent_loss, aux_conf_loss, product_loss])
def test_sharded_loss_sums_are_the_global_mean(loss):
    """Two shards' sums with the global batch's statistics add up to the one-process mean: aux_conf's threshold is
    the global batch's quantile, not each shard's (which would differ)."""
    g = torch.Generator().manual_seed(0)
    logits, weak = torch.randn(11, 2, generator=g), torch.rand(11, generator=g)
    frac = 0.7
    whole = loss(logits, weak, frac)
    assert loss(logits, weak, frac, reduction="sum") / 11 == whole  # bit-identical: 'mean' is sum / B
    batch = GlobalBatch(torch.softmax(logits, -1)[:, 1], weak)
    parts = [loss(logits[r::2], weak[r::2], frac, reduction="sum", batch=batch) for r in (0, 1)]
    assert torch.allclose((parts[0] + parts[1]) / 11, whole, rtol=1e-6)
    if loss is aux_conf_loss:  # per-shard thresholds would give another loss
        local = [loss(logits[r::2], weak[r::2], frac, reduction="sum") for r in (0, 1)]
        assert not torch.allclose((local[0] + local[1]) / 11, whole, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ precision

def _finetune(model_dir: str, device: str, dtype: str):
    from superalign.models.registry import resolve_model
    from superalign.train.loop import TrainConfig, fit
    from superalign.train.students import TextClassifier, predict_proba

    rt = Runtime.create(device, dtype)
    torch.manual_seed(0)
    net = TextClassifier(resolve_model(f"hf:{model_dir}"), "full", device=str(rt.device), precision=rt.precision)
    res = fit(net, TEXTS, LABELS, xent_loss, TrainConfig(epochs=3, lr=1e-3, batch_size=8), 0, TEXTS[:8], LABELS[:8],
              rt=rt)
    assert all(p.dtype == torch.float32 for p in net.parameters())  # fp32 master weights
    return np.array([h["loss"] for h in res.history]), predict_proba(net, TEXTS[:8], autocast=rt.autocast)


def test_bf16_full_finetune_on_cpu_is_finite_and_close_to_fp32(bert_no_dropout, one_thread):
    l32, p32 = _finetune(bert_no_dropout, "cpu", "fp32")
    l16, p16 = _finetune(bert_no_dropout, "cpu", "bf16")
    assert np.isfinite(l16).all() and not np.array_equal(l16, l32)  # bf16 did run
    assert np.allclose(l16, l32, atol=0.03) and np.allclose(p16, p32, atol=0.05)


@pytest.mark.cuda
def test_bf16_full_finetune_on_cuda_is_finite_and_close_to_fp32_on_cpu(bert_no_dropout):
    l32, p32 = _finetune(bert_no_dropout, "cpu", "fp32")
    l16, p16 = _finetune(bert_no_dropout, "cuda", "bf16")
    assert np.isfinite(l16).all()
    assert np.allclose(l16, l32, atol=0.03) and np.allclose(p16, p32, atol=0.05)


@pytest.mark.cuda
def test_w2s_run_on_cuda_records_device_and_dtype(tmp_path, bert_no_dropout):
    rec = w2s.run(task="textblob-polarity", home=str(tmp_path / "h"), weak="bow", strong=f"hf:{bert_no_dropout}",
                  loss=["aux_conf"], seed=[0], max_examples=80, mode="full", ft_epochs=2, n_boot=10, device="cuda",
                  progress=False).records[0]
    assert rec["compute"]["device"].startswith("cuda") and rec["compute"]["dtype"] == "bf16"
    assert rec["config"]["dtype"] == "bf16" and np.isfinite([h["loss"] for h in rec["artefacts"]["history"]]).all()


# ------------------------------------------------------------------------------------------------ ledger

LEDGER_KEYS = set(Ledger(flops_known=True, stages={"x": 1.0}).summary())


# ------------------------------------------------------------------------------------------------ data-parallel

def test_two_processes_train_the_student_as_one_does_and_store_one_run(tmp_path, bert_no_dropout, accelerate_two):
    """`accelerate launch` (2 CPU processes, gloo) vs one process on the same global batches: the student's loss
    history agrees to float tolerance; the 2-process home holds exactly one run and one group, written once."""
    args = ["w2s", "run", "--task", "textblob-polarity", "--weak", "bow", "--strong", f"hf:{bert_no_dropout}",
            "--loss", "aux_conf", "--seed", "0", "--max-examples", "80", "--mode", "full", "--ft-epochs", "2",
            "--batch-size", "7", "--n-boot", "10", "--progress", "false"]
    one = w2s.run(task="textblob-polarity", home=str(tmp_path / "one"), weak="bow", strong=f"hf:{bert_no_dropout}",
                  loss=["aux_conf"], seed=[0], max_examples=80, mode="full", ft_epochs=2, batch_size=7, n_boot=10,
                  progress=False).records[0]
    p = accelerate_two([*args, "--home", str(tmp_path / "two")], cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:]
    assert p.stdout.count("stored:") == 1  # only rank 0 prints the result
    store = RunStore(tmp_path / "two", create=False)
    runs = store.list()
    assert sorted(r["kind"] for r in runs) == ["w2s", "w2s-sweep"] and all(r["status"] == "done" for r in runs)
    two = store.get(next(r["id"] for r in runs if r["kind"] == "w2s"))
    assert two["id"] == one["id"]  # same config, same run, however many processes computed it
    h1, h2 = one["artefacts"]["history"], two["artefacts"]["history"]
    assert [h["epoch"] for h in h1] == [h["epoch"] for h in h2]
    np.testing.assert_allclose([h["loss"] for h in h2], [h["loss"] for h in h1], rtol=1e-5)
    np.testing.assert_allclose([h["val_score"] for h in h2], [h["val_score"] for h in h1], rtol=1e-5)
    assert [d.name for d in (tmp_path / "two" / "artefacts").iterdir()] == [two["id"]]
    for stage in ("weak", "ceiling"):  # each stage cached once, by rank 0
        assert len(list((tmp_path / "two" / "cache" / stage).iterdir())) == 1
    # the compute record is the ledger's, counting both devices
    c1, c2 = one["compute"], two["compute"]
    assert LEDGER_KEYS <= set(c1) and LEDGER_KEYS <= set(c2)
    assert c1["world_size"] == 1 and c1["device_s"] == c1["wall_s"] and c1["dtype"] == "fp32"
    assert c2["world_size"] == 2 and c2["device_s"] == pytest.approx(2 * c2["wall_s"])
    assert set(c2["flops"]) == {"weak", "bootstrap", "ceiling", "student"} and c2["flops_total"] > 0
    assert c2["cpu_s"] > 0 and c2["tokens"] > 0
