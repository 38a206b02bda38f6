"""Task registry: named binary classification tasks built from real human-labelled data.

A :class:`Task` is a list of texts with ground-truth binary labels and, where the data has them, labels from a
genuinely weaker *human* supervisor (e.g. one VADER rater instead of the mean of ten). Tasks come from:

- built-in offline tasks made at run time from data that pip packages ship (``vader``, ``textblob-polarity``,
  ``textblob-subjectivity``);
- the shared datasets folder (``sst2``, ``cola``, ``boolq``, ``sciq``; ``--data DIR`` or ``$SUPERALIGN_DATA``);
- Hugging Face ``datasets`` (``hf:<name>[:<config>]``, with known column maps for the paper's datasets);
- local files (``file:<path>`` or any path ending in .jsonl/.csv/.parquet), with a column mapping.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SuperalignError
from .files import read_table, resolve_data_dir
from .fingerprint import record_source, recording_sources, stat_signature


@dataclass
class Task:
    """A binary task: ``texts[i]`` has ground-truth label ``labels[i]`` in {0, 1}."""

    name: str
    texts: list[str]
    labels: np.ndarray
    human_weak: np.ndarray | None = None
    """Optional P(label=1) from a weaker human supervisor (one rater), used by the ``human`` weak supervisor."""
    description: str = ""
    meta: dict = field(default_factory=dict)
    groups: np.ndarray | None = None
    """Optional integer group id per row: rows of one group (one question's candidate answers, one shared context)
    always land in the same split, so no split sees another's shared text."""
    questions: np.ndarray | None = None
    """Optional integer id of the multiple-choice question a row is a candidate answer of (for multiple-choice
    accuracy); defaults to ``groups``. A group may hold several questions (cosmos_qa: questions on one context)."""

    def __post_init__(self):
        validate_binary(self.name, self.texts, self.labels)
        if self.human_weak is not None and len(self.human_weak) != len(self.texts):
            raise SuperalignError(f"task {self.name}: human_weak has {len(self.human_weak)} rows, "
                                  f"texts {len(self.texts)}")
        for name in ("groups", "questions"):
            v = getattr(self, name)
            if v is not None:
                v = np.asarray(v)
                if len(v) != len(self.texts) or v.dtype.kind not in "iu":
                    raise SuperalignError(f"task {self.name}: {name} must be one integer id per row")
                setattr(self, name, v.astype(np.int64))
        if self.questions is None and self.groups is not None:
            self.questions = self.groups
        if self.pairwise:
            pair_rows(self)  # a malformed pair fails here, naming it

    @property
    def pairwise(self) -> bool:
        """A preference task (``meta["pairwise"]``): every group is one pair, its preferred row labelled 1 and the
        other 0; weak-to-strong runs on it train reward models (see superalign/w2s/pairwise.py)."""
        return bool(self.meta.get("pairwise"))

    def fingerprint(self) -> str:
        """Content identity: texts, labels, human labels, groups, and the content hash of every input file."""
        h = hashlib.sha256()
        for t, y in zip(self.texts, self.labels.tolist()):
            h.update(t.encode("utf-8"))
            h.update(b"\x00%d\x01" % y)
        if self.human_weak is not None:
            h.update(np.ascontiguousarray(self.human_weak, dtype=np.float64).tobytes())
        for name in ("groups", "questions"):
            v = getattr(self, name)
            if v is not None:
                h.update(name.encode() + np.ascontiguousarray(v, dtype=np.int64).tobytes())
        if self.pairwise:  # the same rows as preference pairs are another task (reward models, pair metrics)
            h.update(b"\x03pairwise-v1")
        for _path, fp in sorted(self.meta.get("sources", {}).items()):
            h.update(f"\x02{fp}".encode())  # content only: the same file moved elsewhere is the same input
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.texts)


