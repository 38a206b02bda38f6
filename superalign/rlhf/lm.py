"""RLHF token sequences: prompt + completion + EOS fitted to the reward model's context, and pretraining documents
(PPO-ptx) cut into chunks that the LM loss covers token by token.

The general causal-LM utilities (loading by name, padding, sampling with a KV cache, token log-probs, saving) are
the shared model layer's, :mod:`superalign.models.lm`; index batches per epoch are :mod:`superalign.train.batches`.

A sequence is ``(token ids, prompt length)``: :func:`superalign.models.lm.completion_batch` turns a list of them into
a right-padded batch whose loss mask covers the tokens after the prompt, and
:func:`superalign.models.lm.completion_logps` scores token t from the logits at t − 1. A token at position 0 therefore
can never be scored: a pretraining document has no prompt, so every chunk starts with the tokenizer's BOS (EOS for
GPT-2-style tokenizers, which have no separate BOS) as a one-token "prompt", and the first real token is predicted
from it — the loss then covers every token of the document and its closing EOS.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SuperalignError
from ..models.lm import encode_prompts
from .reward import encode_completion

DOCUMENT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet")


def encode_pairs(tok, prompts: list[str], completions: list[str], max_len: int) -> list[tuple[list[int], int]]:
    """(prompt + completion + EOS ids, prompt length) per row, with the context check of the reward model."""
    out = []
    for p, c in zip(encode_prompts(tok, prompts), completions):
        out.append((encode_completion(tok, p, c, max_len), len(p)))
    return out


def document_start(tok) -> list[int]:
    """The context a document's first token is predicted from: the tokenizer's BOS (EOS where it has none)."""
    return encode_prompts(tok, [""])[0]


def encode_documents(tok, docs: list[str], max_len: int) -> list[tuple[list[int], int]]:
    """Pretraining documents as (ids, prompt length) sequences for the LM loss on every token: each document's
    tokens plus EOS (the document boundary the model learns to emit) are cut into consecutive chunks of at most
    ``max_len − 1`` tokens, each behind the one-token start context of :func:`document_start` (prompt length 1)."""
    start = document_start(tok)
    room = max_len - len(start)
    if room < 1:
        raise SuperalignError(f"a context of {max_len} tokens leaves no room for pretraining text",
                              "raise the context (--max-prompt-len / --response-len)")
    out = []
    for d in docs:
        ids = tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out += [(start + ids[i:i + room], len(start)) for i in range(0, len(ids), room)]
    return out


def ptx_sequences(tok, rows: list[dict], max_len: int) -> list[tuple[list[int], int]]:
    """The PPO-ptx sequences of ``rows``: ``{"text"}`` rows are pretraining documents (loss on every token,
    :func:`encode_documents`), ``{"prompt", "completion"}`` rows demonstrations (loss on the completion)."""
    docs = [r["text"] for r in rows if "text" in r]
    demos = [r for r in rows if "text" not in r]
    out = encode_documents(tok, docs, max_len) if docs else []
    if demos:
        out += encode_pairs(tok, [r["prompt"] for r in demos], [r["completion"] for r in demos], max_len)
    return out


def load_documents(source: str) -> list[dict]:
    """``{"text"}`` rows of a pretraining-text file: a ``.txt`` file holds documents separated by blank lines (a
    document may span several lines; its line breaks are kept); ``.jsonl/.json/.csv/.tsv/.parquet`` files have a
    ``text`` column, one document per row. Blank documents are skipped; a file without any is an error."""
    import math

    from ..data.files import read_table
    from ..data.fingerprint import record_source

    path = Path(source[5:] if source.startswith("file:") else source).expanduser()
    if not path.exists():
        raise SuperalignError(f"pretraining text {path} does not exist", "check the --ptx-data path")
    if path.is_dir() or path.suffix not in DOCUMENT_SUFFIXES:
        raise SuperalignError(f"--ptx-data {path} is not a .txt/.jsonl/.json/.csv/.tsv/.parquet file",
                              "pass a text file (documents separated by blank lines) or a table with a text column")
    if path.suffix == ".txt":
        record_source(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SuperalignError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})",
                                  "convert the file to UTF-8") from None
        docs, block = [], []
        for line in text.splitlines() + [""]:
            if line.strip():
                block.append(line)
            elif block:
                docs.append("\n".join(block))
                block = []
    else:
        if path.stat().st_size == 0:
            raise SuperalignError(f"pretraining text {path} is empty", "pass a file with at least one document")
        df = read_table(path)
        if "text" not in df.columns:
            raise SuperalignError(f"{path}: column 'text' not found (columns: {', '.join(map(str, df.columns))})",
                                  "name the column holding the documents 'text'")
        docs = []
        for i, v in enumerate(df["text"]):
            if v is None or (isinstance(v, float) and math.isnan(v)) or not isinstance(v, str):
                raise SuperalignError(f"{path}: row {i}: text is missing or not a string ({v!r})",
                                      "drop or fill that row")
            if v.strip():
                docs.append(v)
    if not docs:
        raise SuperalignError(f"pretraining text {path} has no documents", "pass a file with at least one document")
    return [{"text": d} for d in docs]
