"""Downstream loss of a causal LM with an SAE spliced into its residual stream ("CE / KL loss recovered").

The LM runs over texts three times per batch, with the hook point's residual stream

- unchanged (clean),
- replaced by the SAE's reconstruction x̂ (spliced), and
- replaced by zeros (zero-ablation, the "nothing recovered" baseline),

and we report the next-token cross-entropy of each, the per-token KL(clean ‖ spliced) and KL(clean ‖ zero), and

    ce_loss_recovered = (ce_zero − ce_sae) / (ce_zero − ce_clean)        1: as good as the model, 0: as bad as zeros
    kl_recovered      = (kl_zero − kl_sae) / kl_zero                     (the clean run has KL 0)

Where the splice happens: ``layers.i`` is ``output_hidden_states[i + 1]`` — the output of decoder block i, except
that for the last block Hugging Face models return the *final-norm* output (GPT-2's ``ln_f``, Llama's ``norm``),
which is the input of the LM head. So ``layers.i`` replaces block i's output (a forward hook), the last layer
replaces the LM head's input (a forward pre-hook), and ``embeddings`` replaces block 0's input (a forward pre-hook).
Blocks are found generically (GPT-2 ``transformer.h``, Llama/SmolLM ``model.layers``, GPT-NeoX ``gpt_neox.layers``,
else the model's one ModuleList with one entry per layer), and the first batch checks that the hooked tensor *is*
``hidden_states[i + 1]`` — the tensor the SAE was trained on — so a model laid out differently fails loudly
instead of giving a wrong number.

Positions: texts are right-padded (so padding never changes a real token's state under causal attention); only
non-padding positions are replaced, and a prediction is scored when both its input and its target are real tokens.
The first position *is* replaced by default — as SAELens does by default, and consistent with our activation cache,
which stores position 0, so the SAE was trained on it. Some models put a huge-norm "attention sink" there that SAEs
reconstruct badly; ``skip_first=True`` keeps position 0 clean (all predictions are still scored), so the two numbers
show how much of the loss comes from that one position.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import SuperalignError
from ..models.registry import is_causal_lm
from ..runs.ledger import add_flops
from .activations import lm_flops, parse_hook
from .train_sae import sae_eval_flops_per_token

# where the decoder blocks live, by architecture family (checked first; then a generic search)
BLOCK_PATHS = ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers", "transformer.blocks",
               "transformer.layers")


class LossRecovered(NamedTuple):
    ce_clean: float
    """next-token cross-entropy of the unchanged model (nats per token)"""
    ce_sae: float
    """cross-entropy with the SAE reconstruction spliced in"""
    ce_zero: float
    """cross-entropy with the hook point zero-ablated"""
    kl_sae: float
    """mean per-token KL(clean ‖ spliced)"""
    kl_zero: float
    """mean per-token KL(clean ‖ zero-ablated)"""
    ce_loss_recovered: float
    """(ce_zero − ce_sae) / (ce_zero − ce_clean); NaN when zero-ablation does not change the loss"""
    kl_recovered: float
    """(kl_zero − kl_sae) / kl_zero; NaN when kl_zero is 0"""
    tokens: int
    """scored next-token predictions"""
    texts: int
    """texts evaluated"""

    def metrics(self) -> dict:
        """Flat metrics for a run record (counts prefixed, so they do not clash with the SAE's own)."""
        return {k: v for k, v in self._asdict().items() if k not in ("tokens", "texts")} | \
            {"loss_recovered_tokens": self.tokens, "loss_recovered_texts": self.texts}


def find_blocks(model) -> torch.nn.ModuleList:
    """The decoder blocks, in order."""
    for path in BLOCK_PATHS:
        m = model
        for part in path.split("."):
            m = getattr(m, part, None)
        if isinstance(m, torch.nn.ModuleList) and len(m) > 0:
            return m
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if len(lists) != 1:
        raise SuperalignError(f"cannot find the decoder blocks of {type(model).__name__} (looked for "
                              f"{', '.join(BLOCK_PATHS)} and one ModuleList of {n} layers)",
                              "use a GPT-2, Llama-style or GPT-NeoX causal LM")
    return lists[0]


class Splice:
    """Replaces the residual stream at the positions in ``mask`` [B, T] by ``fn`` of it (rows [n, d] → [n, d]);
    with ``fn`` None it passes the tensor through. ``seen`` keeps the last tensor that reached the hook."""

    def __init__(self):
        self.fn: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.mask: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        self.seen = h
        if self.fn is None:
            return h
        h = h.clone()
        h[self.mask] = self.fn(h[self.mask]).to(h.dtype)
        return h


def attach(model, hook: str, splice: Splice) -> list:
    """Register ``splice`` at the hook point; returns the handles (call ``.remove()`` on each)."""
    blocks = find_blocks(model)
    layer = parse_hook(hook, len(blocks))

    def pre(module, args, kwargs):  # block 0's input, passed positionally or as hidden_states=
        if args:
            return (splice(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": splice(kwargs["hidden_states"])}

    def post(module, args, out):  # a block returns its hidden states alone or first in a tuple
        return (splice(out[0]), *out[1:]) if isinstance(out, tuple) else splice(out)

    if layer == 0:
        return [blocks[0].register_forward_pre_hook(pre, with_kwargs=True)]
    if layer == len(blocks):  # last layer: hidden_states[-1] is the final norm's output = the LM head's input
        return [model.get_output_embeddings().register_forward_pre_hook(pre, with_kwargs=True)]
    return [blocks[layer - 1].register_forward_hook(post)]


def _check_causal(model) -> None:
    if not is_causal_lm(model):
        raise SuperalignError(f"{type(model).__name__} is not a causal language model (no next-token head), so it "
                              "has no LM loss to recover", "report FVU for encoder SAEs, or cache a causal LM "
                              "(superalign interp cache --model hf:<id|path>)")


@torch.no_grad()
def spliced_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, hook: str,
                   fn: Callable[[torch.Tensor], torch.Tensor] | None, positions: torch.Tensor | None = None):
    """Logits of ``model`` with the hook point's residual stream at ``positions`` (default: the non-padding ones)
    replaced by ``fn`` of it (None: unchanged)."""
    _check_causal(model)
    splice = Splice()
    splice.fn, splice.mask = fn, (attention_mask.bool() if positions is None else positions)
    handles = attach(model, hook, splice)
    try:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        for h in handles:
            h.remove()


def _reconstruct(sae) -> Callable[[torch.Tensor], torch.Tensor]:
    """x ↦ x̂ on the SAE's device and dtype; an SAE's forward returns ForwardOutput (x_hat), a plain module a tensor."""
    p = next(iter(sae.parameters()), None) if isinstance(sae, torch.nn.Module) else None

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = sae(x if p is None else x.to(p.device, p.dtype))
        out = out.x_hat if hasattr(out, "x_hat") else out
        return out.to(x.device)
    return fn


@torch.no_grad()
def loss_recovered(model, tok, sae, texts: list[str], hook: str, max_length: int = 128, batch_size: int = 8,
                   skip_first: bool = False, progress: bool = False) -> LossRecovered:
    """CE and KL of ``model`` over ``texts`` with ``sae``'s reconstruction, and zeros, spliced in at ``hook``."""
    from tqdm.auto import tqdm

    _check_causal(model)
    blocks = find_blocks(model)
    layer = parse_hook(hook, len(blocks))
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise SuperalignError("no texts to measure loss recovered on", "pass at least one non-empty text")
    was_training = [(m, m.training) for m in (model, sae) if isinstance(m, torch.nn.Module)]
    for m, _ in was_training:
        m.eval()
    device = next(model.parameters()).device
    side, tok.padding_side = tok.padding_side, "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    splice = Splice()
    handles = attach(model, hook, splice)
    recon = _reconstruct(sae)
    sae_flops = sae_eval_flops_per_token(sae) if hasattr(getattr(sae, "cfg", None), "n_latents") else 0.0
    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0, "kl_sae": 0.0, "kl_zero": 0.0}
    n_tok = 0
    try:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # length-sorted batches: little padding
        for b in tqdm(range(0, len(order), batch_size), desc=f"loss recovered {hook}", disable=not progress):
            enc = tok([texts[i] for i in order[b:b + batch_size]], return_tensors="pt", padding=True,
                      truncation=True, max_length=max_length)
            ids, att = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            mask = att.bool()
            splice.mask = mask.clone()
            if skip_first:
                splice.mask[:, 0] = False
            scored = mask[:, 1:] & mask[:, :-1]  # logits at t predict token t+1: both must be real tokens
            targets = ids[:, 1:][scored]
            n_tok += int(scored.sum())

            def logprobs(fn, check: bool = False, *, ids=ids, att=att, mask=mask, scored=scored) -> torch.Tensor:
                splice.fn = fn
                out = model(input_ids=ids, attention_mask=att, output_hidden_states=check)
                if check:
                    _check_site(out.hidden_states, layer, splice.seen, mask, hook)
                return F.log_softmax(out.logits[:, :-1][scored].float(), dim=-1)

            # three forward passes (clean, spliced, zero-ablated) and the SAE on the spliced positions
            n_spliced = int(enc["attention_mask"].sum()) - (len(ids) if skip_first else 0)  # host copy: no sync
            add_flops(3 * lm_flops(model, ids.numel()) + sae_flops * n_spliced, tokens=3 * ids.numel(),
                      stage="loss-recovered")
            lp_clean = logprobs(None, check=(b == 0))
            p_clean = lp_clean.exp()
            sums["ce_clean"] += float(-lp_clean.gather(1, targets[:, None]).sum())
            for name, fn in (("sae", recon), ("zero", torch.zeros_like)):
                lp = logprobs(fn)
                sums[f"ce_{name}"] += float(-lp.gather(1, targets[:, None]).sum())
                sums[f"kl_{name}"] += float((p_clean * (lp_clean - lp)).sum())
    finally:
        for h in handles:
            h.remove()
        tok.padding_side = side
        for m, t in was_training:
            m.train(t)
    if n_tok == 0:
        raise SuperalignError("no next-token predictions to score (every text is a single token)",
                              "pass longer texts")
    m = {k: v / n_tok for k, v in sums.items()}

    def ratio(num: float, den: float) -> float:
        return num / den + 0.0 if abs(den) > 1e-12 else math.nan  # + 0.0: no "-0.0"
    return LossRecovered(m["ce_clean"], m["ce_sae"], m["ce_zero"], m["kl_sae"], m["kl_zero"],
                         ratio(m["ce_zero"] - m["ce_sae"], m["ce_zero"] - m["ce_clean"]),
                         ratio(m["kl_zero"] - m["kl_sae"], m["kl_zero"]), n_tok, len(texts))


def _check_site(hidden_states, layer: int, seen: torch.Tensor | None, mask: torch.Tensor, hook: str) -> None:
    """The hooked tensor must be hidden_states[layer] (what the activation cache stored and the SAE learned)."""
    ref = hidden_states[layer][mask]
    if seen is None or seen.shape[:2] != mask.shape or \
            not torch.allclose(seen[mask].float(), ref.float(), atol=1e-4 * (1 + float(ref.abs().max()))):
        raise SuperalignError(f"the splice point for {hook} is not hidden_states[{layer}] in this model, so the "
                              "SAE would be spliced in at the wrong place",
                              "use a GPT-2, Llama-style or GPT-NeoX causal LM (or report FVU only)")
