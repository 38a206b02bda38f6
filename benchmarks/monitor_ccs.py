"""Latent-knowledge probes on SmolLM2-135M: zero-shot vs CCS vs mass-mean vs logistic regression, plain and under
the two robustness checks from the literature.

    python benchmarks/monitor_ccs.py [--model smollm2] [--datasets vader boolq sst2] [--n 100] [--prefix-k 3]
                                     [--layers 0 5 10 15 20 25 30] [--home DIR] [--data-dir DIR] [--threads 1]
    python benchmarks/monitor_ccs.py --quick --model <tiny causal LM>   # CI-sized, a few seconds

For each dataset (the shared SST-2 and BoolQ validation splits, skipped cleanly when the shared data is absent, and
the built-in offline ``vader`` word-sentiment task) three real ``superalign monitor probe`` runs go through the run
store (so hidden states are computed once per dataset × template × condition, and a rerun with the same ``--home``
costs nothing):

- **plain**: each method's held-out accuracy at its best layer, and per layer;
- **misleading prefix** (Burns et al. 2022, §3.3): ``--prefix-k`` demonstrations from rows that are not evaluated,
  each answered WRONGLY, prepended to every text and to the zero-shot prompt — the drop of zero-shot vs the drop of
  CCS, next to the paper's "zero-shot accuracy drops by up to ~9.5 points while CCS holds";
- **banana/shed distractor** (Farquhar et al. 2023, §4.1): 'Banana.' appended to one side of each pair and 'Shed.'
  to the other at random — does CCS find the truth or the distractor?

Sizes were cut to fit ≤ 15 minutes on 2 CPU cores: 100 pairs per dataset (50 fit / 50 held out, so a 95% CI is
about ±13 points), 3 demonstrations in the prefix, 7 of the 31 layers (every 5th), CCS with 10 restarts × 1000
steps (Burns et al.'s settings). "Best layer" is chosen on the held-out pairs, so it is optimistic for every probe
alike; the per-layer table shows the whole curve. Writes benchmarks/results/monitor_ccs.json and the tables as
monitor_ccs.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _util import machine, write_json  # noqa: E402

from superalign.runs.files import write_text_atomic  # noqa: E402

CONDITIONS = {"plain": {}, "misleading": {"prefix": "misleading"}, "distractor": {"distractor": "banana-shed"}}
METHODS = (("zero_shot", "zero-shot"), ("ccs", "CCS"), ("mass_mean", "mass-mean"), ("logreg", "logistic reg."))


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def run_dataset(ds: str, a, home: Path) -> dict | None:
    """The three probe runs of one dataset (None when its shared data is absent)."""
    from superalign.monitor.jobs import ProbeJob, run_probe
    from superalign.monitor.pairs import SHARED_FILES, shared_path

    if ds in SHARED_FILES and not shared_path(ds, "validation", a.data_dir).is_file():
        print(f"skipping {ds}: {shared_path(ds, 'validation', a.data_dir)} is absent (set --data-dir or "
              "$SUPERALIGN_DATA)")
        return None
    out = {}
    for cond, kw in CONDITIONS.items():
        t = time.perf_counter()
        job = ProbeJob(model=a.model, dataset=ds, n=a.n, layers=a.layers, prefix_k=a.prefix_k,
                       ccs_restarts=a.ccs_restarts, ccs_epochs=a.ccs_epochs, data_dir=a.data_dir or "",
                       home=str(home), progress=False, seed=a.seed, **kw)
        r = run_probe(job)
        per = json.loads(Path(r["artefacts"]["per_layer"]).read_text())
        out[cond] = {"run": r["id"], "metrics": r["metrics"], "per_layer": per, "cached": bool(r.get("cached")),
                     "wall_s": time.perf_counter() - t}
        m = r["metrics"]
        print(f"{ds:<6} {cond:<10} zero-shot {pct(m['zero_shot_acc'])}  CCS {pct(m['ccs_best_acc'])} "
              f"(layer {m['ccs_best_layer']})  mass-mean {pct(m['mass_mean_best_acc'])}  logreg "
              f"{pct(m['logreg_best_acc'])}  [{time.perf_counter() - t:.0f} s]", flush=True)
    return out


def tables(res: dict, layers: list[int]) -> str:
    lines = ["### Held-out accuracy (%) at each method's best layer",
             "", "| dataset | condition | pairs (test) | zero-shot | zero-shot calibrated | CCS | mass-mean | "
             "logistic reg. |", "|---|---|---|---|---|---|---|---|"]
    for ds, conds in res.items():
        for cond, r in conds.items():
            m = r["metrics"]
            lines.append(f"| {ds} | {cond} | {m['n_pairs']} ({m['n_test']}) | {pct(m['zero_shot_acc'])} | "
                         f"{pct(m['zero_shot_calibrated_acc'])} | "
                         + " | ".join(f"{pct(m[f'{k}_best_acc'])} (L{m[f'{k}_best_layer']})"
                                      for k in ("ccs", "mass_mean", "logreg")) + " |")
    lines += ["", "### Misleading prefix: accuracy drop (plain − misleading, points; positive = worse with the prefix; "
              "Burns et al.: zero-shot drops by up to ~9.5 while CCS holds)", "",
              "| dataset | zero-shot | zero-shot calibrated | CCS (best layer) | CCS (plain's best layer) | "
              "mass-mean | logistic reg. |", "|---|---|---|---|---|---|---|"]
    for ds, conds in res.items():
        p, q = conds["plain"]["metrics"], conds["misleading"]["metrics"]
        fixed = str(p["ccs_best_layer"])
        ccs_fixed = (conds["plain"]["per_layer"]["layers"][fixed]["ccs"]["acc"]
                     - conds["misleading"]["per_layer"]["layers"][fixed]["ccs"]["acc"])
        lines.append(f"| {ds} | {100 * (p['zero_shot_acc'] - q['zero_shot_acc']):+.1f} "
                     f"({pct(p['zero_shot_acc'])} → {pct(q['zero_shot_acc'])}) | "
                     f"{100 * (p['zero_shot_calibrated_acc'] - q['zero_shot_calibrated_acc']):+.1f} | "
                     f"{100 * (p['ccs_best_acc'] - q['ccs_best_acc']):+.1f} | {100 * ccs_fixed:+.1f} (L{fixed}) | "
                     + " | ".join(f"{100 * (p[f'{k}_best_acc'] - q[f'{k}_best_acc']):+.1f}"
                                  for k in ("mass_mean", "logreg")) + " |")
    lines += ["", "### Banana/shed distractor (Farquhar et al. 2023): what the direction separates, either sign (%)",
              "", "| dataset | CCS vs truth | CCS vs distractor | CCS found | layer | zero-shot vs distractor | "
              "mass-mean vs truth / distractor | logistic reg. vs truth / distractor |",
              "|---|---|---|---|---|---|---|---|"]
    for ds, conds in res.items():
        m = conds["distractor"]["metrics"]
        lines.append(f"| {ds} | {pct(m['ccs_truth_acc'])} | {pct(m['ccs_distractor_acc'])} | "
                     f"{'distractor' if m['ccs_finds_distractor'] else 'truth'} | L{m['ccs_found_layer']} | "
                     f"{pct(m['zero_shot_distractor_acc'])} | "
                     f"{pct(m['mass_mean_best_acc'])} / {pct(m['mass_mean_distractor_acc'])} | "
                     f"{pct(m['logreg_best_acc'])} / {pct(m['logreg_distractor_acc'])} |")
    lines += ["", f"### Per layer, plain (held-out accuracy %, layers {', '.join(map(str, layers))}; "
              "0 = embeddings)", "", "| dataset | method | " + " | ".join(f"L{x}" for x in layers) + " |",
              "|---|---|" + "---|" * len(layers)]
    for ds, conds in res.items():
        per = conds["plain"]["per_layer"]["layers"]
        for k, name in METHODS[1:]:
            lines.append(f"| {ds} | {name} | " + " | ".join(pct(per[str(x)][k]["acc"]) for x in layers) + " |")
        dper = conds["distractor"]["per_layer"]["layers"]
        lines.append(f"| {ds} | CCS vs distractor (distractor run) | "
                     + " | ".join(pct(dper[str(x)]["ccs"]["distractor_acc_any_sign"]) for x in layers) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--datasets", nargs="+", default=["vader", "boolq", "sst2"], help="cheapest first")
    ap.add_argument("--n", type=int, default=100, help="contrast pairs per dataset (half held out)")
    ap.add_argument("--prefix-k", type=int, default=3, help="wrongly answered demonstrations in the prefix")
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 5, 10, 15, 20, 25, 30])
    ap.add_argument("--ccs-restarts", type=int, default=10)
    ap.add_argument("--ccs-epochs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None, help="shared data folder (else $SUPERALIGN_DATA)")
    ap.add_argument("--home", help="run store (default: a fresh temporary folder)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (1 is faster when other jobs share the cores: no spin-waiting)")
    ap.add_argument("--quick", action="store_true",
                    help="CI-sized: vader only, 16 pairs, 2 demonstrations, layers 0 and 2, CCS 2 × 30 steps")
    ap.add_argument("--out", default="benchmarks/results/monitor_ccs.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.quick:
        a.datasets, a.n, a.prefix_k, a.layers, a.ccs_restarts, a.ccs_epochs = ["vader"], 16, 2, [0, 2], 2, 30
    home = Path(a.home) if a.home else Path(tempfile.mkdtemp(prefix="monitor_ccs_"))
    t = time.perf_counter()
    out = Path(a.out)
    if a.quick and a.out == ap.get_default("out"):
        out = out.with_name(out.stem + "_quick.json")
    res = {}

    def save(complete: bool) -> tuple[dict, str]:
        """The results so far, written after every dataset (atomically), so a cut-short run still leaves its tables."""
        table = tables(res, a.layers) if res else "no dataset was available"
        summary = {ds: {cond: r["metrics"] for cond, r in conds.items()} for ds, conds in res.items()}
        write_json(out, {"args": vars(a), "complete": complete, "wall_s": time.perf_counter() - t,
                         "machine": machine(), "summary": summary, "table": table, "results": res})
        write_text_atomic(out.with_suffix(".md"), f"# {out.stem}: `{' '.join(sys.argv[1:] or ['(defaults)'])}`"
                          f"{'' if complete else ' (incomplete)'}\n\n{table}\n")
        return summary, table

    for ds in a.datasets:
        r = run_dataset(ds, a, home)
        if r is not None:
            res[ds] = r
            save(False)
    summary, table = save(True)
    print("\n" + table + f"\n\nwall {(time.perf_counter() - t) / 60:.1f} min, model {a.model}, home {home}")
    print(f"wrote {out}")
    return {"summary": summary, "table": table, "out": str(out)}


if __name__ == "__main__":
    main()
