"""Students: a linear probe on cached frozen features (the CPU default) and a transformer classifier that
finetunes the last n blocks, the whole model, or LoRA adapters (peft). Both map inputs to 2-class logits."""

from __future__ import annotations

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
                 device: str = "cpu", trust_remote_code: bool = False, lora_rank: int = 8):
        super().__init__()
        if mode not in MODES[1:]:
            raise SuperalignError(f"unknown finetuning mode {mode!r}", f"use one of {', '.join(MODES)}")
        tok, backbone, causal = load_hf(spec, trust_remote_code=trust_remote_code, for_training=True)
        if causal:
            tok.padding_side = "left"  # the pooled (last) token is then the real last token
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
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 2)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.n_params = model_params(backbone)
        self.n_trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        self.to(device)
        self.tokens_seen = 0

    def forward(self, texts: list[str]) -> torch.Tensor:
        b = self.tok(list(texts), padding=True, truncation=True, max_length=self.max_length,
                     return_tensors="pt").to(self.device)
        self.tokens_seen += int(b["attention_mask"].numel())
        h = self.backbone(**b).last_hidden_state
        return self.head(pool(h, b["attention_mask"], self.causal).float())


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
def predict_proba(model: nn.Module, inputs, batch_size: int = 256) -> np.ndarray:
    """P(class 1) for every row of ``inputs``, in eval mode (dropout off)."""
    was = model.training
    model.eval()
    out = []
    n = len(inputs)
    for i in range(0, n, batch_size):
        logits = model(take(inputs, np.arange(i, min(n, i + batch_size))))
        out.append(torch.softmax(logits.float(), -1)[:, 1].cpu())
    model.train(was)
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