def pair_rows(task: Task) -> np.ndarray:
    """[n_pairs, 2] row indices (preferred, rejected) of a pairwise task, pairs in order of group id; a group that is
    not exactly one preferred (1) and one rejected (0) row is a one-line error naming it."""
    if task.groups is None:
        raise SuperalignError(f"task {task.name} is marked pairwise but has no groups",
                              "give the two rows of each preference pair one group id")
    order = np.argsort(task.groups, kind="stable")
    g = task.groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, len(g)])
    y = np.asarray(task.labels)[order]
    ok = sizes == 2
    bad = np.flatnonzero(~ok)
    if not len(bad):
        first, second = order[starts], order[starts + 1]
        ok = y[starts] + y[starts + 1] == 1
        bad = np.flatnonzero(~ok)
    if len(bad):
        k = int(bad[0])
        rows = order[starts[k]:starts[k] + sizes[k]].tolist()
        raise SuperalignError(f"task {task.name}: preference pair (group {int(g[starts[k]])}, rows {rows[:6]}) has "
                              f"{int(sizes[k])} row(s) labelled {y[starts[k]:starts[k] + sizes[k]].tolist()[:6]} "
                              f"({len(bad)} such group(s)); a pair is exactly one preferred (1) and one rejected (0) "
                              "row", "drop incomplete or tied pairs, or give each pair its own group id")
    chosen_first = y[starts] == 1
    return np.stack([np.where(chosen_first, first, second), np.where(chosen_first, second, first)], 1).astype(np.int64)


def validate_binary(name: str, texts: list, labels: np.ndarray) -> None:
    if len(texts) == 0:
        raise SuperalignError(f"task {name} has no examples", "check the data file and column mapping")
    if len(texts) != len(labels):
        raise SuperalignError(f"task {name}: {len(texts)} texts but {len(labels)} labels")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise SuperalignError(f"task {name}: {len(bad)} empty or non-text inputs (first at row {bad[0]})",
                              "drop those rows or fix the text column")
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise SuperalignError(f"task {name}: labels contain NaN (first at row {int(np.isnan(labels).argmax())})",
                              "drop or fix those rows")
    vals = set(np.unique(labels).tolist())
    if not vals <= {0, 1}:
        raise SuperalignError(f"task {name}: labels must be binary 0/1, found values {sorted(vals)[:6]}",
                              "map labels to 0/1 (e.g. --label-map '{\"neg\": 0, \"pos\": 1}')")
    if len(vals) < 2:
        raise SuperalignError(f"task {name}: only one class ({vals.pop()}) present", "a binary task needs both labels")


@dataclass
class TaskSpec:
    """How to build a task: its name plus the options some sources need."""

    name: str
    data: str | None = None
    text_col: list[str] | None = None
    label_col: str | None = None
    label_map: dict | None = None
    split: str | None = None
    group_col: str | None = None
    convert: str | None = None


_REGISTRY: dict[str, tuple[Callable[[TaskSpec], Task], str]] = {}


def register_task(name: str, description: str):
    def deco(fn: Callable[[TaskSpec], Task]):
        _REGISTRY[name] = (fn, description)
        return fn
    return deco


def list_tasks() -> dict[str, str]:
    return {k: v[1] for k, v in _REGISTRY.items()}


def load_task(spec: TaskSpec | str) -> Task:
    if isinstance(spec, str):
        spec = TaskSpec(spec)
    name = spec.name
    if spec.convert is not None and spec.convert not in CONVERSIONS:
        raise SuperalignError(f"unknown --convert {spec.convert!r}", f"use one of {', '.join(CONVERSIONS)}")
    if name in _REGISTRY:
        if spec.group_col or spec.convert:
            raise SuperalignError(f"--group-col/--convert apply to file: and hf: tasks, not the built-in {name!r}",
                                  "drop them")
        loader = _REGISTRY[name][0]
    elif name.startswith("hf:"):
        loader = _hf_task
    elif name.startswith("file:") or re.search(r"\.(jsonl|json|csv|tsv|parquet)(\.gz)?$", name):
        loader = _file_task
    else:
        raise SuperalignError(f"unknown task {name!r}",
                              f"use one of {', '.join(sorted(_REGISTRY))}, hf:<dataset>, "
                              "or file:<path.jsonl|csv|parquet>")
    with recording_sources() as sources:
        task = loader(spec)
    task.meta["sources"] = {**sources, **task.meta.get("sources", {})}
    fp = task.fingerprint()
    _TASK_FPS[_spec_key(spec)] = ({p: stat_signature(p) for p in task.meta["sources"] if Path(p).exists()}, fp)
    return task


