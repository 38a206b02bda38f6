"""The run-time monitor hook of the shared model layer: thresholds at a target FPR (golden), and a LinearMonitor
watching `sample` scores exactly what a full forward pass over the finished sequences gives, without changing the
samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from superalign.errors import SuperalignError
from superalign.models.watch import LinearMonitor, threshold_at_fpr, tpr_at_fpr


def test_threshold_at_fpr_golden():
    clean = [0.1, 0.5, 0.2, 0.9, 0.3, 0.4, 0.8, 0.7, 0.6, 1.0]  # sorted: 0.1 … 1.0
    assert threshold_at_fpr(clean, 0.0) == 1.0  # nothing clean may be above: the maximum
    assert threshold_at_fpr(clean, 0.1) == 0.9  # one of ten above (1.0)
    assert threshold_at_fpr(clean, 0.25) == 0.8  # floor(2.5) = 2 above (0.9, 1.0)
    assert threshold_at_fpr(clean, 0.05) == 1.0  # floor(0.5) = 0: half a sample is not allowed
    for fpr in (0.0, 0.1, 0.25, 0.5, 0.99):
        t = threshold_at_fpr(clean, fpr)
        assert (np.asarray(clean) > t).mean() <= fpr


def test_tpr_at_fpr_golden():
    scores = [0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.25]
    labels = [0, 0, 0, 0, 1, 1, 1]
    r = tpr_at_fpr(scores, labels, 0.25)  # negatives 0.1..0.4, one of four may be above → threshold 0.3
    assert r.threshold == 0.3 and r.fpr == 0.25 and r.tpr == pytest.approx(2 / 3)
    r0 = tpr_at_fpr(scores, labels, 0.0)  # threshold 0.4 → only 0.5 above
    assert r0.threshold == 0.4 and r0.fpr == 0.0 and r0.tpr == pytest.approx(1 / 3)


@pytest.mark.parametrize("bad", [dict(scores=[0.1], labels=[1]), dict(scores=[0.1, 0.2], labels=[0, 2]),
                                 dict(scores=[0.1, 0.2], labels=[0])])
def test_tpr_at_fpr_bad_input(bad):
    with pytest.raises(SuperalignError):
        tpr_at_fpr(bad["scores"], bad["labels"], 0.05)


def test_monitor_pooling_golden():
    m = LinearMonitor(layer=1, direction=[1.0, -1.0], bias=0.5, center=[1.0, 0.0])
    h = torch.tensor([[[3.0, 1.0], [1.0, 2.0], [0.0, 0.0]]])  # token scores: 2-1+.5=1.5, 0-2+.5=-1.5, -1-0+.5=-.5
    ts = m.token_scores(h)
    assert torch.allclose(ts, torch.tensor([[1.5, -1.5, -0.5]]))
    mask = torch.tensor([[1, 1, 0]])
    assert float(m.pool_scores(ts, mask)) == pytest.approx(0.0)
    m.pool = "max"
    assert float(m.pool_scores(ts, mask)) == pytest.approx(1.5)
    m.calibrate([0.0, 1.0, 2.0, 3.0], 0.25)
    assert m.threshold == 2.0 and m.flags([2.0, 2.5]).tolist() == [False, True]


def test_save_load_roundtrip(tmp_path):
    m = LinearMonitor(layer=2, direction=np.arange(4.0), bias=-1.0, center=np.ones(4), pool="max", threshold=0.3,
                      meta={"method": "mass_mean"})
    m2 = LinearMonitor.load(m.save(tmp_path / "mon"))
    assert m2.layer == 2 and m2.pool == "max" and m2.threshold == 0.3 and m2.meta["method"] == "mass_mean"
    assert np.array_equal(m2.direction, m.direction) and np.array_equal(m2.center, m.center)
    with pytest.raises(SuperalignError, match="not a saved monitor"):
        LinearMonitor.load(tmp_path)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_watched_sampling_scores_equal_a_full_forward_and_leave_samples_unchanged(tiny_gpt2, pool):
    from superalign.models.lm import left_pad, load_lm, response_mask, sample

    tok, model = load_lm(tiny_gpt2, require_eos=False)
    prompts = [tok("hello world this is", add_special_tokens=False)["input_ids"],
               tok("a b", add_special_tokens=False)["input_ids"],
               tok("one two three four five six", add_special_tokens=False)["input_ids"]]
    q, qm = left_pad(prompts, tok.pad_token_id)
    d = model.config.n_embd
    mon = LinearMonitor(layer=1, direction=torch.randn(d, generator=torch.Generator().manual_seed(1)).numpy(),
                        bias=0.2, center=np.full(d, 0.01, dtype=np.float32), pool=pool)
    # EOS := a token row 0 draws at step 3 with this seed, so at least one row ends early and the alive mask matters
    eos = int(sample(model, q, qm, 12, 1.0, len(tok), tok.pad_token_id, torch.Generator().manual_seed(3))[0, 3])
    plain = sample(model, q, qm, 12, 1.0, eos, tok.pad_token_id, torch.Generator().manual_seed(3))
    watched = sample(model, q, qm, 12, 1.0, eos, tok.pad_token_id, torch.Generator().manual_seed(3), watch=mon)
    assert torch.equal(plain, watched)
    got = mon.end()
    # the reference: one forward over query + response; the state that emits response token t sits at t − 1
    rmask = response_mask(watched, eos, tok.pad_token_id)
    ids = torch.cat([q, watched], 1)
    mask = torch.cat([qm, rmask], 1)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True).hidden_states[1]
    emit = hs[:, q.shape[1] - 1:q.shape[1] - 1 + watched.shape[1]]
    want = mon.pool_scores(mon.token_scores(emit), rmask)
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    assert 0 < int(rmask.sum()) < rmask.numel()  # some rows ended early: the alive mask mattered
