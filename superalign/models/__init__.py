"""Model registry and feature extraction shared by every pillar."""

from .registry import ModelSpec, list_models, resolve_model, load_hf
from .features import encode_texts

__all__ = ["ModelSpec", "list_models", "resolve_model", "load_hf", "encode_texts"]