# spec → ({input path: stat signature}, fingerprint) of the last load in this process
_TASK_FPS: dict[str, tuple[dict, str]] = {}


def _spec_key(spec: TaskSpec) -> str:
    import dataclasses
    import json
    d = dataclasses.asdict(spec)
    if d["data"] is None and spec.name in _REGISTRY:
        d["data"] = os.environ.get("SUPERALIGN_DATA")
    return json.dumps(d, sort_keys=True, default=str)


def task_fingerprint(spec: TaskSpec | str) -> str:
    """``load_task(spec).fingerprint()``, without reloading while none of the task's input files changed
    (checked by size, mtime and inode; a changed file reloads and rehashes)."""
    if isinstance(spec, str):
        spec = TaskSpec(spec)
    hit = _TASK_FPS.get(_spec_key(spec))
    if hit is not None and all(stat_signature(p) == sig for p, sig in hit[0].items()):
        return hit[1]
    return load_task(spec).fingerprint()


# ----------------------------------------------------------------------------- built-in offline tasks


def _package_file(module: str, *parts: str) -> Path:
    import importlib.util
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SuperalignError(f"package {module} is not installed", f"pip install {module}")
    path = Path(spec.origin).parent.joinpath(*parts)
    record_source(path)
    return path


def _rating_to_soft(r: int) -> float:
    return 1.0 if r > 0 else (0.0 if r < 0 else 0.5)


@register_task("vader", "VADER lexicon (vaderSentiment): 7,519 words/emoticons with 10 human ratings each. "
               "Label = mean rating > 0 (ties at 0 dropped); the 'human' weak supervisor is a single rater.")
def _vader(spec: TaskSpec) -> Task:
    path = _package_file("vaderSentiment", "vader_lexicon.txt")
    texts, labels, weak, ratings = [], [], [], []
    rater = 0  # the first of the ten raters stands in for one genuinely weaker human supervisor
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        token, mean = parts[0], float(parts[1])
        rs = [int(x) for x in re.findall(r"-?\d+", parts[3])]
        if mean == 0 or len(rs) != 10:
            continue
        texts.append(token)
        labels.append(int(mean > 0))
        weak.append(_rating_to_soft(rs[rater]))
        ratings.append(rs)
    return Task("vader", texts, np.array(labels), np.array(weak), description=_REGISTRY["vader"][1],
                meta={"ratings": ratings, "rater": rater})


def _textblob_rows() -> list[dict]:
    path = _package_file("textblob", "en", "en-sentiment.xml")
    root = ET.parse(path).getroot()
    return [w.attrib for w in root.iter("word")]


@register_task("textblob-polarity", "TextBlob en-sentiment.xml: WordNet adjective senses 'form: gloss' with "
               "hand-tagged polarity; label = polarity > 0 (polarity 0 dropped).")
def _tb_polarity(spec: TaskSpec) -> Task:
    rows = [r for r in _textblob_rows() if float(r.get("polarity", 0)) != 0 and r.get("sense")]
    texts = [f"{r['form']}: {r['sense']}" for r in rows]
    labels = np.array([int(float(r["polarity"]) > 0) for r in rows])
    return Task("textblob-polarity", texts, labels, description=_REGISTRY["textblob-polarity"][1])


@register_task("textblob-subjectivity", "TextBlob en-sentiment.xml: WordNet adjective senses 'form: gloss'; "
               "label = subjectivity >= 0.5.")
def _tb_subjectivity(spec: TaskSpec) -> Task:
    rows = [r for r in _textblob_rows() if r.get("sense")]
    texts = [f"{r['form']}: {r['sense']}" for r in rows]
    labels = np.array([int(float(r["subjectivity"]) >= 0.5) for r in rows])
    return Task("textblob-subjectivity", texts, labels, description=_REGISTRY["textblob-subjectivity"][1])


# ----------------------------------------------------------------------------- shared datasets folder


def _shared(spec: TaskSpec, sub: str, files: list[str]) -> pd.DataFrame:
    root = resolve_data_dir(spec.data, f"task {spec.name}") / sub
    frames = []
    for f in files:
        if not (root / f).exists():
            raise SuperalignError(f"task {spec.name}: {root / f} is missing",
                                  "point --data at the shared datasets folder")
        frames.append(read_table(root / f))
    return pd.concat(frames, ignore_index=True)


