"""Dataset formats shared by every RLHF trainer, and adapters that produce them.

Formats (lists of plain dicts, as in TRL):

- **SFT**: ``{"prompt", "completion"}``
- **preferences**: ``{"prompt", "chosen", "rejected"}`` with an optional ``"margin"`` (reward model, DPO)
- **rankings**: ``{"prompt", "completions": [best, ..., worst]}`` (reward model: C(K,2) pairs per prompt)
- **prompts**: ``{"prompt"}`` (PPO, best-of-n)

Sources for preferences (``load_preferences``): ``anthropic_hh`` and ``tldr`` from the shared datasets folder
(``--data`` / ``$SUPERALIGN_DATA``), ``hf:Anthropic/hh-rlhf``, ``hf:openai/summarize_from_feedback`` (comparisons),
``hf:<any>`` with prompt/chosen/rejected columns, and local jsonl/json/csv/tsv/parquet files (``file:<path>`` or a
plain path) with ``--prompt-col/--chosen-col/--rejected-col``.
"""

from __future__ import annotations

import math
import os

import pandas as pd

from ..data.files import read_table, resolve_data_dir
from ..errors import SuperalignError


def _check_text(value, what: str, i: int, allow_empty: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise SuperalignError(f"row {i}: {what} is missing (NaN/None)", f"drop or fill rows with a missing {what}")
    if not isinstance(value, str):
        raise SuperalignError(f"row {i}: {what} must be text, got {type(value).__name__}",
                              f"convert the {what} column to strings")
    if not allow_empty and not value.strip():
        raise SuperalignError(f"row {i}: {what} is empty", f"drop rows with an empty {what}")
    return value


def validate_sft(rows: list[dict]) -> list[dict]:
    if not rows:
        raise SuperalignError("the SFT dataset is empty", "pass a file with prompt/completion rows")
    return [{"prompt": _check_text(r.get("prompt"), "prompt", i, allow_empty=True),
             "completion": _check_text(r.get("completion"), "completion", i)} for i, r in enumerate(rows)]


def validate_preferences(rows: list[dict]) -> list[dict]:
    if not rows:
        raise SuperalignError("the preference dataset is empty", "pass a file with prompt/chosen/rejected rows")
    out = []
    for i, r in enumerate(rows):
        row = {"prompt": _check_text(r.get("prompt"), "prompt", i, allow_empty=True),
               "chosen": _check_text(r.get("chosen"), "chosen completion", i),
               "rejected": _check_text(r.get("rejected"), "rejected completion", i)}
        if r.get("margin") is not None:
            m = float(r["margin"])
            if math.isnan(m):
                raise SuperalignError(f"row {i}: margin is NaN", "fill or drop the margin column")
            row["margin"] = m
        out.append(row)
    return out


def validate_rankings(rows: list[dict]) -> list[dict]:
    if not rows:
        raise SuperalignError("the ranking dataset is empty", "pass rows with prompt and completions (best first)")
    out = []
    for i, r in enumerate(rows):
        comps = r.get("completions")
        if not isinstance(comps, (list, tuple)) or len(comps) < 2:
            raise SuperalignError(f"row {i}: completions must be a list of ≥2 texts ranked best first",
                                  "give each prompt at least two ranked completions")
        out.append({"prompt": _check_text(r.get("prompt"), "prompt", i, allow_empty=True),
                    "completions": [_check_text(c, f"completion {j}", i) for j, c in enumerate(comps)]})
    return out


def preferences_to_rankings(rows: list[dict]) -> list[dict]:
    """A preference pair is a K=2 ranking."""
    return [{"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"]], **({"margin": r["margin"]}
            if "margin" in r else {})} for r in rows]


