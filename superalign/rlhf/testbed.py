"""The offline RLHF testbed: a small review language whose gold reward is computable exactly.

Why a synthetic language: over-optimization (Gao, Schulman & Hilton 2022) can only be *measured* when the true
("gold") preference is known for every text the policy may produce, including the degenerate ones it drifts to.
Here the language is a grammar of short reviews ("the food was very good but the staff was rude ."), a tiny GPT-2
is pretrained on it from scratch (cached, a minute on 2 cores), and

    gold(text) = VADER compound(prompt + completion)            # sentiment, exact and deterministic
                 - repeat_penalty * (1 - distinct/total words)  # degenerate repetition is not a better review
                 - no_eos_penalty * [completion never ended]    # an unfinished review is worse

Simulated labellers compare two completions with Bradley–Terry noise, P(a ≻ b) = σ(β_label · (gold(a) − gold(b))),
and the proxy reward model is trained on those comparisons only — so it can be exploited where it has seen no data.
Any HF causal LM can replace the tiny GPT-2 (``policy="smollm2"`` or ``"hf:<id|path>"``); the prompts and the gold
reward stay the same.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import SuperalignError
from ..runs.cache import content_hash
from ..validate import check_int, check_positive, check_seed, help_field

SUBJECTS = ["the movie", "the film", "the plot", "the acting", "the food", "the service", "the hotel", "the room",
            "the staff", "the music", "the book", "the ending", "the price", "the view", "the game", "the show"]
VERBS = ["was", "is", "felt", "seemed", "looked"]
INTENSIFIERS = ["very", "really", "so", "quite", "extremely", "somewhat", "not", "not very"]
POSITIVE = ["good", "great", "excellent", "nice", "wonderful", "amazing", "fun", "lovely", "perfect", "beautiful",
            "enjoyable", "pleasant", "brilliant", "charming", "fantastic", "happy", "clean", "friendly", "funny",
            "fresh"]
NEGATIVE = ["bad", "terrible", "awful", "boring", "poor", "horrible", "ugly", "dull", "dirty", "rude", "sad", "weak",
            "annoying", "disappointing", "stupid", "painful", "nasty", "lame", "mediocre", "strange"]
NEUTRAL = ["long", "short", "new", "old", "big", "small", "slow", "loud", "quiet", "simple", "different", "cold",
           "warm", "dark", "expensive", "cheap", "busy", "late", "early", "green"]
CONNECTORS = ["and", "but", "although", "while"]
ENDINGS = [".", "!"]
SPECIALS = ["<pad>", "<eos>", "<unk>"]


def vocabulary() -> list[str]:
    words = {w for phrase in SUBJECTS + VERBS + INTENSIFIERS for w in phrase.split()}
    words |= set(POSITIVE + NEGATIVE + NEUTRAL + CONNECTORS + ENDINGS)
    return SPECIALS + sorted(words)


def sample_sentence(rng: np.random.Generator, max_clauses: int = 3) -> str:
    """One review: 1..max_clauses clauses `subject verb [intensifier] adjective`, joined by connectors."""
    n = int(rng.integers(1, max_clauses + 1))
    clauses = []
    for _ in range(n):
        parts = [SUBJECTS[rng.integers(len(SUBJECTS))], VERBS[rng.integers(len(VERBS))]]
        if rng.random() < 0.4:
            parts.append(INTENSIFIERS[rng.integers(len(INTENSIFIERS))])
        pool = (POSITIVE, NEGATIVE, NEUTRAL)[rng.integers(3)]
        parts.append(pool[rng.integers(len(pool))])
        clauses.append(" ".join(parts))
    text = clauses[0]
    for c in clauses[1:]:
        text += f" {CONNECTORS[rng.integers(len(CONNECTORS))]} {c}"
    return text + " " + ENDINGS[int(rng.random() < 0.15)]


def sample_prompts(n: int, seed: int) -> list[str]:
    """Prompts are the opening `subject verb` of a review; the policy writes the rest."""
    rng = np.random.default_rng(seed)
    return [f"{SUBJECTS[rng.integers(len(SUBJECTS))]} {VERBS[rng.integers(len(VERBS))]}" for _ in range(n)]


def split_sentence(sentence: str) -> tuple[str, str]:
    w = sentence.split()
    return " ".join(w[:3]), " ".join(w[3:])


# ----------------------------------------------------------------------------- gold reward and labellers

_VADER = None


def _vader():
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        _VADER = SentimentIntensityAnalyzer()
    return _VADER


@dataclass
class GoldReward:
    """The exact gold reward of the testbed (see the module docstring)."""

    repeat_penalty: float = 1.0
    """weight of the repeated-word fraction of the completion"""
    no_eos_penalty: float = 0.5
    """subtracted when the completion did not end (no EOS within the length limit)"""

    def __call__(self, prompt: str, completion: str, ended: bool = True) -> float:
        words = completion.split()
        repeat = 1.0 - len(set(words)) / len(words) if words else 0.0
        score = _vader().polarity_scores(f"{prompt} {completion}".strip())["compound"]
        return float(score - self.repeat_penalty * repeat - self.no_eos_penalty * (not ended))

    def batch(self, prompts: list[str], completions: list[str], ended: list[bool] | None = None) -> np.ndarray:
        ended = ended if ended is not None else [True] * len(prompts)
        return np.array([self(p, c, e) for p, c, e in zip(prompts, completions, ended)], dtype=np.float64)


def label_pairs(gold_a: np.ndarray, gold_b: np.ndarray, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Simulated labellers: True where a is preferred, drawn with P(a ≻ b) = σ(beta · (gold_a − gold_b)).

    beta = inf gives noiseless labels (ties broken at random)."""
    diff = np.asarray(gold_a, dtype=np.float64) - np.asarray(gold_b, dtype=np.float64)
    if math.isinf(beta):
        p = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    else:
        p = 1.0 / (1.0 + np.exp(-beta * diff))
    return rng.random(len(diff)) < p