@register_task("sst2", "GLUE SST-2 movie-review sentiment (shared data: sst2/train+validation).")
def _sst2(spec: TaskSpec) -> Task:
    df = _shared(spec, "sst2", ["train.jsonl", "validation.jsonl"])
    return Task("sst2", df["text"].tolist(), df["label"].to_numpy(), description=_REGISTRY["sst2"][1])


@register_task("cola", "GLUE CoLA grammatical acceptability (shared data: cola/train+validation).")
def _cola(spec: TaskSpec) -> Task:
    df = _shared(spec, "cola", ["train.jsonl", "validation.jsonl"])
    return Task("cola", df["text"].tolist(), df["label"].to_numpy(), description=_REGISTRY["cola"][1])


@register_task("boolq", "BoolQ yes/no reading comprehension, 'question? [SEP] passage' (shared data: "
               "boolq/validation, the only split with passages).")
def _boolq(spec: TaskSpec) -> Task:
    df = _shared(spec, "boolq", ["validation.jsonl"])
    texts = [f"{q}? [SEP] {p}" for q, p in zip(df["question"], df["passage"])]
    return Task("boolq", texts, df["label"].to_numpy(), description=_REGISTRY["boolq"][1])


@register_task("sciq", "SciQ as binary 'is this the right answer': (question, correct answer) = 1, (question, the "
               "correct answer of another random question) = 0. The shared copy has no distractors.")
def _sciq(spec: TaskSpec) -> Task:
    df = _shared(spec, "sciq", ["train_qa_only.jsonl", "validation_qa_only.jsonl", "test_qa_only.jsonl"])
    rng = random.Random(1234)  # fixed: the task itself must not change with the experiment seed
    answers = df["correct_answer"].astype(str).tolist()
    texts, labels = [], []
    for i, (q, a) in enumerate(zip(df["question"], answers)):
        # each question appears once, as a positive or a negative, so the two classes do not share inputs
        if rng.random() < 0.5:
            texts.append(f"Q: {q} A: {a}")
            labels.append(1)
        else:
            j = rng.randrange(len(answers) - 1)
            j = j + 1 if j >= i else j
            while answers[j].strip().lower() == a.strip().lower():
                j = rng.randrange(len(answers))
            texts.append(f"Q: {q} A: {answers[j]}")
            labels.append(0)
    return Task("sciq", texts, np.array(labels), description=_REGISTRY["sciq"][1])


# ----------------------------------------------------------------------------- Hugging Face datasets and local files

# Column maps for the paper's datasets on the Hugging Face hub (used when --text-col/--label-col are not given).
HF_COLUMN_MAPS: dict[str, dict] = {
    "sst2": {"text_col": ["sentence"], "label_col": "label"},
    "glue": {"text_col": ["sentence"], "label_col": "label"},
    "amazon_polarity": {"text_col": ["title", "content"], "label_col": "label"},
    "boolq": {"text_col": ["question", "passage"], "label_col": "answer"},
    "google/boolq": {"text_col": ["question", "passage"], "label_col": "answer"},
    "imdb": {"text_col": ["text"], "label_col": "label"},
}


# Multiple-choice and preference datasets become binary tasks as in Burns et al. 2023: every (question, candidate
# answer) pair is one example, labelled 1 when the candidate is the right / preferred one. Each conversion also
# writes ``group`` (rows that share text: they must stay in one split, else the student memorises the shared
# question or context) and ``question`` (the candidates of one question, for multiple-choice accuracy).
def expand_sciq(df: pd.DataFrame) -> pd.DataFrame:
    """allenai/sciq: the correct answer (1) and one distractor chosen by row (0) per question; grouped by the
    question text (a question repeated in the data is one group)."""
    rows = []
    for i, r in enumerate(df.itertuples(index=False)):
        d = getattr(r, f"distractor{1 + i % 3}")
        for answer, y in ((r.correct_answer, 1), (d, 0)):
            rows.append({"text": f"Q: {r.question} A: {answer}", "label": y, "group": str(r.question), "question": i})
    return pd.DataFrame(rows)


