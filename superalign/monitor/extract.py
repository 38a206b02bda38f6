"""What the probes read from a causal LM: hidden states of both sides of every contrast pair, and the model's own
zero-shot answer.

- :func:`pair_hidden_states`: hidden states of every layer (index 0 = embeddings) at the last token of each filled
  template (or the mean over its tokens), for ``neg`` and ``pos`` → two arrays [n_layers + 1, N, d] (float32).
- :func:`zero_shot`: P(true answer) from the model's next-token log-probs: log p(answer tokens | prompt) summed over
  the answer's tokens for each of the two answers, then a softmax over the two (the baseline CCS is compared with).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from ..errors import SuperalignError
from ..models.lm import completion_batch, completion_logps, load_lm, right_pad
from .pairs import ContrastPairs


@torch.no_grad()
def hidden_states(model, tok, texts: list[str], pool: str = "last", batch_size: int = 16) -> np.ndarray:
    """[n_layers + 1, len(texts), d] float32: every layer's hidden state at the last real token (``pool='last'``) or
    averaged over the real tokens (``'mean'``) of each text; batches are right-padded and sorted by length."""
    if pool not in ("last", "mean"):
        raise SuperalignError(f"unknown pooling {pool!r}", "use last or mean")
    if not texts:
        raise SuperalignError("no texts to encode", "check the contrast-pair dataset")
    from ..runs.ledger import count_forward

    device = next(model.parameters()).device
    ids_all = [tok(t, add_special_tokens=False)["input_ids"] or [tok.pad_token_id] for t in texts]
    order = np.argsort([len(x) for x in ids_all], kind="stable")
    out = None
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = right_pad([ids_all[i] for i in idx], tok.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        count_forward(model, int(mask.sum()), "hidden-states")
        h = torch.stack(hs).float()  # [L+1, B, T, d]
        if pool == "last":
            last = mask.sum(1) - 1
            pooled = h[:, torch.arange(len(idx), device=device), last]
        else:
            m = mask[None, :, :, None].float()
            pooled = (h * m).sum(2) / m.sum(2)
        if out is None:
            out = np.zeros((h.shape[0], len(texts), h.shape[-1]), dtype=np.float32)
        out[:, idx] = pooled.cpu().numpy()
    return out


def check_layer(layer: int, n_layers: int) -> None:
    """A layer index into [0, n_layers] (0 = embeddings; negatives count from the last)."""
    if not -n_layers - 1 <= layer <= n_layers:
        raise SuperalignError(f"layer {layer} is out of range: the model has {n_layers} layers (0 = embeddings … "
                              f"{n_layers})", f"pass a layer between 0 and {n_layers}")


def pair_hidden_states(model_name: str, pairs: ContrastPairs, pool: str = "last", device=None, dtype=None,
                       home=None, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(hidden states of the false-answer texts, of the true-answer texts), each [n_layers + 1, N, d]."""
    tok, model = load_lm(model_name, home=home, device=device, dtype=dtype, require_eos=False)
    tok.padding_side = "right"
    return (hidden_states(model, tok, pairs.neg, pool, batch_size),
            hidden_states(model, tok, pairs.pos, pool, batch_size))


def _answer_split(tok, prompt: str, text: str) -> tuple[list[int], int]:
    """(token ids of the filled text, how many of them are the prompt): the answer is scored on the rest."""
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(text, add_special_tokens=False)["input_ids"]
    if full[:len(p_ids)] != p_ids or len(full) == len(p_ids):
        # the answer merged with the prompt's last token: score the answer tokens after the longest common prefix
        k = next((i for i, (a, b) in enumerate(zip(full, p_ids)) if a != b), min(len(full), len(p_ids)))
        p_ids = full[:max(k, 1) if len(full) > 1 else 0]
    return full, max(len(p_ids), 1)


def _scored_texts(pairs: ContrastPairs) -> list[tuple[str, str, str]]:
    """(prompt, text up to the end of the answer, whole text) of every side, pair by pair (neg, then pos)."""
    scored = pairs.scored or (pairs.neg, pairs.pos)
    return [(p, sc, t) for p, sn, sp, n, q in zip(pairs.prompts, *scored, pairs.neg, pairs.pos)
            for sc, t in ((sn, n), (sp, q))]


