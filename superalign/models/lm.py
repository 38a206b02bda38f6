"""Causal LMs for every pillar: loading by name, padding, batched sampling with a KV cache, per-token log-probs.

Model names are those of :mod:`superalign.models.registry` (``testbed`` once the RLHF pillar is imported,
``smollm2``, ``hf:<hub id or path>[@k]``, a local folder written by an earlier stage). Loaders take ``device``
and ``dtype`` (a torch dtype or 'fp32'/'bf16'/'fp16'), keep ``trust_remote_code`` off unless passed, and load
safetensors weights where the checkpoint has them.

Padding convention (as in "the N+ implementation details of RLHF with PPO"): queries for generation are
left-padded so every response starts at the same column; sequences that are only scored are right-padded (a
real token then never sees padding under causal attention). Position ids are always derived from the attention
mask, so padding never shifts a token's position.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import SuperalignError
from .placement import resolve_device, resolve_dtype
from .registry import ModelSpec, _hf_call, is_causal_config, load_config, resolve_model, truncate_config


def _spec(name: str | ModelSpec, home) -> ModelSpec:
    spec = name if isinstance(name, ModelSpec) else resolve_model(name, home)
    if not spec.is_transformer:
        raise SuperalignError(f"model {spec.name!r} is not a transformer", "use a causal LM (superalign models)")
    return spec


def resolve_lm_path(name: str, home=None) -> tuple[str, dict]:
    """(path or hub id, extra ``from_pretrained`` kwargs) of a model name."""
    spec = _spec(name, home)
    return spec.path, spec.hf_kwargs()


def load_tokenizer(name: str | ModelSpec, home=None, trust_remote_code: bool = False, padding_side: str = "left",
                   require_eos: bool = True):
    """The model's tokenizer, padded on ``padding_side`` (left: ready for generation); pad = EOS (or UNK) where it
    has none. ``require_eos``: generation and completion scoring need an EOS token, so its absence is an error."""
    from transformers import AutoTokenizer

    spec = _spec(name, home)
    tok = _hf_call(spec, AutoTokenizer.from_pretrained, trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if require_eos and tok.eos_token is None:
        raise SuperalignError(f"model {spec.name!r} has no EOS token", "use a tokenizer with an eos_token")
    tok.padding_side = padding_side
    return tok


def load_lm(name: str | ModelSpec, home=None, trust_remote_code: bool = False, dtype: torch.dtype | str | None = None,
            device: torch.device | str | None = None, require_eos: bool = True):
    """(tokenizer, causal LM with its LM head) in eval mode (dropout off: log-probs must be the same in rollout and
    training; gradients still flow), truncated to the first k blocks for ``hf:<id>@k`` (so its hidden states are
    those an activation cache of the same name stored). A checkpoint that is not a causal LM is an error."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = _spec(name, home)
    dt, dev = resolve_dtype(dtype), resolve_device(device)  # also a runtime's torch.device ('cpu:0' under Accelerate)
    cfg = load_config(spec, trust_remote_code)
    if not is_causal_config(cfg):
        raise SuperalignError(f"model {spec.name!r} ({', '.join(getattr(cfg, 'architectures', None) or ['?'])}) is "
                              "not a causal LM (no next-token head)",
                              "use a causal LM: smollm2, testbed or hf:<id|path> of a GPT-2/Llama-style model")
    truncate_config(spec, cfg)
    tok = load_tokenizer(spec, home, trust_remote_code, require_eos=require_eos)
    model = _hf_call(spec, AutoModelForCausalLM.from_pretrained, trust_remote_code, config=cfg, dtype=dt)
    model.eval()  # eval() = dropout off; we still take gradients
    return tok, fuse_activations(model).to(dev)


def fuse_activations(model: torch.nn.Module) -> torch.nn.Module:
    """Swap GPT-2's Python-level tanh-GELU (``NewGELUActivation``: 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), five
    elementwise kernels forward and more backward) for torch's fused ``gelu(approximate="tanh")`` — the same formula
    in one kernel. On the testbed model this removes ~25% of training time; outputs agree to float rounding."""
    from transformers.activations import NewGELUActivation

    for _, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is NewGELUActivation:
                setattr(mod, child_name, torch.nn.GELU(approximate="tanh"))
    return model