def expand_cosmos_qa(df: pd.DataFrame) -> pd.DataFrame:
    """cosmos_qa: context + question + the labelled answer (1) and the next answer option (0); grouped by the
    context paragraph, which several questions share."""
    rows = []
    for i, r in enumerate(df.itertuples(index=False)):
        ans = [r.answer0, r.answer1, r.answer2, r.answer3]
        k = int(r.label)
        for j, y in ((k, 1), ((k + 1) % 4, 0)):
            rows.append({"text": f"{r.context} Q: {r.question} A: {ans[j]}", "label": y, "group": str(r.context),
                         "question": i})
    return pd.DataFrame(rows)


def expand_preferences(df: pd.DataFrame) -> pd.DataFrame:
    """Anthropic/hh-rlhf style chosen/rejected transcripts: chosen = 1, rejected = 0; a pair is one group."""
    return pd.DataFrame([{"text": t, "label": y, "group": i, "question": i}
                         for i, r in enumerate(df.itertuples(index=False))
                         for t, y in ((r.chosen, 1), (r.rejected, 0))])


# Named conversions (``--convert``) with the columns each needs; hub datasets of these names convert by default.
CONVERSIONS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], tuple[str, ...]]] = {
    "sciq": (expand_sciq, ("question", "correct_answer", "distractor1", "distractor2", "distractor3")),
    "cosmos_qa": (expand_cosmos_qa, ("context", "question", "answer0", "answer1", "answer2", "answer3", "label")),
    "preferences": (expand_preferences, ("chosen", "rejected")),
    "preference-pairs": (expand_preferences, ("chosen", "rejected")),
}
# conversions whose tasks are pairwise (reward modelling, see Task.pairwise): the same rows as their plain twin
PAIRWISE_CONVERSIONS = ("preference-pairs",)
HF_EXPANDERS = {"sciq": "sciq", "allenai/sciq": "sciq", "cosmos_qa": "cosmos_qa", "allenai/cosmos_qa": "cosmos_qa",
                "Anthropic/hh-rlhf": "preferences", "anthropic_hh": "preferences"}
CONVERTED_COLUMNS = {"text_col": ["text"], "label_col": "label", "group_col": "group", "question_col": "question"}


def convert_frame(name: str, df: pd.DataFrame, conversion: str) -> pd.DataFrame:
    fn, needs = CONVERSIONS[conversion]
    missing = [c for c in needs if c not in df.columns]
    if missing:
        raise SuperalignError(f"task {name}: --convert {conversion} needs column(s) {missing}; available: "
                              f"{list(df.columns)}", "rename the columns or pick another --convert")
    return fn(df)


@register_task("anthropic_hh", "Anthropic HH-RLHF harmless-base test pairs as a reward-modelling task: the final "
               "human turn + chosen response = 1, + rejected response = 0 (shared data: anthropic_hh).")
def _anthropic_hh(spec: TaskSpec) -> Task:
    df = _shared(spec, "anthropic_hh", ["harmless_base_test.jsonl"]).dropna(subset=["prompt"])
    last_turn = [p.rsplit("Human:", 1)[-1].replace("Assistant:", "").strip() for p in df["prompt"]]
    texts, labels, pairs = [], [], []
    for i, (q, c, r) in enumerate(zip(last_turn, df["chosen_response"], df["rejected_response"])):
        for resp, y in ((c, 1), (r, 0)):
            if isinstance(resp, str) and resp.strip():
                texts.append(f"Human: {q} Assistant: {resp.strip()}")
                labels.append(y)
                pairs.append(i)
    # the two responses of a pair share the human turn: they are one group (one split, one 2-way choice)
    return Task("anthropic_hh", texts, np.array(labels), description=_REGISTRY["anthropic_hh"][1],
                groups=np.array(pairs, dtype=np.int64))


@register_task("anthropic_hh-pairs", "The anthropic_hh rows as preference pairs (reward modelling): each pair (final "
               "human turn + chosen / + rejected response) is one group; w2s trains Bradley–Terry reward models and "
               "scores pairwise accuracy. Pairs missing a response are dropped.")
