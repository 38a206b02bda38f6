"""What the probes read from a causal LM: hidden states of both sides of every contrast pair, and the model's own
zero-shot answer.

- :func:`pair_hidden_states`: hidden states of every layer (index 0 = embeddings) at the last token of each filled
  template (or the mean over its tokens), for ``neg`` and ``pos`` → two arrays [n_layers + 1, N, d] (float32).
- :func:`zero_shot`: P(true answer) from the model's next-token log-probs: log p(answer tokens | prompt) summed over
  the answer's tokens for each of the two answers, then a softmax over the two (the baseline CCS is compared with).
"""

from __future__ import annotations

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


@torch.no_grad()
def zero_shot(model, tok, pairs: ContrastPairs, batch_size: int = 16) -> np.ndarray:
    """P(the template's true answer) per pair from the model's own log-probs of each answer after the prompt."""
    device = next(model.parameters()).device
    seqs = []
    for prompt, text in ((p, t) for p, pair in zip(pairs.prompts, zip(pairs.neg, pairs.pos)) for t in pair):
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        full = tok(text, add_special_tokens=False)["input_ids"]
        if full[:len(p_ids)] != p_ids or len(full) == len(p_ids):
            # the answer merged with the prompt's last token: score the answer tokens after the longest common prefix
            k = next((i for i, (a, b) in enumerate(zip(full, p_ids)) if a != b), min(len(full), len(p_ids)))
            p_ids = full[:max(k, 1) if len(full) > 1 else 0]
        seqs.append((full, max(len(p_ids), 1)))
    lps = []
    for s in range(0, len(seqs), batch_size):
        ids, mask, lmask = (t.to(device) for t in completion_batch(seqs[s:s + batch_size], tok.pad_token_id))
        lp, _ = completion_logps(model, ids, mask, lmask)
        lps.append(lp.float().cpu())
    lp = torch.cat(lps).view(-1, 2)  # [N, (false, true)]
    return torch.softmax(lp, dim=-1)[:, 1].numpy()
