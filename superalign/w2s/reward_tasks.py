"""``testbed-pairs``: preference pairs from the RLHF pillar's exact-gold testbed, for weak-to-strong reward models.

Registered here, on the w2s side, rather than in superalign/data: the shared data layer never imports a pillar, and
the generator and gold reward live in superalign/rlhf/testbed.py (imported lazily, when the task is loaded), so
there is one copy of the review grammar and of the gold reward.

Construction (fixed, independent of the experiment seed, like every task): a prompt is the opening "subject verb"
of a review (``sample_prompts``' form); each of its two completions is the remainder of an independently sampled
grammar sentence (``split_sentence(sample_sentence(rng))[1]``: "[intensifier] adjective [connector clause]* end").
The true preference is the higher exact gold reward (``GoldReward``: VADER compound of prompt + completion minus
the repetition penalty); pairs whose golds differ by less than ``MARGIN`` are resampled, so no label rests on a
rounding-level difference. Why this is learnable but not trivial: the two completions differ in every slot, and the
gold is VADER's non-linear compound — negation ("not", "not very"), intensifiers, "but" re-weighting the clause after
it, and the pooled sentiment of up to three clauses — so neither a bag-of-words reward model (≈ 80% pairwise accuracy
on 900 training pairs) nor linear heads on MiniLM features (≈ 79–83% on 1,200, layer 3 best) is close to perfect.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..data.tasks import Task, TaskSpec, register_task

N_PAIRS = 3000
MARGIN = 0.05
SEED = 0

DESCRIPTION = (f"Exact-gold RLHF testbed as preference pairs (reward modelling): {N_PAIRS} pairs of two sampled "
               "completions of one review prompt, the preferred one = higher exact gold reward (VADER compound − "
               f"repetition penalty; gold gap ≥ {MARGIN}). Offline, no LM needed.")


def build_testbed_pairs(n_pairs: int = N_PAIRS, margin: float = MARGIN, seed: int = SEED) -> Task:
    """The testbed-pairs task (see the module docstring): rows 2k (preferred) and 2k + 1 (rejected) are pair k."""
    texts, labels, groups = _generate(n_pairs, margin, seed)
    return Task("testbed-pairs", list(texts), np.array(labels), description=DESCRIPTION,
                groups=np.array(groups, dtype=np.int64),
                meta={"pairwise": True, "construction": {"n_pairs": n_pairs, "margin": margin, "seed": seed}})


@lru_cache(maxsize=4)
def _generate(n_pairs: int, margin: float, seed: int) -> tuple[tuple, tuple, tuple]:
    """(texts, labels, groups), generated once per process (the gold reward of ~2·n_pairs texts takes seconds)."""
    from ..rlhf.testbed import GoldReward, sample_prompts, sample_sentence, split_sentence

    gold = GoldReward()
    rng = np.random.default_rng(seed)
    texts, labels, groups = [], [], []
    while len(groups) < 2 * n_pairs:
        prompt = sample_prompts(1, int(rng.integers(2**31)))[0]
        a, b = (split_sentence(sample_sentence(rng))[1] for _ in range(2))
        ga, gb = gold(prompt, a), gold(prompt, b)
        if abs(ga - gb) < margin:
            continue
        good, bad = (a, b) if ga > gb else (b, a)
        k = len(groups) // 2
        texts += [f"{prompt} {good}", f"{prompt} {bad}"]
        labels += [1, 0]
        groups += [k, k]
    return tuple(texts), tuple(labels), tuple(groups)


@register_task("testbed-pairs", DESCRIPTION)
def _testbed_pairs(spec: TaskSpec) -> Task:
    return build_testbed_pairs()