def _anthropic_hh_pairs(spec: TaskSpec) -> Task:
    t = _anthropic_hh(spec)
    keep = np.isin(t.groups, np.flatnonzero(np.bincount(t.groups) == 2))  # both responses present
    idx = np.flatnonzero(keep)
    return Task("anthropic_hh-pairs", [t.texts[i] for i in idx], t.labels[idx],
                description=_REGISTRY["anthropic_hh-pairs"][1], groups=t.groups[idx], meta={"pairwise": True})


@register_task("tldr-pairs", "OpenAI TL;DR human comparisons (Stiennon et al. 2020; shared data: "
               "summarize_from_feedback, 1,771 validation comparisons) as preference pairs: 'summary [SEP] post "
               "title' per summary (the post itself, ~300 tokens, would not fit a 128-token encoder).")
def _tldr_pairs(spec: TaskSpec) -> Task:
    df = _shared(spec, "summarize_from_feedback", ["comparisons_tldr.jsonl"])
    texts, labels, pairs = [], [], []
    for i, r in enumerate(df.itertuples(index=False)):
        a, b = str(r.summary_a).strip(), str(r.summary_b).strip()
        if not a or not b or a == b or int(r.choice) not in (0, 1):
            continue  # a pair of identical summaries has no preference to learn
        # the post's title, not the post: mean-pooled features of summary + post were dominated by the post shared
        # by both texts (MiniLM-L6 probe 57% vs bag-of-words 63%), and --max-length 128 cut most posts anyway
        for k, summary in enumerate((a, b)):
            texts.append(f"{summary} [SEP] {str(r.title).strip()}")
            labels.append(int(k == int(r.choice)))
            pairs.append(i)
    return Task("tldr-pairs", texts, np.array(labels), description=_REGISTRY["tldr-pairs"][1],
                groups=np.array(pairs, dtype=np.int64), meta={"pairwise": True})


