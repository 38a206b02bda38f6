"""Run-time monitors from the pillar's probes: a fitted contrast-pair :class:`~superalign.monitor.probes.Probe` (or a
difference of means of two sets of texts) becomes a :class:`~superalign.models.watch.LinearMonitor` that scores ONE
hidden state, so that ``sample(..., watch=monitor)`` (PPO and best-of-n rollouts, the local LLM backend) scores every
sample as it is generated.

Also here: the checks that a saved monitor fits a model (hidden size, layer) before anything is written, the content
fingerprint of a monitor folder (part of the run id of every job that loads one), and a timing wrapper that measures
what monitoring costs.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import SuperalignError
from ..models.watch import LinearMonitor
from .probes import Normalizer, Probe

MONITOR_FILES = ("cfg.json", "monitor.safetensors")


def pooled_std(norm: Normalizer) -> np.ndarray:
    """One standard deviation per dimension for both sides: sqrt((σ⁺² + σ⁻²) / 2)."""
    return np.sqrt((np.asarray(norm.std_pos, dtype=np.float64) ** 2 + np.asarray(norm.std_neg, dtype=np.float64) ** 2)
                   / 2)


def pair_logit(probe: Probe, x_pos, x_neg) -> np.ndarray:
    """The probe's logit ℓ of each pair, oriented like :meth:`Probe.predict` (``sign`` applied):
    ``sign·(w·(x̃⁺ − x̃⁻) + b)`` for logistic regression and mass-mean (so σ(ℓ) is their P(true)), and for CCS the
    difference of its two sides' logits ``sign·((w·x̃⁺ + b) − (w·x̃⁻ + b)) = sign·w·(x̃⁺ − x̃⁻)``; x̃ = the per-side
    normalised states."""
    a, b = probe.norm(np.asarray(x_pos, dtype=np.float64), np.asarray(x_neg, dtype=np.float64))
    raw = (a - b) @ probe.weight + (0.0 if probe.method == "ccs" else probe.bias)
    return probe.sign * raw


def probe_monitor(probe: Probe, layer: int, flag_label: int = 1, pool: str = "mean",
                  meta: dict | None = None) -> LinearMonitor:
    """A monitor of one hidden state from a probe fitted on contrast pairs at ``layer``; it scores high what looks
    like the probe's class ``flag_label`` (1: the pairs whose true answer is the template's second, 0: the first).

    Derivation. The probe reads a pair through per-side normalisation x̃± = (x± − μ±)/σ± and has the pair logit
    (:func:`pair_logit`) ℓ(x⁺, x⁻) = s·(w·(x̃⁺ − x̃⁻) + b) (s = the probe's sign; b := 0 for CCS). A monitor sees one
    state h and does not know which side it stands for, so the two sides' statistics become one: the pooled
    σ = sqrt((σ⁺² + σ⁻²)/2) and the centre c = (μ⁺ + μ⁻)/2. The monitor is

        score(h) = v·(h − c),   v = f·s·w/σ,   f = +1 when flag_label = 1, −1 when 0,

    and for a pair whose sides have equal spreads (σ⁺ = σ⁻ = σ; otherwise this holds with σ pooled, approximately):

        score(x⁺) − score(x⁻) = f·s·w·(x⁺ − x⁻)/σ = f·(ℓ(x⁺, x⁻) − κ),   κ = s·(b − w·(μ⁺ − μ⁻)/σ),

    i.e. the monitor's difference between the two sides of a pair is the probe's logit up to one constant κ shared by
    all pairs (kept as ``meta['pair_offset']``), so it orders pairs exactly as the probe does. The centre cancels in
    that difference; it is the midpoint so that a single state's score is relative to the average of both sides.
    The bias is 0: a monitor's threshold is calibrated on clean samples (:meth:`LinearMonitor.calibrate`), which
    absorbs any offset."""
    if flag_label not in (0, 1):
        raise SuperalignError(f"flag_label must be 0 or 1, got {flag_label!r}",
                              "pass the label of the class the monitor flags (0 or 1)")
    sd = pooled_std(probe.norm)
    f = 1.0 if flag_label == 1 else -1.0
    w = np.asarray(probe.weight, dtype=np.float64)
    v = f * probe.sign * w / sd
    mu_pos, mu_neg = np.asarray(probe.norm.mean_pos, np.float64), np.asarray(probe.norm.mean_neg, np.float64)
    kappa = probe.sign * ((0.0 if probe.method == "ccs" else probe.bias) - float(w @ ((mu_pos - mu_neg) / sd)))
    info = {"kind": "probe", "method": probe.method, "flag_label": flag_label, "pair_offset": float(kappa)}
    return LinearMonitor(layer=layer, direction=v, center=(mu_pos + mu_neg) / 2, pool=pool,
                         meta={**info, **(meta or {})})


def mean_difference_monitor(h_flag, h_clean, layer: int, pool: str = "mean", whiten: bool = True,
                            meta: dict | None = None) -> LinearMonitor:
    """A difference-of-means monitor from the hidden states of two sets of texts ([N, d] to flag, [M, d] clean; e.g.
    negative vs positive reviews, or "… Assistant: yes" vs "… no"): Δ = mean(flag) − mean(clean), c = the midpoint,
    direction u = Δ, or with ``whiten`` u = Δ / s² (s² = the pooled within-set variance per dimension, the diagonal
    of Marks & Tegmark's Σ⁻¹θ), and

        score(h) = (h − c)·2u/(u·Δ),

    scaled so that the flag mean scores +1 and the clean mean −1. Whitening matters for LMs whose hidden states have
    a few dimensions of huge variance ("massive activations"): a raw Δ is dominated by them, and they move with text
    length and position rather than content (SmolLM2, layer 15, the negative-review demo: AUROC ≈ 0.6 raw vs ≈ 0.8
    whitened in a 32-sample pilot)."""
    a, b = np.asarray(h_flag, dtype=np.float64), np.asarray(h_clean, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise SuperalignError(f"a mean-difference monitor needs two non-empty [N, d] sets, got {a.shape} and {b.shape}",
                              "pass hidden states of at least one text of each set")
    mu_f, mu_c = a.mean(0), b.mean(0)
    delta = mu_f - mu_c
    u = delta
    if whiten:
        var = np.concatenate([a - mu_f, b - mu_c]).var(0)
        u = delta / (var + 1e-6 * max(float(var.mean()), 1e-12))  # the floor only guards constant dimensions
    scale = float(u @ delta)
    if not np.isfinite(scale) or scale <= 0:
        raise SuperalignError("the two sets of texts have the same mean hidden state", "use texts that differ")
    return LinearMonitor(layer=layer, direction=2 * u / scale, center=(mu_f + mu_c) / 2, pool=pool,
                         meta={"kind": "mean_difference", "whiten": whiten, "n_flag": len(a), "n_clean": len(b),
                               **(meta or {})})


# ----------------------------------------------------------------------------- checks and identity


def monitor_fingerprint(path: str | Path) -> str:
    """sha256 over the contents of a saved monitor's files: part of the run id of every job that loads it, so a
    recalibrated or refitted monitor is a new run."""
    from ..data.fingerprint import file_fingerprint

    p = Path(path)
    missing = [f for f in MONITOR_FILES if not (p / f).is_file()]
    if missing:
        raise SuperalignError(f"{p} is not a saved monitor (missing {', '.join(missing)})",
                              "pass the folder a monitor was saved to (`superalign monitor watch` writes one)")
    return hashlib.sha256("".join(file_fingerprint(p / f) for f in MONITOR_FILES).encode()).hexdigest()[:16]


def model_shape(model: str, home=None, trust_remote_code: bool = False) -> tuple[int, int] | None:
    """(hidden size, number of layers) of a causal LM from its config (cheap: no weights), or None for names that
    only exist once another job has trained them (``testbed-sft``)."""
    from ..models.lm import _spec
    from ..models.registry import load_config, num_layers, truncate_config

    if model in ("testbed-sft", "testbed-rm"):
        return None
    spec = _spec(model, home)
    cfg = load_config(spec, trust_remote_code)
    truncate_config(spec, cfg)
    return int(cfg.hidden_size), int(num_layers(cfg))


def check_monitor_fits(monitor: LinearMonitor, hidden_size: int, n_layers: int, what: str = "the model") -> None:
    """A one-line error unless the monitor reads a layer the model has and the model's hidden size."""
    from .extract import check_layer

    if monitor.direction.size != hidden_size:
        raise SuperalignError(f"the monitor reads hidden size {monitor.direction.size}, {what} has {hidden_size}",
                              "use a monitor fitted on this model")
    check_layer(monitor.layer, n_layers)


def load_monitor(path: str | Path, model: str | None = None, home=None,
                 trust_remote_code: bool = False) -> LinearMonitor:
    """A saved monitor, checked against ``model``'s config when that is known before training."""
    mon = LinearMonitor.load(path)
    shape = model_shape(model, home, trust_remote_code) if model else None
    if shape is not None:
        check_monitor_fits(mon, *shape, what=f"model {model!r}")
    return mon


def check_monitor_on(monitor: LinearMonitor, model) -> None:
    """:func:`check_monitor_fits` against a loaded model."""
    from ..models.registry import num_layers

    check_monitor_fits(monitor, int(model.config.hidden_size), int(num_layers(model.config)))


# ----------------------------------------------------------------------------- cost


class TimedMonitor:
    """Wraps a monitor for ``sample(watch=)`` and adds up the wall time spent in its per-token work (``begin``,
    ``observe``, ``end``) and the tokens it scored. On a GPU each call is synchronised first, so the times are exact
    but the wrapper itself slows sampling: use it for measuring, not in production."""

    def __init__(self, monitor: LinearMonitor):
        self.monitor, self.layer = monitor, monitor.layer
        self.seconds, self.tokens, self.steps = 0.0, 0, 0
        self._alive = None

    def _timed(self, fn, *args):
        sync = args and isinstance(args[0], torch.Tensor) and args[0].is_cuda
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(*args)
        if sync:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t
        return out

    def begin(self, batch: int, device) -> None:
        self._alive = torch.zeros((), dtype=torch.long)
        self._timed(self.monitor.begin, batch, device)

    def observe(self, h: torch.Tensor, alive: torch.Tensor) -> None:
        self._timed(self.monitor.observe, h, alive)
        self._alive = self._alive + alive.sum().cpu()
        self.steps += 1

    def end(self) -> torch.Tensor:
        out = self._timed(self.monitor.end)
        self.tokens += int(self._alive)
        return out

    def flops_per_token(self) -> int:
        """What one token's score multiplies and adds: the dot product (2d) and, with a centre, the subtraction (d)."""
        d = self.monitor.direction.size
        return 2 * d + (d if self.monitor.center is not None else 0)
