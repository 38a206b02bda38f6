"""Contrast-pair datasets: a statement or question with each candidate answer filled into a template.

A :class:`Template` is text with ``{field}`` placeholders for dataset columns and one ``{answer}``, and the two answers
(false first, true second): ``"{text}\\nSentiment: {answer}"`` with ``("negative", "positive")``. Filling row i gives
``neg[i]`` and ``pos[i]``; the label says which of the two is the truth. The template (text and answers) is part of
the dataset's identity (:attr:`ContrastPairs.fingerprint`), so a cache of hidden states never mixes templates.

Sources: the shared SST-2 and BoolQ files, the built-in offline tasks of :mod:`superalign.data.tasks` (``vader``,
``textblob-polarity``, … : any registered task, with a built-in template where :data:`TEMPLATES` has one), and local
``.jsonl``/``.csv`` files with a column mapping.

Two robustness checks from the literature change the texts (and so the fingerprint):

- a **misleading prefix** (Burns et al. 2022, §3.3): ``k`` demonstrations from rows that are not evaluated (the
  ``k`` rows right after the evaluated ones), each filled with its WRONG answer, prepended to both sides and to the
  zero-shot prompt (:func:`misleading_prefix`);
- a **distractor feature** (Farquhar et al. 2023, §4.1, "banana/shed"): each pair gets one arbitrary word appended
  to one side and another word to the other side, at random per pair; the side that got the first word is a binary
  feature that satisfies CCS's consistency structure as well as the truth does (:func:`add_distractor`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import random
import string
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import SuperalignError


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    """with ``{answer}`` and one ``{column}`` per dataset field it reads"""
    answers: tuple[str, str]
    """(the false answer, the true answer)"""

    def __post_init__(self):
        fields = self.fields()
        if "answer" not in fields:
            raise SuperalignError(f"template {self.name!r} has no {{answer}} placeholder",
                                  "put {answer} where the candidate answer goes, e.g. '{text} Sentiment: {answer}'")
        if len(self.answers) != 2 or not all(isinstance(a, str) and a.strip() for a in self.answers) \
                or self.answers[0] == self.answers[1]:
            raise SuperalignError(f"template {self.name!r} needs two different non-empty answers, got {self.answers!r}",
                                  "pass (false answer, true answer), e.g. ('no', 'yes')")

    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.text) if f}

    def prompt(self, row: dict) -> str:
        """The text before the answer (what the zero-shot baseline continues)."""
        return self.text.split("{answer}")[0].format(**row)

    def fill(self, row: dict, answer: str) -> str:
        return self.text.format(**row, answer=answer)


TEMPLATES: dict[str, tuple[Template, ...]] = {
    "sst2": (Template("sentiment", "{text}\nSentiment: {answer}", ("negative", "positive")),
             Template("review-was", "Review: {text}\nThe review was {answer}.", ("bad", "good"))),
    "boolq": (Template("qa", "Q: {question}?\nA: {answer}", ("no", "yes")),
              Template("true-false", "Question: {question}?\nIs the answer yes? {answer}", ("false", "true"))),
    "vader": (Template("word-is", "The word \"{text}\" is {answer}.", ("negative", "positive")),
              Template("word-sentiment", "Word: {text}\nSentiment: {answer}", ("negative", "positive"))),
    "textblob-polarity": (Template("sense-is", "The adjective sense \"{text}\" is {answer}.",
                                   ("negative", "positive")),),
}
"""the built-in templates per dataset (several each, since CCS results vary with the template)"""

SHARED_FILES = ("sst2", "boolq")
"""datasets read from one split file of the shared data folder; the other names in :data:`TEMPLATES` (and any task
of :func:`superalign.data.tasks.list_tasks`) are built-in tasks"""

PREFIXES = ("none", "misleading")
DISTRACTORS: dict[str, tuple[str, str]] = {"none": ("", ""), "banana-shed": ("Banana.", "Shed.")}
"""name → (the word whose side the distractor label marks, the other word) appended after the filled answer"""

AMBIGUOUS_RATING = 1.0
"""a rated task's rows (VADER: ten human ratings from −4 to +4) whose mean rating is closer to neutral than this are
dropped as ambiguous; the rest are binarised by the sign of the mean"""


@dataclass
class ContrastPairs:
    neg: list[str]
    pos: list[str]
    prompts: list[str]
    labels: list[int]
    """1 when the true answer is the template's second (``pos``) answer"""
    template: Template
    source: str
    """what the rows came from (a path with its content hash, or a dataset name)"""
    prefix: str = ""
    """text prepended to every side and prompt (the misleading few-shot demonstrations; empty for none)"""
    distractor: list[int] | None = None
    """per pair, 1 when the ``pos`` side carries the distractor's first word (None without a distractor)"""
    distractor_name: str = "none"
    scored: tuple[list[str], list[str]] | None = None
    """(neg, pos) up to the end of the answer: the zero-shot baseline scores the tokens between the prompt and there,
    not an appended distractor word (None: the whole of ``neg``/``pos``)"""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.source, self.template.text, self.template.answers, self.neg, self.pos,
                                       self.labels, self.prefix, self.distractor_name, self.distractor]).encode())
        return h.hexdigest()[:16]


