"""The `superalign` command line. Flags of each job are generated from its config dataclass."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from .config import add_dataclass_args, from_args
from .errors import SuperalignError


def _w2s(ns: argparse.Namespace) -> int:
    from .w2s import W2SConfig, run, sweep

    cfg = from_args(W2SConfig, ns)
    res = run(cfg) if ns.w2s_cmd == "run" else sweep(cfg)
    print(res.table())
    print()
    for r in res.rows:
        a = r["agree_weak_wrong"]
        print(f"{r['weak']} → {r['strong']} [{r['loss']}]: student agrees with the supervisor on "
              f"{_pct(r['agree_weak_correct'])} of weak-correct and {_pct(a)} of weak-wrong test examples; "
              f"ground-truth early stopping (diagnostic only) would give {_pct(r['diag_gt_es_student_acc'])}")
    print(f"\nstored: {res.store.db_path} (group {res.group_id}, {len(res.records)} runs); "
          f"wall {res.wall_s:.1f} s. See `superalign runs list` and `superalign report`.")
    return 0


def _job(ns: argparse.Namespace) -> int:
    """Run one job of any pillar (rlhf, interp, debate) and print its metrics, samples and artefacts."""
    from .rlhf.jobs import JOBS
    from .rlhf.overopt import OveroptJob, run_overopt

    if getattr(ns, "debate_cmd", None):
        from .oversight.jobs import JOBS as DEBATE_JOBS
        cls, fn = DEBATE_JOBS[ns.debate_cmd]
    elif getattr(ns, "interp_cmd", None):
        from .interp.jobs import JOBS as INTERP_JOBS
        cls, fn = INTERP_JOBS[ns.interp_cmd]
    else:
        cls, fn = (OveroptJob, run_overopt) if ns.rlhf_cmd == "overopt" else JOBS[ns.rlhf_cmd]
    r = fn(from_args(cls, ns))
    m = r["metrics"]
    scal = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    width = max(map(len, scal), default=0)
    for k, v in scal.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    for s in m.get("samples", [])[-4:]:
        print("sample:", json.dumps(s, ensure_ascii=False))
    for s in m.get("examples", []):
        print("example:", json.dumps(s, ensure_ascii=False))
    for k, v in r["artefacts"].items():
        print(f"{k}: {v}")
    print(f"\nrun {r['id']} ({'already done: stored result' if r.get('cached') else 'stored'}); "
          "see `superalign runs show` and `superalign report`.")
    return 0


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _runs(ns: argparse.Namespace) -> int:
    from .runs import RunStore

    store = RunStore(ns.home)
    if ns.runs_cmd == "list":
        rows = store.list(kind=ns.kind, status=ns.status)
        if not rows:
            print(f"no runs in {store.db_path}")
            return 0
        print(f"{'id':<34} {'kind':<10} {'status':<8} {'created':<19} summary")
        for r in rows:
            print(f"{r['id']:<34} {r['kind']:<10} {r['status']:<8} "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['created_at'] or 0))} {_summary(r)}")
        return 0
    r = store.get(ns.id) or store.find(ns.id)
    if r is None:
        raise SuperalignError(f"no run with id {ns.id!r} in {store.db_path}", "see `superalign runs list`")
    print(json.dumps(r, indent=2, default=str))
    return 0


def _summary(r: dict) -> str:
    c, m = r["config"], r["metrics"]
    if r["kind"] == "w2s":
        return (f"{c['task']} {c['weak']}→{c['strong']} {c['loss']} seed={c['seed']} "
                f"weak={_pct(m.get('weak_acc'))} student={_pct(m.get('student_acc'))} "
                f"ceiling={_pct(m.get('ceiling_acc'))} pgr={m.get('pgr_acc', float('nan')):.3f}")
    if r["kind"] == "w2s-sweep":
        return f"{c.get('task')} {len(r['artefacts'].get('runs', []))} runs" + (f" error: {r['error']}" if r["error"] else "")
    scal = {k: v for k, v in m.items() if isinstance(v, (int, float))}
    return " ".join(f"{k}={v:.4g}" for k, v in list(scal.items())[:6])


def _report(ns: argparse.Namespace) -> int:
    from .runs import RunStore
    from .runs.report import write_report

    store = RunStore(ns.home)
    out = write_report(store, ns.out, kinds=ns.kind)
    print(f"wrote {out}")
    return 0


def _list(ns: argparse.Namespace) -> int:
    if ns.cmd == "tasks":
        from .data import list_tasks
        items = list_tasks()
    else:
        from .models import list_models
        items = list_models()
    for k, v in items.items():
        print(f"{k:<24} {v}")
    return 0


def _add_jobs(subparsers, jobs: dict) -> None:
    """One subcommand per job: flags from its config dataclass, help from its docstring."""
    for name, (cls, _) in jobs.items():
        doc = (cls.__doc__ or name).strip()
        sp = subparsers.add_parser(name, help=doc, description=doc)
        add_dataclass_args(sp, cls)
        sp.set_defaults(fn=_job)


def build_parser() -> argparse.ArgumentParser:
    from .w2s import W2SConfig

    p = argparse.ArgumentParser(prog="superalign", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    w = sub.add_parser("w2s", help="weak-to-strong generalization (Burns et al. 2023)")
    wsub = w.add_subparsers(dest="w2s_cmd", required=True)
    for name, help_ in (("run", "one weak → strong pair: weak, student per loss, ceiling, PGR with 95%% CI"),
                        ("sweep", "a grid over weak × strong × loss × seed; resumes, local or Ray")):
        sp = wsub.add_parser(name, help=help_, description=help_)
        add_dataclass_args(sp, W2SConfig)
        sp.set_defaults(fn=_w2s)

    from .rlhf.jobs import JOBS
    from .rlhf.overopt import OveroptJob

    rl = sub.add_parser("rlhf", help="RLHF: SFT, reward models, PPO, DPO, best-of-n, over-optimization")
    rlsub = rl.add_subparsers(dest="rlhf_cmd", required=True)
    helps = {"sft": "supervised finetuning on prompt/completion demonstrations",
             "rm": "reward model from comparisons (Bradley–Terry, K-wise, reward at EOS, bias normalization)",
             "ppo": "PPO against a reward model with a per-token KL penalty (InstructGPT)",
             "dpo": "direct preference optimization (sigmoid loss)",
             "bon": "best-of-n sampling against a reward model",
             "overopt": "gold vs proxy reward against sqrt(KL) for best-of-n and PPO (Gao et al. 2022)"}
    for name, cls in [(k, v[0]) for k, v in JOBS.items()] + [("overopt", OveroptJob)]:
        sp = rlsub.add_parser(name, help=helps[name], description=(cls.__doc__ or helps[name]).strip())
        add_dataclass_args(sp, cls)
        sp.set_defaults(fn=_job)

    from .interp.jobs import JOBS as INTERP_JOBS

    ip = sub.add_parser("interp", help="automated interpretability: activation caches, sparse autoencoders, "
                                       "explain → simulate → score")
    _add_jobs(ip.add_subparsers(dest="interp_cmd", required=True), INTERP_JOBS)

    from .oversight.jobs import JOBS as DEBATE_JOBS, add_report_parser

    dp = sub.add_parser("debate", help="scalable oversight: debate on sparse-pixel MNIST judges (Irving et al. 2018)")
    dsub = dp.add_subparsers(dest="debate_cmd", required=True)
    _add_jobs(dsub, DEBATE_JOBS)
    add_report_parser(dsub)

    r = sub.add_parser("runs", help="list or show stored runs")
    rsub = r.add_subparsers(dest="runs_cmd", required=True)
    rl = rsub.add_parser("list", help="one line per run")
    rl.add_argument("--kind", help="only runs of this kind (w2s, w2s-sweep, ...)")
    rl.add_argument("--status", choices=("running", "done", "failed"))
    rs = rsub.add_parser("show", help="a run's config, metrics, artefacts and compute as JSON")
    rs.add_argument("id", help="run id (or a unique prefix)")
    for sp in (rl, rs):
        sp.add_argument("--home", help="run store folder (else $SUPERALIGN_HOME or ./superalign_runs)")
        sp.set_defaults(fn=_runs)

    rep = sub.add_parser("report", help="one self-contained HTML report of the run store")
    rep.add_argument("--out", default="superalign_report.html", help="output HTML file")
    rep.add_argument("--kind", action="append", help="only runs of this kind (repeatable); default: all")
    rep.add_argument("--home", help="run store folder (else $SUPERALIGN_HOME or ./superalign_runs)")
    rep.set_defaults(fn=_report)

    for name in ("tasks", "models"):
        sub.add_parser(name, help=f"list registered {name}").set_defaults(fn=_list)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return ns.fn(ns)
    except SuperalignError as e:
        print(f"superalign: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `superalign runs list | head`
        return 0
    except KeyboardInterrupt:
        print("superalign: interrupted; finished runs are saved — rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