@torch.no_grad()
def zero_shot(model, tok, pairs: ContrastPairs, batch_size: int = 16) -> np.ndarray:
    """P(the template's true answer) per pair from the model's own log-probs of each answer after the prompt."""
    device = next(model.parameters()).device
    seqs = [_answer_split(tok, p, sc) for p, sc, _ in _scored_texts(pairs)]
    lps = []
    for s in range(0, len(seqs), batch_size):
        ids, mask, lmask = (t.to(device) for t in completion_batch(seqs[s:s + batch_size], tok.pad_token_id))
        lp, _ = completion_logps(model, ids, mask, lmask)
        lps.append(lp.float().cpu())
    lp = torch.cat(lps).view(-1, 2)  # [N, (false, true)]
    return torch.softmax(lp, dim=-1)[:, 1].numpy()


@torch.no_grad()
def pair_features(model, tok, pairs: ContrastPairs, pool: str = "last", batch_size: int = 16,
                  max_batch_tokens: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hidden states of the false-answer texts, of the true-answer texts, each [n_layers + 1, N, d]; the zero-shot
    P(true) [N]) from ONE forward pass per text: the same numbers as :func:`hidden_states` on ``neg`` and ``pos`` and
    :func:`zero_shot`, at half the model cost. The answer's log-probs are read only at its own positions (not a log-
    softmax over every position), and batches shrink for long texts (``max_batch_tokens``), e.g. under a few-shot
    prefix."""
    if pool not in ("last", "mean"):
        raise SuperalignError(f"unknown pooling {pool!r}", "use last or mean")
    if len(pairs) == 0:
        raise SuperalignError("no contrast pairs to encode", "check the contrast-pair dataset")
    from ..runs.ledger import count_forward

    device = next(model.parameters()).device
    seqs = []
    for prompt, scored, text in _scored_texts(pairs):
        ids, p_len = _answer_split(tok, prompt, scored)
        end = len(ids)  # an appended distractor is read by the probes, not scored as part of the answer
        seqs.append((tok(text, add_special_tokens=False)["input_ids"] if text != scored else ids, p_len, end))
    order = np.argsort([len(s[0]) for s in seqs], kind="stable")
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    out, logp = None, np.zeros(len(seqs))
    s = 0
    while s < len(order):
        width = len(seqs[order[min(s + batch_size, len(order)) - 1]][0])  # sorted: the batch's longest text
        idx = order[s:s + max(1, min(batch_size, max_batch_tokens // max(width, 1)))]
        s += len(idx)
        ids, mask = right_pad([seqs[i][0] or [tok.pad_token_id] for i in idx], tok.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        # the LM head (~20% of a small model's FLOPs) only at the positions that score an answer, where the model
        # takes the positions to keep (transformers' logits_to_keep); every position otherwise
        need = sorted({t for i in idx for t in range(seqs[i][1] - 1, seqs[i][2] - 1)})
        keep = {"logits_to_keep": torch.tensor(need or [0], device=device)} if keeps_logits else {}
        res = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **keep)
        col = {t: k for k, t in enumerate(need or [0])} if keeps_logits else None
        count_forward(model, int(mask.sum()), "hidden-states")
        h = torch.stack(res.hidden_states).float()  # [L+1, B, T, d]
        if pool == "last":
            pooled = h[:, torch.arange(len(idx), device=device), mask.sum(1) - 1]
        else:
            m = mask[None, :, :, None].float()
            pooled = (h * m).sum(2) / m.sum(2)
        if out is None:
            out = np.zeros((h.shape[0], len(seqs), h.shape[-1]), dtype=np.float32)
        out[:, idx] = pooled.cpu().numpy()
        for j, i in enumerate(idx):
            _, p_len, end = seqs[i]
            pos = torch.arange(p_len - 1, end - 1, device=device)  # logits at t predict token t + 1
            cols = pos if col is None else torch.tensor([col[t] for t in pos.tolist()], device=device, dtype=torch.long)
            lp = torch.log_softmax(res.logits[j, cols].float(), -1)
            logp[i] = float(lp.gather(1, ids[j, pos + 1, None]).sum())
    lp = torch.as_tensor(logp).view(-1, 2)  # [N, (false, true)]
    return out[:, 0::2], out[:, 1::2], torch.softmax(lp, dim=-1)[:, 1].numpy()