def make_pairs(rows: list[dict], template: Template, label_col: str = "label", source: str = "rows",
               prefix: str = "") -> ContrastPairs:
    """Fill ``template`` with each row's two answers (``prefix`` prepended to both and to the prompt). Labels must be
    0/1 (or booleans); columns the template reads must exist in every row."""
    if not rows:
        raise SuperalignError(f"no rows for contrast pairs from {source}", "check the file and its filters")
    need = template.fields() - {"answer"}
    neg, pos, prompts, labels = [], [], [], []
    for i, r in enumerate(rows):
        missing = sorted(need - set(r)) + ([label_col] if label_col not in r else [])
        if missing:
            raise SuperalignError(f"{source} row {i} lacks column(s) {', '.join(missing)} (has {', '.join(sorted(r))})",
                                  "map the columns with text_cols/label_col or change the template's placeholders")
        y = r[label_col]
        if isinstance(y, bool):
            y = int(y)
        if y not in (0, 1):
            raise SuperalignError(f"{source} row {i}: label {y!r} is not binary", "map the labels to 0 and 1")
        neg.append(prefix + template.fill(r, template.answers[0]))
        pos.append(prefix + template.fill(r, template.answers[1]))
        prompts.append(prefix + template.prompt(r))
        labels.append(int(y))
    return ContrastPairs(neg, pos, prompts, labels, template, source, prefix=prefix)


def misleading_prefix(demo_rows: list[dict], template: Template, label_col: str = "label",
                      source: str = "demonstrations") -> str:
    """Few-shot demonstrations answered WRONGLY (Burns et al. 2022, §3.3): each row filled with the answer its label
    says is false, one demonstration per paragraph, ending with a blank line before the evaluated text."""
    demos = make_pairs(demo_rows, template, label_col, source)
    return "".join((n if y == 1 else p) + "\n\n" for n, p, y in zip(demos.neg, demos.pos, demos.labels))


def add_distractor(pairs: ContrastPairs, name: str, seed: int) -> ContrastPairs:
    """The pairs with a distractor feature (Farquhar et al. 2023, §4.1): for each pair a fair coin (numpy
    ``default_rng(seed)``) says which side gets the first word (``"Banana."``) and which the second (``"Shed."``),
    appended after the filled answer; ``distractor[i]`` = 1 when ``pos`` got the first word. A probe that reads the
    word instead of the truth predicts the distractor label, not the truth label."""
    if name not in DISTRACTORS:
        raise SuperalignError(f"unknown distractor {name!r}", f"use one of {', '.join(DISTRACTORS)}")
    if name == "none":
        return pairs
    first, second = DISTRACTORS[name]
    d = np.random.default_rng(seed).integers(0, 2, len(pairs)).tolist()
    neg = [f"{t} {second if k else first}" for t, k in zip(pairs.neg, d)]
    pos = [f"{t} {first if k else second}" for t, k in zip(pairs.pos, d)]
    return replace(pairs, neg=neg, pos=pos, distractor=d, distractor_name=name, scored=(pairs.neg, pairs.pos))


def _read_rows(path: Path, limit: int | None) -> list[dict]:
    import pandas as pd

    if not path.is_file():
        raise SuperalignError(f"data file {path} does not exist", "check the path (or set SUPERALIGN_DATA)")
    if path.suffix == ".csv":
        df = pd.read_csv(path)
    else:
        df = pd.read_json(path, lines=True)
    rows = df.to_dict("records")
    return rows[:limit] if limit else rows


def shared_path(dataset: str, split: str, data_dir: str | None = None) -> Path:
    """The shared-data file of a built-in dataset's split (``data_dir`` or ``$SUPERALIGN_DATA``)."""
    base = Path(data_dir or os.environ.get("SUPERALIGN_DATA") or "../shared/data") / dataset
    name = {"boolq": {"train": "train_questions_only"}}.get(dataset, {}).get(split, split)
    return base / f"{name}.jsonl"


def task_rows(name: str) -> tuple[list[dict], str]:
    """Rows ``{"text", "label"}`` of a built-in task of :mod:`superalign.data.tasks`, and its identity. The task's
    labels are already binary; where it carries per-row human ratings (VADER's ten ratings per word) rows whose mean
    rating lies within :data:`AMBIGUOUS_RATING` of neutral are dropped as ambiguous, and so is a text listed twice
    with opposite labels (a text listed twice with one label is kept once). The rows are shuffled with a fixed
    seed (lexicons come sorted, so "the first n" would be one corner of the alphabet), the same in every run."""
    from ..data.tasks import load_task

    task = load_task(name)
    keep = list(range(len(task)))
    ratings = task.meta.get("ratings")
    if ratings is not None:
        keep = [i for i in keep if abs(float(np.mean(ratings[i]))) >= AMBIGUOUS_RATING]
    seen: dict[str, set[int]] = {}
    for i in keep:
        seen.setdefault(task.texts[i], set()).add(int(task.labels[i]))
    rows, done = [], set()
    for i in keep:  # a text listed twice becomes one pair; one listed with both labels is dropped as ambiguous
        t = task.texts[i]
        if len(seen[t]) == 1 and t not in done:
            rows.append({"text": t, "label": int(task.labels[i])})
            done.add(t)
    random.Random(0).shuffle(rows)
    return rows, f"task:{name}#{task.fingerprint()}"


