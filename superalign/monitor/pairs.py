"""Contrast-pair datasets: a statement or question with each candidate answer filled into a template.

A :class:`Template` is text with ``{field}`` placeholders for dataset columns and one ``{answer}``, and the two answers
(false first, true second): ``"{text}\\nSentiment: {answer}"`` with ``("negative", "positive")``. Filling row i gives
``neg[i]`` and ``pos[i]``; the label says which of the two is the truth. The template (text and answers) is part of
the dataset's identity (:attr:`ContrastPairs.fingerprint`), so a cache of hidden states never mixes templates.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import dataclass
from pathlib import Path

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
}
"""the built-in templates per dataset (several each, since CCS results vary with the template)"""


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

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.source, self.template.text, self.template.answers, self.neg, self.pos,
                                       self.labels]).encode())
        return h.hexdigest()[:16]


def make_pairs(rows: list[dict], template: Template, label_col: str = "label", source: str = "rows") -> ContrastPairs:
    """Fill ``template`` with each row's two answers. Labels must be 0/1 (or booleans); columns the template reads
    must exist in every row."""
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
        neg.append(template.fill(r, template.answers[0]))
        pos.append(template.fill(r, template.answers[1]))
        prompts.append(template.prompt(r))
        labels.append(int(y))
    return ContrastPairs(neg, pos, prompts, labels, template, source)


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


def load_pairs(dataset: str, template: str | Template | None = None, split: str = "validation",
               data_dir: str | None = None, limit: int | None = None, columns: dict[str, str] | None = None,
               label_col: str = "label") -> ContrastPairs:
    """Contrast pairs of a built-in dataset (``sst2``, ``boolq`` from the shared data folder: ``data_dir`` or
    ``$SUPERALIGN_DATA``) or a local ``.jsonl``/``.csv`` file (``template`` required; ``columns`` renames
    {file column: template field})."""
    from ..data.fingerprint import file_fingerprint

    if dataset in TEMPLATES:
        path = shared_path(dataset, split, data_dir)
        choices = TEMPLATES[dataset]
        if template is None:
            template = choices[0]
        elif isinstance(template, str):
            by_name = {t.name: t for t in choices}
            if template not in by_name:
                raise SuperalignError(f"unknown template {template!r} for {dataset}",
                                      f"use one of {', '.join(by_name)} or pass a Template")
            template = by_name[template]
    else:
        path = Path(dataset)
        if not isinstance(template, Template):
            raise SuperalignError(f"{dataset}: a local file needs a Template", "pass template=Template(...)")
    rows = _read_rows(path, limit)
    if columns:
        rows = [{columns.get(k, k): v for k, v in r.items()} for r in rows]
    return make_pairs(rows, template, label_col, source=f"{path}#{file_fingerprint(path)[:16]}")