def _columns(df: pd.DataFrame, cols: dict[str, str], source: str) -> pd.DataFrame:
    missing = [c for c in cols.values() if c not in df.columns]
    if missing:
        raise SuperalignError(f"{source}: column(s) {', '.join(map(repr, missing))} not found "
                              f"(columns: {', '.join(map(str, df.columns))})",
                              "pass --prompt-col/--chosen-col/--rejected-col naming the right columns")
    return df.rename(columns={v: k for k, v in cols.items()})


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Anthropic/hh-rlhf rows are two full transcripts sharing a prefix up to the last ``Assistant:``;
    return (prompt ending with ``Assistant:``, chosen response, rejected response)."""
    key = "\n\nAssistant:"
    cut = chosen.rfind(key)
    if cut < 0:
        raise SuperalignError("an hh-rlhf transcript has no 'Assistant:' turn", "check the dataset format")
    prompt = chosen[:cut + len(key)]
    if not rejected.startswith(prompt):  # rare: transcripts differ earlier; fall back to the longest common prefix
        prompt = os.path.commonprefix([chosen, rejected])
        prompt = prompt[:prompt.rfind(key) + len(key)] if key in prompt else prompt
    return prompt, chosen[len(prompt):], rejected[len(prompt):]


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    """The TL;DR prompt format of Stiennon et al. 2020."""
    return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def _tldr_rows(df: pd.DataFrame) -> list[dict]:
    rows = []
    for r in df.itertuples(index=False):
        a, b = r.summary_a, r.summary_b
        c = int(r.choice)
        rows.append({"prompt": tldr_prompt(r.subreddit, r.title, r.post), "chosen": (a, b)[c], "rejected": (b, a)[c]})
    return rows


def load_preferences(source: str, data: str | None = None, prompt_col: str = "prompt", chosen_col: str = "chosen",
                     rejected_col: str = "rejected", split: str = "train", limit: int | None = None) -> list[dict]:
    """Preference pairs from a named source (see the module docstring), validated."""
    if source == "anthropic_hh":
        df = read_table(resolve_data_dir(data, "anthropic_hh", "--data-dir") / "anthropic_hh"
                        / "harmless_base_test.jsonl")
        cols = {"prompt": "prompt", "chosen": "chosen_response", "rejected": "rejected_response"}
        _columns(df, cols, source)
        rows = [{k: r[v] for k, v in cols.items()} for r in df[list(cols.values())].to_dict("records")]
    elif source == "tldr":
        df = read_table(resolve_data_dir(data, "tldr", "--data-dir") / "summarize_from_feedback"
                        / "comparisons_tldr.jsonl")
        _columns(df, {k: k for k in ("subreddit", "title", "post", "summary_a", "summary_b", "choice")}, source)
        rows = _tldr_rows(df)
    elif source.startswith("hf:"):
        rows = _hf_preferences(source[3:], split, prompt_col, chosen_col, rejected_col)
    else:
        path = source[5:] if source.startswith("file:") else source
        df = read_table(path)
        cols = {"prompt": prompt_col, "chosen": chosen_col, "rejected": rejected_col}
        if "margin" in df.columns:
            cols["margin"] = "margin"
        rows = _columns(df, cols, path)[list(cols)].to_dict("records")
    if not (source.startswith("file:") or os.path.exists(source)):
        rows = _drop_empty(rows, source)  # published datasets have a few empty responses; user files must be clean
    if limit is not None:
        rows = rows[:limit]
    return validate_preferences(rows)


def _drop_empty(rows: list[dict], source: str) -> list[dict]:
    ok = [r for r in rows if all(isinstance(r.get(k), str) and r[k].strip() for k in ("chosen", "rejected"))
          and isinstance(r.get("prompt"), str)]
    if len(ok) < len(rows):
        import sys
        print(f"superalign: {source}: dropped {len(rows) - len(ok)} of {len(rows)} pairs with an empty or missing "
              "completion", file=sys.stderr)
    return ok


def _hf_preferences(ref: str, split: str, prompt_col: str, chosen_col: str, rejected_col: str) -> list[dict]:
    name, _, config = ref.partition(":")
    try:
        import datasets
        ds = datasets.load_dataset(name,
                                   config or ("comparisons" if name == "openai/summarize_from_feedback" else None),
                                   split=split)
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = ("HF_HUB_OFFLINE=1 is set and the dataset is not in the local cache: download it first or pass a "
                "local file") if offline else "check the dataset name, --split and your network"
        raise SuperalignError(f"could not load Hugging Face dataset {name!r}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}", hint) from None
    df = ds.to_pandas()
    if name == "Anthropic/hh-rlhf" and "prompt" not in df.columns:
        return [dict(zip(("prompt", "chosen", "rejected"), split_transcripts(c, r)))
                for c, r in zip(df["chosen"], df["rejected"])]
    if name == "openai/summarize_from_feedback":
        return [{"prompt": tldr_prompt(i.get("subreddit") or "", i.get("title") or "", i.get("post") or ""),
                 "chosen": s[int(c)]["text"], "rejected": s[1 - int(c)]["text"]}
                for i, s, c in zip(df["info"], df["summaries"], df["choice"])]
    df = _columns(df, {"prompt": prompt_col, "chosen": chosen_col, "rejected": rejected_col}, f"hf:{ref}")
    return df[["prompt", "chosen", "rejected"]].to_dict("records")


def load_sft(source: str, prompt_col: str = "prompt", completion_col: str = "completion",
             limit: int | None = None) -> list[dict]:
    path = source[5:] if source.startswith("file:") else source
    df = _columns(read_table(path), {"prompt": prompt_col, "completion": completion_col}, path)
    rows = df[["prompt", "completion"]].to_dict("records")
    return validate_sft(rows[:limit] if limit else rows)


def load_prompts(source: str, prompt_col: str = "prompt", limit: int | None = None) -> list[str]:
    path = source[5:] if source.startswith("file:") else source
    df = _columns(read_table(path), {"prompt": prompt_col}, path)
    rows = [_check_text(p, "prompt", i) for i, p in enumerate(df["prompt"])]
    if not rows:
        raise SuperalignError(f"{path} has no prompts", "pass a file with a prompt column")
    return rows[:limit] if limit else rows