def save_lm(model, tok, out_dir: str | Path, meta: dict | None = None) -> Path:
    """save_pretrained (safetensors) into a temporary folder, renamed into place when complete."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if meta is not None:
        (tmp / "superalign.json").write_text(json.dumps(meta, indent=2, default=str))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


# ----------------------------------------------------------------------------- tokenizing and padding


def encode_prompts(tok, prompts: list[str], max_prompt_len: int | None = None) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's BOS where it has one (GPT-2 style models get EOS as BOS)."""
    out = []
    for p in prompts:
        ids = tok(p, add_special_tokens=True)["input_ids"]
        if not ids or (tok.bos_token_id is None and ids[0] != tok.eos_token_id):
            ids = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id] + ids
        if max_prompt_len is not None and len(ids) > max_prompt_len:
            raise SuperalignError(f"prompt of {len(ids)} tokens is longer than the limit {max_prompt_len}: "
                                  f"{p[:60]!r}", "raise --max-prompt-len or drop long prompts")
        out.append(ids)
    return out


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) with padding on the left: the layout for generation."""
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, L - len(s):] = torch.tensor(s)
            mask[i, L - len(s):] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) with padding on the right: the layout for scoring."""
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
    return ids, mask


def completion_batch(seqs: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention mask, loss mask) for (token ids, prompt length) pairs; the loss mask marks the
    completion tokens (the ones the model is scored on)."""
    ids, mask = right_pad([s for s, _ in seqs], pad_id)
    loss_mask = torch.zeros_like(mask)
    for i, (s, p) in enumerate(seqs):
        loss_mask[i, p:len(s)] = 1
    return ids, mask, loss_mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def model_inputs(ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """Forward kwargs for a batch. Right-padded batches need no attention mask: under causal attention a real token
    never sees the padding after it, and positions are 0..L−1 anyway — dropping the mask lets SDPA take its causal
    fast path. Their padding ids are overwritten with each row's first token (never read) so that transformers does
    not warn about pad tokens without a mask. Anything else (left padding) gets the mask and mask-derived positions."""
    m = mask.long()
    if bool((m[:, 0] == 1).all()) and bool((m.cummin(dim=1).values == m).all()):
        return {"input_ids": torch.where(m.bool(), ids, ids[:, :1])}
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}


# ----------------------------------------------------------------------------- sampling and log-probs


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's weights are on (where its inputs must go)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _sampling_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """The generator that draws the sampling noise on ``device``. A CPU generator on a CPU model is used as is
    (results stay bit-for-bit those of a plain ``torch.multinomial``); for a model on a GPU, a generator on that
    device is seeded from ``generator`` (one draw), so sampling stays deterministic given the seed without copying
    noise from the host at every token."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def sample(model, query: torch.Tensor, query_mask: torch.Tensor, max_new_tokens: int, temperature: float,
           eos_id: int, pad_id: int, generator: torch.Generator | None = None, *, check_every: int = 8,
           rows: tuple[int, torch.Tensor] | None = None, across=None, watch=None) -> torch.Tensor:
    """Batched ancestral sampling with a KV cache. Returns responses [B, T] right-padded with ``pad_id`` after EOS,
    on the model's device (the query is moved there).

    temperature 0 is greedy. Sampling is plain softmax(logits / temperature) — no top-k/top-p — so the rollout
    distribution is exactly the one whose log-probs PPO computes. A token is drawn as argmax(p / q) with q ~ Exp(1)
    (the Gumbel-max trick, which is what ``torch.multinomial`` does for one sample, bit for bit on the CPU), drawn on
    the device: unlike ``torch.multinomial`` on a GPU it has no hidden host sync to check the probabilities.

    The hot loop never waits for the device: "every row has ended" is tested only every ``check_every`` tokens (one
    host sync each), and the step at which it first held is tracked on the device. The responses are then cut at that
    step and ``generator`` is put back to its state right after it, so the output and the generator's state are
    exactly those of stopping at the first step where every row had ended.

    Data-parallel rollouts: ``rows = (global batch size, this process's row indices)`` draws the noise of the whole
    global batch and keeps this process's rows, so every row gets the noise it would get in one process;
    ``across(int) -> int`` returns the maximum of an integer over the processes (all processes then stop at the same
    step and keep their generators in step).

    ``watch`` (a :class:`~superalign.models.watch.LinearMonitor` or anything with ``layer``, ``begin(B, device)``,
    ``observe(h [B, d], alive [B])``): fed, at every step, the hidden state at ``watch.layer`` of the position that
    emits the step's token (the prompt's last position for the first token), with the rows still generating; the
    forward passes then also return hidden states. Read its per-sample scores with ``watch.end()``."""
    device = model_device(model)
    query, query_mask = query.to(device), query_mask.to(device)
    gen = _sampling_generator(generator, device)
    keep_states = gen is not None and gen is generator  # a derived generator is private: no state to restore
    B = query.shape[0]
    n_noise, noise_rows = (B, None) if rows is None else (rows[0], torch.as_tensor(rows[1], device=device))
    mask = query_mask.clone()
    pos = positions(mask)
    hs = watch is not None
    out = model(input_ids=query, attention_mask=mask, position_ids=pos, use_cache=True, output_hidden_states=hs)
    past, logits = out.past_key_values, out.logits[:, -1].float()
    if hs:
        watch.begin(B, device)
    pos = pos[:, -1:]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    first_all_done = torch.full((), max_new_tokens - 1, dtype=torch.long, device=device)
    ended_yet = torch.zeros((), dtype=torch.bool, device=device)
    steps = torch.arange(max_new_tokens, device=device)
    toks, states = [], {}
    check_every = max(1, int(check_every))
    for t in range(max_new_tokens):
        if temperature == 0:
            tok = logits.argmax(-1)
        else:
            probs = F.softmax(logits / temperature, dim=-1)
            noise = torch.empty((n_noise, probs.shape[-1]), dtype=probs.dtype, device=device).exponential_(
                1, generator=gen)
            if noise_rows is not None:
                noise = noise[noise_rows]
            tok = (probs / noise).argmax(-1)
            if keep_states:
                states[t] = gen.get_state()
        if hs:  # the state that chose this token; rows already ended emit padding and are not scored
            watch.observe(out.hidden_states[watch.layer][:, -1], ~done)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        toks.append(tok)
        done = done | (tok == eos_id)
        all_done = done.all()
        first_all_done = torch.where(all_done & ~ended_yet, steps[t], first_all_done)
        ended_yet = ended_yet | all_done
        if t == max_new_tokens - 1:
            break
        if (t + 1) % check_every == 0:  # the only host sync of the loop, once every check_every tokens
            finished = int(ended_yet)
            if (across(finished == 0) if across is not None else finished == 0) == 0:
                break
            states = {}  # the step to go back to is never before this check
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos + 1
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True,
                    output_hidden_states=hs)
        past, logits = out.past_key_values, out.logits[:, -1].float()
    stop = int(first_all_done)
    if across is not None:
        stop = across(stop)
    if keep_states and stop in states:
        gen.set_state(states[stop])
    return torch.stack(toks[:stop + 1], dim=1)