def _label_key(v) -> str:
    """The string form a raw label is matched by in --label-map (JSON keys are strings): 2 and 2.0 → "2",
    True → "true"."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    s = str(v)
    return s.lower() if s.lower() in ("true", "false") else s


def _apply_label_map(name: str, y: pd.Series, label_map: dict) -> pd.Series:
    """Map raw labels through ``label_map`` by string form; a label mapped to None (JSON null) becomes NaN and its
    rows are dropped by the caller."""
    mapping: dict[str, int | None] = {}
    for k, v in label_map.items():
        if v is not None and not (isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1)):
            raise SuperalignError(f"task {name}: --label-map sends {k!r} to {v!r}",
                                  "map every raw label to 0, 1, or null (null drops those rows)")
        mapping[_label_key(k)] = None if v is None else int(v)
    keys = y.map(_label_key)
    unknown = sorted(set(keys) - set(mapping))
    if unknown:
        raise SuperalignError(f"task {name}: labels {unknown[:5]} not in --label-map (it has {sorted(mapping)[:8]})",
                              "add them to the map (to 0, 1, or null to drop their rows)")
    return keys.map(mapping).astype("float64")


def _frame_to_task(name: str, df: pd.DataFrame, spec: TaskSpec, defaults: dict | None = None) -> Task:
    defaults = defaults or {}
    text_cols = spec.text_col or defaults.get("text_col") or ["text"]
    label_col = spec.label_col or defaults.get("label_col") or "label"
    group_col = spec.group_col or defaults.get("group_col")
    question_col = defaults.get("question_col") if not spec.group_col else None
    missing = [c for c in [*text_cols, label_col, *([group_col] if group_col else [])] if c not in df.columns]
    if missing:
        raise SuperalignError(f"task {name}: missing column(s) {missing}; available: {list(df.columns)}",
                              "pass --text-col, --label-col (and --group-col) naming existing columns")
    if len(df) == 0:
        raise SuperalignError(f"task {name} has no rows", "check the file")
    for c in text_cols:
        if df[c].isna().any():
            raise SuperalignError(f"task {name}: text column {c!r} has {int(df[c].isna().sum())} missing values",
                                  "drop or fill those rows")
    if group_col and df[group_col].isna().any():
        raise SuperalignError(f"task {name}: group column {group_col!r} has {int(df[group_col].isna().sum())} missing "
                              "values", "give every row a group id")
    y = df[label_col]
    if y.isna().any():
        raise SuperalignError(f"task {name}: label column {label_col!r} has NaN "
                              f"(first at row {int(y.isna().values.argmax())})",
                              "drop or fix those rows")
    meta: dict = {}
    if spec.label_map:
        y = _apply_label_map(name, y, spec.label_map)
        keep = y.notna().to_numpy()
        meta["label_map_dropped"] = int((~keep).sum())
        df, y = df[keep], y[keep]
        if len(df) == 0:
            raise SuperalignError(f"task {name}: --label-map drops every row", "map some labels to 0 and 1")
    elif y.dtype == bool:
        y = y.astype(int)
    elif y.dtype.kind not in "iuf":
        raise SuperalignError(f"task {name}: label column {label_col!r} is not numeric (e.g. {y.iloc[0]!r})",
                              "pass --label-map '{\"neg\": 0, \"pos\": 1}'")
    texts = [" [SEP] ".join(str(v) for v in row) for row in df[text_cols].itertuples(index=False)]
    yv = y.to_numpy()
    if yv.dtype.kind == "f" and not np.all(np.isin(yv, [0.0, 1.0])):
        raise SuperalignError(f"task {name}: labels must be binary 0/1, found values {sorted(set(yv.tolist()))[:6]}",
                              "map labels to 0/1 with --label-map")
    groups = pd.factorize(df[group_col].astype(str))[0].astype(np.int64) if group_col else None
    questions = pd.factorize(df[question_col].astype(str))[0].astype(np.int64) \
        if groups is not None and question_col and question_col in df.columns else None
    return Task(name, texts, yv.astype(np.int64) if np.all(np.isin(yv, [0, 1])) else yv, meta=meta, groups=groups,
                questions=questions)


def _convert_or_columns(name: str, df: pd.DataFrame, spec: TaskSpec,
                        conversion: str | None) -> tuple[pd.DataFrame, dict | None]:
    if conversion is None:
        return df, None
    if spec.text_col or spec.label_col:
        raise SuperalignError(f"--convert {conversion} builds the text and label columns itself",
                              "drop --text-col/--label-col (or drop --convert)")
    return convert_frame(name, df, conversion), CONVERTED_COLUMNS


def _file_task(spec: TaskSpec) -> Task:
    path = spec.name[5:] if spec.name.startswith("file:") else spec.name
    name = os.path.basename(path)
    df, defaults = _convert_or_columns(name, read_table(path), spec, spec.convert)
    return _pairwise_if(_frame_to_task(name, df, spec, defaults), spec.convert)


def _hf_task(spec: TaskSpec) -> Task:
    ref = spec.name[3:]
    name, _, config = ref.partition(":")
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a declared dependency
        raise SuperalignError("hf: tasks need the datasets package", "pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=spec.split or "train")
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = ("HF_HUB_OFFLINE=1 is set and the dataset is not in the local cache: download it first or use "
                "file:<path>") if offline else "check the dataset name, --split, and your network"
        raise SuperalignError(f"could not load Hugging Face dataset {name!r}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}", hint) from None
    # identity of the data, not of the name: a local folder by the content of its files; a hub dataset by the
    # fingerprint `datasets` gives the loaded split (it hashes the builder config and the resolved data files)
    if Path(name).expanduser().exists():
        record_source(Path(name))
    else:
        record_source(f"hf:{ref}:{spec.split or 'train'}", f"datasets:{getattr(ds, '_fingerprint', '') or 'unknown'}")
    df = ds.to_pandas()
    conversion = spec.convert or (HF_EXPANDERS.get(name) if not (spec.text_col or spec.label_col) else None)
    df, defaults = _convert_or_columns(ref, df, spec, conversion)
    return _pairwise_if(_frame_to_task(ref, df, spec, defaults or HF_COLUMN_MAPS.get(name)), conversion)


def _pairwise_if(task: Task, conversion: str | None) -> Task:
    if conversion in PAIRWISE_CONVERSIONS:
        task.meta["pairwise"] = True
        pair_rows(task)  # validated like a built-in pairwise task
    return task