def dataset_kind(dataset: str) -> str:
    """'shared' (a split file of the shared data folder), 'task' (a built-in task) or 'file'; an unknown name that is
    not an existing file is a one-line error naming the close matches."""
    from ..data.tasks import list_tasks

    if dataset in SHARED_FILES:
        return "shared"
    tasks = list_tasks()
    if dataset in TEMPLATES or (dataset in tasks and not dataset.startswith(("hf:", "file:"))):
        return "task"
    path = Path(dataset)
    if path.suffix in (".jsonl", ".json", ".csv") or path.exists() or "/" in dataset:
        return "file"
    names = sorted(set(SHARED_FILES) | set(TEMPLATES) | set(tasks))
    close = difflib.get_close_matches(dataset, names, n=3)
    raise SuperalignError(f"unknown dataset {dataset!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""),
                          f"use one of {', '.join(names)} or a .jsonl/.csv file")


def parse_columns(columns: list[str] | dict[str, str] | None) -> dict[str, str]:
    """``["review=text", "truth=label"]`` (the CLI's ``--columns``) → ``{file column: template field}``."""
    if not columns:
        return {}
    if isinstance(columns, dict):
        return dict(columns)
    out = {}
    for c in columns:
        src, eq, dst = c.partition("=")
        if not eq or not src.strip() or not dst.strip():
            raise SuperalignError(f"--columns entry {c!r} is not file_column=field",
                                  "pass e.g. --columns review=text truth=label")
        out[src.strip()] = dst.strip()
    return out


def load_pairs(dataset: str, template: str | Template | None = None, split: str = "validation",
               data_dir: str | None = None, limit: int | None = None, columns: dict[str, str] | None = None,
               label_col: str = "label", prefix: str = "none", prefix_k: int = 4) -> ContrastPairs:
    """Contrast pairs of a built-in dataset (``sst2``, ``boolq`` from the shared data folder: ``data_dir`` or
    ``$SUPERALIGN_DATA``), a built-in task (``vader``, …: :func:`task_rows`) or a local ``.jsonl``/``.csv`` file
    (``template`` required; ``columns`` renames {file column: template field}). The first ``limit`` rows are
    evaluated; ``prefix="misleading"`` prepends :func:`misleading_prefix` of the ``prefix_k`` rows after them (so the
    demonstrations are never evaluated rows, and the evaluated rows are the same as without a prefix)."""
    from ..data.fingerprint import file_fingerprint

    if prefix not in PREFIXES:
        raise SuperalignError(f"unknown prefix {prefix!r}", f"use one of {', '.join(PREFIXES)}")
    kind = dataset_kind(dataset)
    if kind != "file":
        choices = TEMPLATES.get(dataset, ())
        if template is None and not choices:
            raise SuperalignError(f"task {dataset!r} has no built-in template",
                                  "pass a template with {text} and {answer} (--template-text and --answers)")
        if template is None:
            template = choices[0]
        elif isinstance(template, str):
            by_name = {t.name: t for t in choices}
            if template not in by_name:
                raise SuperalignError(f"unknown template {template!r} for {dataset}",
                                      f"use one of {', '.join(by_name) or '(none built in)'} or pass a Template")
            template = by_name[template]
    elif not isinstance(template, Template):
        raise SuperalignError(f"{dataset}: a local file needs a Template", "pass template=Template(...)")
    k = prefix_k if prefix == "misleading" else 0
    if prefix == "misleading" and k < 1:
        raise SuperalignError(f"a misleading prefix needs at least one demonstration, got {prefix_k}",
                              "pass e.g. --prefix-k 4")
    want = limit + k if limit else None
    if kind == "task":
        rows, source = task_rows(dataset)
        rows = rows[:want] if want else rows
    else:
        path = shared_path(dataset, split, data_dir) if kind == "shared" else Path(dataset)
        rows = _read_rows(path, want)
        source = f"{path}#{file_fingerprint(path)[:16]}"
    if columns:
        rows = [{columns.get(c, c): v for c, v in r.items()} for r in rows]
    n_eval = limit if limit else len(rows) - k
    if k and (len(rows) < n_eval + k or n_eval < 1):
        raise SuperalignError(f"the misleading prefix asks for {k} demonstrations beyond the {n_eval} evaluated rows, "
                              f"but {dataset} has only {len(rows)} rows",
                              "lower --prefix-k or --n (the demonstrations are never evaluated rows)")
    demo = misleading_prefix(rows[n_eval:n_eval + k], template, label_col, f"{source} demonstrations") if k else ""
    return make_pairs(rows[:n_eval], template, label_col, source=source, prefix=demo)
