"""TopK SAE training side by side with EleutherAI's sparsify 1.3.3 on the same cached activations, one run.

    pip install -e ".[bench]"          # eai-sparsify 1.3.3 is a benchmark-only dependency
    python benchmarks/sae_vs_sparsify.py [--data ../shared/data] [--texts 24000] [--cache DIR] [--quick]

Activations: MiniLM (all-MiniLM-L6-v2, offline) residual stream after block 3 (``layers.3``, d = 384) over the first
``--texts`` SST-2 train sentences of the shared datasets folder (every non-padding token, [CLS]/[SEP] included),
cached once with ``superalign interp cache`` (``--cache DIR`` reuses a cache). Held out: the tokens of a random 10%
of the sentences (a document-level split), the same for every row.

Both libraries train an SAE of the same width (``--n-latents``, default 4096 ≈ 10.7 × 384) and k (32) on the same
float32 tokens, in the same order (train_sae's seeded per-epoch permutations, replayed for sparsify), with the same
batch size, epochs and seed, AuxK on in both (weight 1/32, a latent is dead after ``--dead-tokens`` tokens without
firing), at 2 threads. What differs is each library's SAE implementation and training step:

- superalign ``TopKSAE`` + ``train_sae`` (exactly what ``superalign interp sae`` runs): b_pre at the geometric
  median of 4096 training tokens; Adam (eps 6.25e-10, the paper's), constant lr ``--lr`` (default 1e-3, the CLI's:
  Gao et al.'s 2e-4 / sqrt(n_latents / 2^14) = 4e-4 at 4096 latents is tuned for runs of billions of tokens and
  converges less far on this one; ``--lr 0`` uses it in both Adam rows), gradient clipping at 1; decoder
  rows unit-norm by projecting out the parallel gradient before the step and renormalising after it; AuxK on the
  top d/2 dead latents, normalised by the residual's variance, its gradient reaching encoder and decoder.
- sparsify ``SparseCoder``, driven by a loop that mirrors ``sparsify.Trainer.fit`` for ``loss_fn="fvu"`` line by
  line (its Trainer wants a HF model + token dataset, so we replay its per-batch hook on the cached tensor):
  ``torch.manual_seed(seed)`` then ``SparseCoder(d, SparseCoderConfig(num_latents, k), dtype=float32)``
  (nn.Linear init, W_dec = its transpose at unit norm); b_dec = mean of the first batch; before each forward the
  decoder rows are renormalised; dead mask = tokens since fired > ``dead_feature_threshold``;
  loss = fvu + auxk_alpha · auxk_loss (multi_topk off, micro/grad accumulation 1); the parallel decoder gradient is
  projected out; optimizer.step(), zero_grad(), scheduler.step(); then the fired counters are updated.
  Two of its optimizers:
  * ``adam`` (Trainer's "adam" branch): torch.optim.Adam with default betas and eps 1e-8 (bitsandbytes' 8-bit Adam
    is not installed, so the Trainer would fall back to this too), the same peak lr as ours (``--lr``; its own
    default is the formula above) and ``get_linear_schedule_with_warmup(opt, lr_warmup_steps, total steps)``
    with its default ``lr_warmup_steps = 1000`` (capped at 10% of the steps when the run is shorter than 10,000
    steps, so that the warm-up does not eat the run; set by ``--sparsify-warmup``); no gradient clipping.
  * ``signum`` (its default, with its default lr): ScheduleFreeWrapper(SignSGD, momentum 0.95),
    lr = 5e-3 / sqrt(n_latents / 2^14); as in the Trainer's checkpoints, the SAE is evaluated with the optimizer
    in ``eval()`` mode (ScheduleFree's averaged weights; the FVU of the last iterate is reported too).
  Its AuxK differs from the paper's/ours in two ways we keep (they are the library's): it is normalised by the
  batch's total variance times min(n_dead / k_aux, 1), and its fused encoder's backward ignores the gradient of the
  dense pre-activations, so the AuxK loss trains only the dead latents' decoder rows, never their encoder rows.
  sparsify's decoder is ``F.embedding_bag`` (Triton is not available on CPU); its encoder backward is
  ``index_add_`` of a [B, k, d] tensor of outer products.

Lockstep: the rows train at the same time, step by step — step i of every sparsify row runs right before step i
of ours, from a hook at the start of each of ``train_sae``'s steps (our loop runs unmodified) — so that load from
other processes on a shared machine hits every row alike. Each row's tokens/s counts only its own step times: for
ours, from the start of its step to the start of the next one (forward, backward, optimizer, the loop's own
bookkeeping and next-batch gather); for sparsify, one full iteration of the mirrored Trainer loop. Step 1 of every
row is the warm-up and is not timed; before the runs every library also does two throw-away steps (thread pools,
sparse kernels, allocator). The 1-minute load average before and after is recorded: on a busy machine every row
slows down, and in our runs sparsify's more than ours (likely because its step has more multi-threaded passes over
the weights — its Adam is not fused — each of which waits for a descheduled thread), so the speed ratio measured
under load is larger than on an idle machine.

Reported per row: held-out FVU (Σ‖x − x̂‖² / Σ‖x − mean x‖² over the whole held-out set, the same evaluation code for
every row), held-out L0, dead fraction on the held-out set (latents that never fire there) and by each library's
own counter at the end of training, the last training FVU (mean of the last 20 steps), and training tokens/s.

Prints a table and writes benchmarks/results/sae_vs_sparsify.json (``--quick``: a smoke run, written to
sae_vs_sparsify_quick.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine, write_json  # noqa: E402

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # CPU: sparsify's Triton decoder cannot run

import torch  # noqa: E402

from superalign.interp.sae import SAEConfig, TopKSAE, lr_default  # noqa: E402
from superalign.interp.train_sae import SAETrainConfig, train_sae  # noqa: E402

# ---------------------------------------------------------------------------------------------------- data

def load_cache(a) -> tuple[torch.Tensor, torch.Tensor, str]:
    from superalign.interp.activations import load_activations

    if not a.cache:
        from superalign.interp.jobs import CacheJob, run_cache

        texts = str(Path(a.data) / "sst2" / "train.jsonl")
        if not Path(texts).exists():
            sys.exit(f"{texts} not found: pass --data (the shared datasets folder) or --cache DIR")
        r = run_cache(CacheJob(home=a.home, model="minilm", texts=texts, text_col="text", hook="layers.3",
                               limit=a.texts, progress=False))
        a.cache = r["artefacts"]["cache"]
    c = load_activations(a.cache)
    return c.acts.float(), c.doc, a.cache


def split_by_document(doc: torch.Tensor, eval_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    docs = doc.unique()
    perm = docs[torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed))]
    held = torch.zeros(int(doc.max()) + 1, dtype=torch.bool)
    held[perm[:max(1, int(eval_frac * len(docs)))]] = True
    is_eval = held[doc]
    return (~is_eval).nonzero().squeeze(1), is_eval.nonzero().squeeze(1)


def train_orders(n: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """The per-epoch permutations train_sae draws (after the one it uses for the geometric-median sample)."""
    gen = torch.Generator().manual_seed(seed)
    torch.randperm(n, generator=gen)
    return [torch.randperm(n, generator=gen) for _ in range(epochs)]


# ---------------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(encode, decode, X: torch.Tensor, n_latents: int, batch_size: int = 8192) -> dict:
    """Same code for every row: FVU over the whole held-out set, L0, latents that never fire on it."""
    mean = X.mean(0)
    sse = tot = l0 = 0.0
    fired = torch.zeros(n_latents, dtype=torch.bool)
    for b in range(0, len(X), batch_size):
        x = X[b:b + batch_size]
        acts, idx = encode(x)
        x_hat = decode(acts, idx)
        sse += float((x - x_hat).pow(2).sum())
        tot += float((x - mean).pow(2).sum())
        l0 += float((acts > 0).sum())
        fired[idx[acts > 0]] = True
    return {"fvu": sse / tot, "l0": l0 / len(X), "dead_frac_eval": float((~fired).float().mean())}


# ---------------------------------------------------------------------------------------------------- sparsify

def sparsify_setup(a, d: int, optimizer: str, total_steps: int):
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(a.seed)  # Trainer.__init__: torch.manual_seed(seed) right before SparseCoder(...)
    sae = SparseCoder(d, SparseCoderConfig(num_latents=a.n_latents, k=a.k), "cpu", dtype=torch.float32)
    scale = (sae.num_latents / 2 ** 14) ** 0.5
    if optimizer == "adam":
        lr = a.lr or 2e-4 / scale
        opt = torch.optim.Adam([dict(params=sae.parameters(), lr=lr)])
        warmup = a.sparsify_warmup if a.sparsify_warmup is not None else (
            1000 if total_steps >= 10_000 else total_steps // 10)
        scheds = [get_linear_schedule_with_warmup(opt, warmup, total_steps)]
    else:
        lr, warmup = 5e-3 / scale, 0
        opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
        opt.train()
        scheds = []
    state = {"since": torch.zeros(sae.num_latents, dtype=torch.long), "step": 0}

    def step(x) -> torch.Tensor:
        """One iteration of Trainer.fit (its forward hook + the optimizer block), for one batch of tokens."""
        if state["step"] == 0:
            sae.b_dec.data = x.mean(0)  # "Ensure the preactivations are centered at initialization"
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = state["since"] > a.dead_tokens if a.aux_coef > 0 else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu + a.aux_coef * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        for s in scheds:
            s.step()
        with torch.no_grad():
            state["since"] += len(x)
            state["since"][did_fire] = 0
        state["step"] += 1
        return out.fvu.detach()
    return {"sae": sae, "opt": opt, "step": step, "state": state, "lr": lr, "warmup": warmup}


# ---------------------------------------------------------------------------------------------------- lockstep run

def run_lockstep(a, Xtr: torch.Tensor, Xev: torch.Tensor, names: list[str]) -> dict:
    d, bs, n = Xtr.shape[1], a.batch_size, len(Xtr)
    orders = train_orders(n, a.epochs, a.seed)
    batches = [order[b:b + bs] for order in orders for b in range(0, n, bs)]
    others = [m for m in names if m != "superalign"]
    sp = {m: sparsify_setup(a, d, m.removeprefix("sparsify_"), len(batches)) for m in others}
    times = {m: [] for m in names}
    curves = {m: [] for m in others}
    sae = TopKSAE(SAEConfig(d_in=d, n_latents=a.n_latents, k=a.k, aux_coef=a.aux_coef, dead_tokens=a.dead_tokens),
                  seed=a.seed)
    tcfg = SAETrainConfig(batch_size=bs, epochs=a.epochs, lr=a.lr, seed=a.seed)
    fwd = sae.forward
    hook = {"i": 0, "ours_from": None}

    def lockstep_forward(x, *args, **kw):  # called once per step of train_sae, before our forward
        t = time.perf_counter()
        if hook["ours_from"] is not None:
            times["superalign"].append(t - hook["ours_from"])
        i = hook["i"]
        if i in (0, len(batches) - 1):
            assert torch.equal(x, Xtr[batches[i]]), "train_sae's batch order differs from the replayed one"
        xb = Xtr[batches[i]]
        for m in others:
            t = time.perf_counter()
            curves[m].append(sp[m]["step"](xb))
            times[m].append(time.perf_counter() - t)
        hook["i"] += 1
        if hook["i"] % max(1, len(batches) // 10) == 0 and hook["i"] > 1:
            print(f"  step {hook['i']}/{len(batches)}: " + ", ".join(
                f"{m} {bs * (len(v) - 1) / sum(v[1:]):.0f} tok/s" for m, v in times.items() if len(v) > 1), flush=True)
        hook["ours_from"] = time.perf_counter()
        return fwd(x, *args, **kw)

    sae.forward = lockstep_forward
    fit = train_sae(sae, Xtr, tcfg, progress=False)
    times["superalign"].append(time.perf_counter() - hook["ours_from"])
    del sae.forward
    assert hook["i"] == len(batches)

    tokens = n * a.epochs
    timed = tokens - min(bs, n)  # step 1 (the warm-up) is not timed

    def speed(m):
        return {"steps": len(times[m]), "tokens": tokens, "wall_s": sum(times[m]),
                "tokens_per_s": timed / sum(times[m][1:])}

    out = {"superalign": {**evaluate(lambda x: sae.encode(x)[:2], sae.decode, Xev, a.n_latents),
                          "dead_frac_own": sae.dead_fraction(),
                          "train_fvu_last20": sum(fit.fvu[-20:]) / len(fit.fvu[-20:]),
                          "lr": tcfg.lr or lr_default(a.n_latents), **speed("superalign"), "fvu_curve": fit.fvu}}
    for m in others:
        s, fv = sp[m], torch.stack(curves[m]).tolist()
        extra = {}
        if m == "sparsify_signum":  # the Trainer saves ScheduleFree's averaged weights (optimizer.eval()); both shown
            extra["fvu_last_iterate"] = evaluate(lambda x, s=s: s["sae"].encode(x)[:2], s["sae"].decode, Xev,
                                                 a.n_latents)["fvu"]
            s["opt"].eval()
        out[m] = {**evaluate(lambda x, s=s: s["sae"].encode(x)[:2], s["sae"].decode, Xev, a.n_latents),
                  "dead_frac_own": float((s["state"]["since"] > a.dead_tokens).float().mean()),
                  "train_fvu_last20": sum(fv[-20:]) / len(fv[-20:]), "lr": s["lr"], "warmup_steps": s["warmup"],
                  **extra,
                  **speed(m), "fvu_curve": fv}
    return out


# ---------------------------------------------------------------------------------------------------- main

ROWS = {"superalign": "superalign TopKSAE (Adam)", "sparsify_adam": "sparsify 1.3.3 (Adam branch)",
        "sparsify_signum": "sparsify 1.3.3 (signum, default)"}


def warm_up(a, X: torch.Tensor, names: list[str]) -> None:
    """Two throw-away steps per library on throw-away models (thread pools, sparse kernels, allocator)."""
    d, xb = X.shape[1], X[:a.batch_size]
    sae = TopKSAE(SAEConfig(d_in=d, n_latents=a.n_latents, k=a.k, aux_coef=a.aux_coef, dead_tokens=1), seed=a.seed)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    for _ in range(2):  # dead_tokens=1: the second step runs AuxK too
        out = sae(xb)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    for m in names[1:]:
        step = sparsify_setup(a, d, m.removeprefix("sparsify_"), 10)["step"]
        step(xb)
        step(xb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="the shared datasets folder (SST-2 sentences)")
    ap.add_argument("--texts", type=int, default=24000, help="SST-2 train sentences to cache")
    ap.add_argument("--cache", default=None, help="reuse an activation cache folder (superalign interp cache)")
    ap.add_argument("--home", default=os.environ.get("SUPERALIGN_HOME", str(Path(tempfile.gettempdir()) /
                                                                           "superalign_bench")))
    ap.add_argument("--n-latents", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3,
                    help="Adam lr of superalign and sparsify-adam (default: `superalign interp sae`'s; 0: both "
                         "libraries' 2e-4/sqrt(n_latents/2^14))")
    ap.add_argument("--aux-coef", type=float, default=1 / 32, help="AuxK weight (sparsify's auxk_alpha)")
    ap.add_argument("--dead-tokens", type=int, default=20000, help="tokens without firing → dead (both)")
    ap.add_argument("--sparsify-warmup", type=int, default=None, help="sparsify-adam warm-up steps")
    ap.add_argument("--sparsify", nargs="+", default=["adam", "signum"], choices=["adam", "signum"])
    ap.add_argument("--eval-frac", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2000 sentences, 1024 latents, 1 epoch")
    ap.add_argument("--out", default="benchmarks/results/sae_vs_sparsify.json")
    a = ap.parse_args()
    if a.quick:
        a.texts, a.n_latents, a.epochs = 2000, 1024, 1
    torch.set_num_threads(a.threads)
    try:
        from importlib.metadata import version

        import sparsify
        sparsify_version = version("eai-sparsify")
    except ImportError:
        sys.exit("this benchmark needs sparsify: pip install -e '.[bench]'")
    del sparsify

    X, doc, cache = load_cache(a)
    tr, ev = split_by_document(doc, a.eval_frac, a.seed)
    Xtr, Xev = X[tr].contiguous(), X[ev].contiguous()
    del X
    names = ["superalign"] + [f"sparsify_{o}" for o in a.sparsify]
    print(f"{len(Xtr)} train / {len(Xev)} held-out tokens (d = {Xtr.shape[1]}), {a.n_latents} latents, k = {a.k}, "
          f"batch {a.batch_size}, {a.epochs} epochs, AuxK {a.aux_coef:g} after {a.dead_tokens} tokens, "
          f"{a.threads} threads", flush=True)

    warm_up(a, Xtr, names)
    t, load_start = time.perf_counter(), os.getloadavg()
    results = run_lockstep(a, Xtr, Xev, names)
    wall, load_end = time.perf_counter() - t, os.getloadavg()
    print(f"lockstep training + evaluation: {wall:.0f} s; 1-min load average {load_start[0]:.1f} → {load_end[0]:.1f} "
          f"on {os.cpu_count()} CPUs (with other processes on the machine absolute tokens/s drop; lockstep gives "
          f"every row the same load)",
          flush=True)

    print(f"\n{'row':<34}{'held-out FVU':>13}{'L0':>6}{'dead eval':>10}{'dead own':>9}{'train FVU':>10}"
          f"{'lr':>9}{'steps':>6}{'wall s':>8}{'tokens/s':>9}{'ours ×':>7}")
    base = results["superalign"]
    rows = []
    for name in names:
        r = results[name]
        row = {"row": name, "label": ROWS[name], **{k: v for k, v in r.items() if k != "fvu_curve"},
               "ours_speedup": base["tokens_per_s"] / r["tokens_per_s"]}
        rows.append(row)
        print(f"{ROWS[name]:<34}{r['fvu']:>13.4f}{r['l0']:>6.1f}{r['dead_frac_eval']:>10.3f}"
              f"{r['dead_frac_own']:>9.3f}{r['train_fvu_last20']:>10.4f}{r['lr']:>9.1e}{r['steps']:>6}"
              f"{r['wall_s']:>8.1f}{r['tokens_per_s']:>9.0f}{row['ours_speedup']:>6.2f}×")
    out = Path(a.out) if not a.quick else Path(a.out).with_name(Path(a.out).stem + "_quick.json")
    write_json(out, {"args": vars(a), "sparsify": sparsify_version, "cache": cache, "train_tokens": len(Xtr),
                     "eval_tokens": len(Xev), "machine": machine(), "wall_s": wall,
                     "loadavg_1min_start_end": [load_start[0], load_end[0]], "rows": rows,
                     "fvu_curves": {n: results[n]["fvu_curve"] for n in names}})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
