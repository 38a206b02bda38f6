"""Students: a linear probe on cached frozen features (the CPU default) and a transformer classifier that
finetunes the last n blocks, the whole model, or LoRA adapters (peft). Both map inputs to 2-class logits."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from ..errors import SuperalignError
from ..models.features import pool
from ..models.registry import ModelSpec, load_hf, model_params

MODES = ("probe", "last-n", "full", "lora")


class LinearProbe(nn.Module):
    """Standardise features with the training set's mean/std, then one linear layer to 2 logits."""

    def __init__(self, train_feats: torch.Tensor):
        super().__init__()
        self.register_buffer("mu", train_feats.mean(0))
        self.register_buffer("sd", train_feats.std(0).clamp(min=1e-6))
        self.head = nn.Linear(train_feats.shape[1], 2)
        nn.init.zeros_(self.head.weight)  # start at P = ½ everywhere: no initial preference
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x - self.mu) / self.sd)

    def flops_per_example(self, train: bool) -> float:
        n = self.head.weight.numel()
        return (6.0 if train else 2.0) * n


class TextClassifier(nn.Module):
    """A transformer backbone + linear head on pooled hidden states, trained end to end on raw texts.

    mode 'last-n': only the last ``n_train_layers`` blocks and the head train (lower blocks frozen, so backward
    stops there); 'full': everything; 'lora': LoRA adapters on every linear layer of the blocks + the head."""

    def __init__(self, spec: ModelSpec, mode: str, n_train_layers: int = 1, max_length: int = 128,
                 device: str = "cpu", trust_remote_code: bool = False, lora_rank: int = 8, precision: str = "fp32"):
        super().__init__()
        if mode not in MODES[1:]:
            raise SuperalignError(f"unknown finetuning mode {mode!r}", f"use one of {', '.join(MODES)}")
        tok, backbone, causal = load_hf(spec, trust_remote_code=trust_remote_code, for_training=True)
        if causal:
            # right: real tokens keep positions 0..n-1 (left padding without position ids shifts them, so a text's
            # logits depended on its batch); pool() reads the last real token on either side
            tok.padding_side = "right"
        self.tok, self.causal, self.max_length, self.device = tok, causal, max_length, device
        if mode == "lora":
            from peft import LoraConfig, get_peft_model
            names = sorted({n.split(".")[-1] for n, m in backbone.named_modules() if isinstance(m, nn.Linear)})
            backbone = get_peft_model(backbone, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=names,
                                                           lora_dropout=0.0))
        else:
            for p in backbone.parameters():
                p.requires_grad_(mode == "full")
            if mode == "last-n":
                blocks = _blocks(backbone)
                if not 1 <= n_train_layers <= len(blocks):
                    raise SuperalignError(f"--n-train-layers {n_train_layers} out of range 1..{len(blocks)}")
                for b in blocks[-n_train_layers:]:
                    for p in b.parameters():
                        p.requires_grad_(True)
        # BERT's pooler never feeds the output (the head reads pooled hidden states): frozen, so that data-parallel
        # training (DDP) does not wait for gradients it never gets. Unused parameters got no gradient before either,
        # so AdamW skipped them: the numbers do not change.
        for name, p in backbone.named_parameters():
            if ".pooler." in f".{name}":
                p.requires_grad_(False)
        self.backbone = backbone
        # CPU fast path for 'last-n' on BERT-family encoders: the frozen lower blocks are a fixed function of the
        # text, so their output is computed once per text (eval mode, no grad) and shared by every model built on
        # the same checkpoint in this process (ceiling and students); each step then runs only the top n blocks.
        self.prefix_layers = None
        if mode == "last-n" and type(backbone).__name__ == "BertModel":
            self.prefix_layers = len(_blocks(backbone)) - n_train_layers
            self._prefix = _PREFIX_CACHE.setdefault((spec.path, spec.fingerprint(), spec.layer, self.prefix_layers,
                                                     max_length, str(device), precision), {})
            while len(_PREFIX_CACHE) > 2:  # bound memory: keep the two most recent checkpoints' prefixes
                _PREFIX_CACHE.pop(next(iter(_PREFIX_CACHE)))
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 2)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.n_params = model_params(backbone)
        self.n_trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        self.prefix_flops = 0.0
        self.to(device)
        self.tokens_seen = 0

    def forward(self, texts: list[str]) -> torch.Tensor:
        if self.prefix_layers is not None:
            return self._forward_cached(list(texts))
        b = self.tok(list(texts), padding=True, truncation=True, max_length=self.max_length,
                     return_tensors="pt").to(self.device)
        self.tokens_seen += int(b["attention_mask"].numel())
        h = self.backbone(**b).last_hidden_state
        return self.head(pool(h, b["attention_mask"], self.causal).float())


    @torch.no_grad()
    def _fill_prefix(self, texts: list[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self._prefix]
        if not todo:
            return
        was = self.backbone.training
        self.backbone.eval()
        b = self.tok(todo, padding=True, truncation=True, max_length=self.max_length,
                     return_tensors="pt").to(self.device)
        hs = self.backbone(**b, output_hidden_states=True).hidden_states[self.prefix_layers]
        self.prefix_flops += 2.0 * self.n_params * int(b["attention_mask"].numel())
        for i, t in enumerate(todo):
            n = int(b["attention_mask"][i].sum())
            self._prefix[t] = hs[i, :n].detach().clone()
        self.backbone.train(was)

    def _forward_cached(self, texts: list[str]) -> torch.Tensor:
        self._fill_prefix(texts)
        states = [self._prefix[t] for t in texts]
        T = max(len(x) for x in states)
        h = torch.zeros(len(states), T, states[0].shape[-1], device=self.device)
        mask = torch.zeros(len(states), T, dtype=torch.long, device=self.device)
        for i, x in enumerate(states):
            h[i, :len(x)] = x
            mask[i, :len(x)] = 1
        self.tokens_seen += int(mask.numel())
        ext = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for blk in _blocks(self.backbone)[self.prefix_layers:]:
            out = blk(h, attention_mask=ext)
            h = out[0] if isinstance(out, tuple) else out
        return self.head(pool(h, mask, self.causal).float())


_PREFIX_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The list of transformer blocks of an HF model (BERT: encoder.layer, GPT-2: h, Llama: layers)."""
    for path in ("encoder.layer", "h", "layers", "transformer.h", "model.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return list(obj)
    raise SuperalignError(f"cannot find the transformer blocks of {type(model).__name__}", "use --mode full or lora")


def take(inputs, idx: np.ndarray):
    """Rows ``idx`` of a feature tensor or a list of texts."""
    if isinstance(inputs, torch.Tensor):
        return inputs[torch.as_tensor(idx, dtype=torch.long)]
    return [inputs[i] for i in idx]


@torch.no_grad()
def predict_proba(model: nn.Module, inputs, batch_size: int = 256, autocast=None) -> np.ndarray:
    """P(class 1) for every row of ``inputs``, in eval mode (dropout off), on the model's device; ``autocast`` (a
    context factory such as :meth:`Runtime.autocast`) sets the precision of the forward passes."""
    was = model.training
    p = next(iter(model.parameters()), None)
    if isinstance(inputs, torch.Tensor) and p is not None:
        inputs = inputs.to(p.device)
    model.eval()
    n = len(inputs)
    # texts go in length order (less padding); results are put back in input order
    order = np.arange(n) if isinstance(inputs, torch.Tensor) else np.argsort([len(t) for t in inputs], kind="stable")
    bs = batch_size if isinstance(inputs, torch.Tensor) else min(batch_size, 64)
    out = np.zeros(n)
    for i in range(0, n, bs):
        idx = order[i:i + bs]
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = model(take(inputs, idx))
        out[idx] = torch.softmax(logits.float(), -1)[:, 1].cpu().numpy()
    model.train(was)
    return out
