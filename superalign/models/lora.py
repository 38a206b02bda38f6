"""LoRA adapters (Hu et al. 2021, through peft) for the causal-LM policies the RLHF jobs train.

A job that mixes in :class:`LoRAOptions` gets ``--lora-rank`` and ``--lora-alpha``; rank 0 (the default) is full
finetuning and leaves the job's run id what it was before LoRA existed (:func:`lora_key`). With a rank > 0 the job
wraps its policy with :func:`apply_lora` right after loading it (adapters on every linear layer of the transformer
blocks; the embeddings and the LM head stay frozen) and saves :func:`merge_lora`'s plain model, so every later
stage loads a LoRA-trained policy exactly like a fully trained one. The reference policy stays a separate frozen
copy: one forward pass more per batch than peft's ``disable_adapter`` trick, but every trainer keeps one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SuperalignError
from ..validate import check_int, check_positive, help_field


@dataclass
class LoRAOptions:
    """Mixin for jobs that train a causal-LM policy."""

    lora_rank: int = help_field(0, "train LoRA adapters of this rank on every linear layer of the transformer blocks "
                                   "instead of all weights (0: full finetuning)")
    lora_alpha: float | None = help_field(None, "LoRA scaling α (the update is α/rank·BA; default 2·rank)")

    def key(self) -> dict:
        """The job's run-id dict (the next class in the MRO makes it, e.g. JobBase) through :func:`lora_key`."""
        return lora_key(super().key())


def check_lora(opts: LoRAOptions) -> None:
    """Validate the LoRA fields (call from the job's ``__post_init__``)."""
    check_int("lora_rank", opts.lora_rank, minimum=0, example=8)
    check_positive("lora_alpha", opts.lora_alpha, example=16, none_ok=True)
    if opts.lora_alpha is not None and opts.lora_rank == 0:
        raise SuperalignError("--lora-alpha is set but --lora-rank is 0 (full finetuning)",
                              "pass --lora-rank 8 (or another rank) or drop --lora-alpha")


def lora_key(d: dict) -> dict:
    """A run-id dict without the LoRA fields when LoRA is off (full-finetuning ids predate LoRA and stay the same)."""
    if not d.get("lora_rank"):
        d.pop("lora_rank", None)
        d.pop("lora_alpha", None)
    return d


def is_lora(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def apply_lora(model, rank: int, alpha: float | None = None):
    """``model`` with trainable LoRA adapters of ``rank`` on every linear layer of its blocks (everything else
    frozen), or ``model`` itself for rank 0. Dropout is 0: RL and DPO compare log-probs of the same sequences under
    the sampling policy and the trained one, and dropout would make them differ."""
    if not rank:
        return model
    from peft import LoraConfig, get_peft_model

    # "all-linear": every nn.Linear / GPT-2 Conv1D in the blocks, never the LM head
    cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, target_modules="all-linear",
                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:  # peft: no linear layer it knows how to adapt
        raise SuperalignError(f"cannot add LoRA adapters to {type(model).__name__}: {str(e).splitlines()[0]}",
                              "train it fully (--lora-rank 0)") from e


def merge_lora(model):
    """A plain model with the adapters folded into its weights (W + α/r·BA), or ``model`` itself without LoRA.
    peft merges in place: use the returned model from then on."""
    if not is_lora(model):
        return model
    return model.merge_and_unload()