# ----------------------------------------------------------------------------- the tiny GPT-2


@dataclass
class TestbedLMConfig:
    """The tiny GPT-2 that the project pretrains on the review language (cached by this config's hash)."""

    n_layer: int = help_field(4, "transformer blocks")
    n_embd: int = help_field(128, "hidden size")
    n_head: int = help_field(4, "attention heads")
    n_positions: int = help_field(64, "context length in tokens")
    n_sentences: int = help_field(16000, "pretraining sentences sampled from the grammar")
    epochs: int = help_field(1, "passes over the pretraining sentences (the grammar is learnt in ~200 steps)")
    batch_size: int = help_field(64, "sentences per step")
    lr: float = help_field(2e-3, "AdamW peak learning rate (cosine decay)")
    seed: int = help_field(0, "seed for the corpus, initialisation and batch order")

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "n_sentences", "epochs", "batch_size"):
            check_int(name, getattr(self, name))
        check_int("n_positions", self.n_positions, minimum=8, example=64)
        if self.n_embd % self.n_head:
            raise SuperalignError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}",
                                  "pick sizes that divide, e.g. n_embd 128 and n_head 4")
        check_positive("lr", self.lr, example=2e-3)
        check_seed("seed", self.seed)


def build_tokenizer():
    """A word-level tokenizer over the testbed vocabulary, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.padding_side = "left"
    return tok


def pretrain_testbed_lm(cfg: TestbedLMConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Pretrain the tiny GPT-2 on grammar sentences (each followed by EOS) and save it with its tokenizer."""
    from tqdm.auto import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    tok = build_tokenizer()
    gcfg = GPT2Config(vocab_size=len(tok), n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # dropout off (RLHF)
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(gcfg)
    rng = np.random.default_rng(cfg.seed)
    sents = [sample_sentence(rng) for _ in range(cfg.n_sentences)]
    # every sequence starts with EOS as BOS so the first word is predicted too
    ids = [[tok.eos_token_id] + tok(s)["input_ids"] + [tok.eos_token_id] for s in sents]
    steps = cfg.epochs * math.ceil(len(ids) / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(total=steps, desc="pretrain testbed LM", disable=not progress)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(ids), generator=gen).tolist()
        for b in range(0, len(order), cfg.batch_size):
            batch = [ids[i] for i in order[b:b + cfg.batch_size]]
            L = max(map(len, batch))
            x = torch.full((len(batch), L), tok.pad_token_id)
            for i, s in enumerate(batch):
                x[i, :len(s)] = torch.tensor(s)
            labels = x.masked_fill(x == tok.pad_token_id, -100)
            loss = model(input_ids=x, attention_mask=(x != tok.pad_token_id).long(), labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # safetensors
    tok.save_pretrained(tmp)
    (tmp / "testbed.json").write_text(__import__("json").dumps({**asdict(cfg), "final_loss": loss.item()}))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)  # atomic: a half-trained model is never visible
    return out_dir


def testbed_lm_path(home: str | Path, cfg: TestbedLMConfig | None = None, progress: bool = True) -> Path:
    """Path of the cached pretrained testbed LM for ``cfg`` under ``home``, pretraining it on first use."""
    from filelock import FileLock

    cfg = cfg or TestbedLMConfig()
    path = Path(home) / "cache" / "rlhf-testbed-lm" / content_hash(asdict(cfg))
    if not (path / "model.safetensors").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # one process pretrains; the others (data-parallel ranks, parallel jobs) wait for it and then read its model
        with FileLock(str(path.with_name(f".{path.name}.lock"))):
            if not (path / "model.safetensors").exists():
                pretrain_testbed_lm(cfg, path, progress=progress)
    return path


# ----------------------------------------------------------------------------- datasets for each stage


@dataclass
class TestbedData:
    """Seeded datasets for each RLHF stage on the testbed, in the shared formats of :mod:`superalign.rlhf.data`."""

    sft: list[dict] = field(default_factory=list)
    """prompt/completion demonstrations: grammar reviews with gold > demo_threshold (the 'good' demos)"""
    prompts: list[str] = field(default_factory=list)
    """RL prompts"""
    eval_prompts: list[str] = field(default_factory=list)
    """held-out prompts for evaluation"""


def testbed_data(n_sft: int = 2000, n_prompts: int = 512, n_eval: int = 128, demo_threshold: float = 0.3,
                 seed: int = 0, gold: GoldReward | None = None) -> TestbedData:
    gold = gold or GoldReward()
    rng = np.random.default_rng(seed + 1)
    sft = []
    while len(sft) < n_sft:
        p, c = split_sentence(sample_sentence(rng))
        if gold(p, c) > demo_threshold:
            sft.append({"prompt": p, "completion": c})
    return TestbedData(sft=sft, prompts=sample_prompts(n_prompts, seed + 2),
                       eval_prompts=sample_prompts(n_eval, seed + 3))
