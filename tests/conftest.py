import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the CPU peak FLOP/s that MFU divides by is measured once per machine: tests keep it out of ~/.cache
os.environ.setdefault("SUPERALIGN_CACHE", str(Path(__import__("tempfile").mkdtemp(prefix="superalign-cache-"))))

SHARED = Path(os.environ.get("SUPERALIGN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "sst2" / "train.jsonl").exists():
        pytest.skip("shared datasets not found (set SUPERALIGN_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    """One run store for the session, so MiniLM features are encoded once and reused (by content)."""
    return tmp_path_factory.mktemp("sa_home")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BERT with random weights and MiniLM's tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from superalign.models.registry import minilm_path

    d = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    """A 2-layer GPT-2 (causal LM) with random weights, built from scratch."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from superalign.models.registry import minilm_path

    d = tmp_path_factory.mktemp("tiny_gpt2")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    GPT2LMHeadModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture
def one_thread():
    """Small models and judge batches: one torch thread avoids oversubscription on busy 2-core CI machines."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(args: list[str], cwd=None, env=None, timeout: int = 300, module: bool = True):
    """Run ``superalign <args>`` (or a script, ``module=False``) as 2 data-parallel CPU processes (gloo) under
    ``accelerate launch``. Accelerate 1.x's ``--cpu`` flag starts one process unless MPI is set up, so the
    2-process CPU group is launched as ``--multi_gpu`` with no GPU visible: torchrun starts both processes and
    Accelerate falls back to gloo on the CPU. Returns the CompletedProcess (stdout+stderr merged)."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    cmd = [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd += (["-m", "superalign"] if module else []) + list(args)
    e = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=False, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.fixture
def accelerate_two():
    """:func:`launch_two`: a 2-process CPU data-parallel launch of the CLI (skips when Accelerate is missing)."""
    pytest.importorskip("accelerate")
    return launch_two


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run the same assertions on a CUDA GPU; without one they skip."""
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """The tiny testbed LM (one block, d = 32, pretrained on the review grammar) every RLHF test shares: built once
    per session, read-only afterwards (jobs write into their own run homes)."""
    from superalign.rlhf import testbed as tb

    cfg = tb.TestbedLMConfig(n_layer=1, n_embd=32, n_head=2, n_sentences=3000, batch_size=64, lr=5e-3)
    return str(tb.pretrain_testbed_lm(cfg, tmp_path_factory.mktemp("tiny_testbed") / "tiny_lm", progress=False))
