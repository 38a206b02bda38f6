"""RLHF: SFT, reward models, PPO (InstructGPT), DPO, best-of-n and reward over-optimization studies."""

from ..models.registry import ModelSpec, register_model_name


def _resolve_testbed(name: str, home=None) -> ModelSpec:
    """The testbed's tiny GPT-2, pretrained into the run store on first use (imported here, not above: registering
    the name must not pull in torch)."""
    from ..runs.store import default_home
    from .testbed import testbed_lm_path

    return ModelSpec(name, "hf", str(testbed_lm_path(home or default_home())))


register_model_name("testbed", _resolve_testbed, "the RLHF testbed's tiny GPT-2, pretrained on the review language "
                    "(built into the run store on first use), offline", ("rlhf", "interp"), kind="causal LM")
