"""The offline default weak-to-strong experiment across losses and seeds, plus the speed of feature caching.

    python benchmarks/w2s_offline.py [--seeds 0 1 2 3 4] [--out benchmarks/results/w2s_offline.json]

Task textblob-polarity (TextBlob's hand-tagged WordNet adjective senses), weak = bag-of-words logistic regression,
strong = MiniLM-L6 probe; losses xent / aux_conf / product. Prints the PGR table (95% CIs over seeds × test
examples), then wall time cold (features encoded) vs warm (features cached, every other stage recomputed), and the
FLOP/s achieved against the machine's measured fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine, matmul_peak_gflops, write_json  # noqa: E402

from superalign import w2s  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--task", default="textblob-polarity")
    ap.add_argument("--weak", default="bow")
    ap.add_argument("--strong", default="minilm-l6")
    ap.add_argument("--out", default="benchmarks/results/w2s_offline.json")
    a = ap.parse_args()
    kw = dict(task=a.task, weak=a.weak, strong=a.strong, loss=["xent", "aux_conf", "product"], seed=a.seeds,
              progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="w2s_offline_"))
    try:
        t = time.perf_counter()
        cold = w2s.run(home=str(tmp / "cold"), **kw)
        cold_s = time.perf_counter() - t
        (tmp / "warm" / "cache").mkdir(parents=True)
        shutil.copytree(tmp / "cold" / "cache" / "features", tmp / "warm" / "cache" / "features")
        t = time.perf_counter()
        warm = w2s.run(home=str(tmp / "warm"), **kw)
        warm_s = time.perf_counter() - t
        group = cold.store.get(cold.group_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(cold.table())
    flops = group["compute"]["flops_total"]
    peak = matmul_peak_gflops()
    n_runs = len(cold.records)
    print(f"\n{n_runs} runs ({len(a.seeds)} seeds × 3 losses); wall: cold {cold_s:.1f} s (features encoded), "
          f"warm {warm_s:.1f} s (features cached) → {cold_s / warm_s:.1f}× faster with the feature cache")
    enc = group["compute"]["encode"]
    enc_gflops = enc["flops"] / max(enc["wall_s"], 1e-9) / 1e9
    print(f"estimated FLOPs {flops:.3g}; MiniLM encoding {enc_gflops:.1f} GFLOP/s vs measured fp32 matmul peak "
          f"{peak:.1f} GFLOP/s ({100 * enc_gflops / peak:.0f}%)")
    assert [r["student_acc"] for r in cold.rows] == [r["student_acc"] for r in warm.rows]
    write_json(a.out, {"rows": cold.rows, "cold_s": cold_s, "warm_s": warm_s, "flops": flops,
                       "encode_gflops": enc_gflops, "matmul_peak_gflops": peak, "machine": machine(), "args": vars(a)})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
