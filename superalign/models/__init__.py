"""The model layer shared by every pillar: one name grammar, encoder and causal-LM loaders, padding, pooling,
sampling and token log-probs (see :mod:`.registry`, :mod:`.lm`, :mod:`.features`).

Names are imported lazily, so a pillar can register a model name (``register_model_name``) at import time without
pulling in torch."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "registry": ("ModelSpec", "ModelName", "list_models", "model_names", "register_model_name", "resolve_model",
                 "load_hf", "load_config", "is_causal_config", "is_causal_lm"),
    "placement": ("resolve_device", "resolve_dtype"),
    "lm": ("load_tokenizer", "load_lm", "save_lm", "encode_prompts", "left_pad", "right_pad", "completion_batch",
           "model_inputs", "sample", "response_mask", "token_logprobs", "completion_logps", "decode_responses",
           "fuse_activations"),
    "features": ("encode_texts", "pool"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