def response_mask(responses: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """1 on response tokens up to and including the first EOS, 0 after it."""
    is_eos = responses == eos_id
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    mask = ~after
    if pad_id != eos_id:
        mask &= responses != pad_id
    return mask.long()


def token_logprobs(model, query: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor,
                   resp_mask: torch.Tensor, temperature: float, return_entropy: bool = False):
    """log π(response_t | query, response_<t) for every response token, with logits divided by ``temperature``
    (the same temperature as in sampling). Padding positions get 0."""
    ids = torch.cat([query, responses], dim=1)
    mask = torch.cat([query_mask, resp_mask], dim=1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    q = query.shape[1]
    logits = logits[:, q - 1:-1].float() / max(temperature, 1e-7)
    logp_all = F.log_softmax(logits, dim=-1)
    lp = logp_all.gather(-1, responses.unsqueeze(-1)).squeeze(-1) * resp_mask
    if not return_entropy:
        return lp
    ent = -(logp_all.exp() * logp_all).sum(-1) * resp_mask
    return lp, ent


def completion_logps(model, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor,
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p over completion tokens [B], number of completion tokens [B]) of a right-padded batch."""
    logits = model(**model_inputs(ids, mask)).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    tgt, lm = ids[:, 1:], loss_mask[:, 1:]
    lp = torch.gather(F.log_softmax(logits, -1), 2, tgt.unsqueeze(-1)).squeeze(-1) * lm
    return lp.sum(-1), lm.sum(-1)


def decode_responses(tok, responses: torch.Tensor, resp_mask: torch.Tensor) -> tuple[list[str], list[bool]]:
    """(texts without EOS/padding, ended-with-EOS flags)."""
    texts, ended = [], []
    for r, m in zip(responses.tolist(), resp_mask.tolist()):
        r = [t for t, k in zip(r, m) if k]
        e = bool(r) and r[-1] == tok.eos_token_id
        texts.append(tok.decode(r[:-1] if e else r, skip_special_tokens=True).strip())
        ended.append(e)
    return texts, ended
