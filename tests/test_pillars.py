"""The pillar registry: a pillar registered at run time (here, in this file only) appears in the CLI, in
`runs list` and in the report; the built-in pillars are declared once; the package has no import cycles."""

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import superalign
from superalign import pillars
from superalign.cli import build_parser, main
from superalign.pillars import Command, Job, Pillar, RunKind, register_pillar, unregister_pillar
from superalign.runs import RunStore
from superalign.runs.html import esc, read_jsonl, table
from superalign.runs.report import render

# ------------------------------------------------------------------------------------------------ a toy pillar

@dataclass
class ToyJob:
    """Count to n and record it (a toy job)."""

    n: int = field(default=2, metadata={"help": "how far to count (100% toy)"})
    shape: str = field(default="round", metadata={"help": "shape of the toy", "choices": ("round", "square")})
    home: str | None = field(default=None, metadata={"help": "run store folder"})


def run_toy(job: ToyJob) -> dict:
    store = RunStore(job.home)
    rid = f"toy-{job.n}-{job.shape}"
    store.start(rid, "toy-count", {"n": job.n, "shape": job.shape, "noise": "not shown"})
    store.finish(rid, {"total": job.n * (job.n + 1) // 2, "hidden_metric": 7.0}, {})
    return store.get(rid)


def toy_section(runs: list[dict]) -> str:
    rows = [[esc(r["id"]), esc((r.get("metrics") or {}).get("total"))] for r in runs]
    return "<h2>Toy pillar</h2>" + table(["run", "total"], rows)


def _add_echo_args(parser) -> None:
    parser.add_argument("words", nargs="+")


def _echo(ns) -> int:
    print("echo:", " ".join(ns.words))
    return 0


TOY = Pillar(name="toy", title="Toy pillar", help="a toy pillar registered by the test (50% of nothing)",
             jobs=(Job("count", ToyJob, run_toy, help="count to n"),),
             commands=(Command("echo", _add_echo_args, _echo, help="print the words"),),
             kinds=(RunKind("toy-count", config=("n", "shape"), metrics=("total",)),),
             section=toy_section)


@pytest.fixture()
def toy():
    register_pillar(TOY)
    yield TOY
    unregister_pillar("toy")


def test_toy_pillar_in_cli_runs_list_and_report(toy, tmp_path, capsys):
    parser = build_parser()
    ns = parser.parse_args(["toy", "count", "--n", "4", "--shape", "square"])
    assert ns.n == 4 and ns.shape == "square"
    with pytest.raises(SystemExit):
        parser.parse_args(["toy", "count", "--shape", "oval"])  # choices from the config's metadata
    home = str(tmp_path / "h")
    assert main(["toy", "count", "--n", "4", "--home", home]) == 0
    out = capsys.readouterr().out
    assert "total          10" in out and "run toy-4-round (stored)" in out
    assert main(["toy", "echo", "a", "b"]) == 0 and "echo: a b" in capsys.readouterr().out
    # runs list: the declared key config and headline metrics only
    assert main(["runs", "list", "--home", home]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("toy-4-round"))
    assert "n=4 shape=round | total=10" in line and "noise" not in line and "hidden_metric" not in line
    # the report: the toy section, and the runs table with the declared fields
    html = render(RunStore(home))
    assert "<h2>Toy pillar</h2>" in html and "toy-4-round" in html and "total=10" in html
    assert "hidden_metric" not in html


def test_toy_pillar_gone_after_unregister(tmp_path):
    register_pillar(TOY)
    with pytest.raises(ValueError, match="already registered"):
        register_pillar(TOY)
    assert unregister_pillar("toy") is TOY
    assert "toy" not in [p.name for p in pillars.pillars()]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["toy", "count"])


def test_registry_refuses_reserved_names_and_duplicate_kinds():
    with pytest.raises(ValueError, match="built-in command"):
        register_pillar(Pillar(name="report", title="x", help="x"))
    with pytest.raises(ValueError, match="already declared by 'debate'"):
        register_pillar(Pillar(name="other", title="x", help="x", kinds=(RunKind("debate"),)))
    with pytest.raises(ValueError, match="subcommand twice"):
        register_pillar(Pillar(name="other", title="x", help="x", jobs=(Job("a", ToyJob, run_toy, "a"),),
                               commands=(Command("a", _add_echo_args, _echo, "a"),)))
    assert "other" not in [p.name for p in pillars.pillars()]


def test_builtin_pillars_declare_every_command_and_kind():
    names = [p.name for p in pillars.pillars()]
    assert names[:4] == ["w2s", "rlhf", "interp", "debate"]
    by = {p.name: p for p in pillars.pillars()}
    assert by["w2s"].subcommands() == ["run", "sweep"]
    assert by["rlhf"].subcommands() == ["sft", "rm", "ppo", "grpo", "rloo", "dpo", "online-dpo", "bon", "overopt"]
    assert by["interp"].subcommands() == ["cache", "sae", "explain", "score"]
    assert by["debate"].subcommands() == ["train-judge", "run", "report"]
    assert pillars.run_kind("debate").metrics[0] == "judge_alone_acc"
    assert {"w2s", "w2s-sweep", "rlhf-overopt", "interp-sae", "debate-judge"} <= set(pillars.known_kinds())
    for p in pillars.pillars():  # every string reference resolves
        for j in p.jobs:
            assert callable(pillars.resolve(j.run)) and j.config_class().__dataclass_fields__
        for c in p.commands:
            assert callable(pillars.resolve(c.run)) and callable(pillars.resolve(c.add_arguments))
        assert callable(pillars.resolve(p.section))


# ------------------------------------------------------------------------------------------------ the report

def test_failing_section_is_contained(toy, tmp_path):
    """A section that raises shows the (escaped) error; the other sections and the runs table still render."""
    s = RunStore(tmp_path / "h")
    s.start("toy-x", "toy-count", {"n": 1})
    s.finish("toy-x", {"total": 1}, {})
    bad = Pillar(name="toy", title="Toy pillar", help="x", kinds=TOY.kinds,
                 section=lambda runs: (_ for _ in ()).throw(RuntimeError("<b>boom</b>")))
    register_pillar(bad, replace=True)
    html = render(s)
    assert "the Toy pillar section could not be rendered: RuntimeError: &lt;b&gt;boom&lt;/b&gt;" in html
    assert "<b>boom" not in html and "<h2>All runs</h2>" in html and "toy-x" in html


def test_read_jsonl_names_a_damaged_artefact(tmp_path):
    assert read_jsonl(None) == [] and read_jsonl(tmp_path / "gone.jsonl") == []
    p = tmp_path / "t.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"t.jsonl line 2 is not valid JSON"):
        read_jsonl(p)
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="t.jsonl is not UTF-8"):
        read_jsonl(p)
    p.write_text(json.dumps([1, 2]) + "\n")
    with pytest.raises(ValueError, match="a JSON list, not an object"):
        read_jsonl(p)


# ------------------------------------------------------------------------------------------------ import cycles

PACKAGE = Path(superalign.__file__).resolve().parent

# Edges that another change removes; each must go when that change lands (the test fails on a cycle not listed).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return mods


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST):
    """Every import statement, at module level and inside functions and classes, except under TYPE_CHECKING
    (never executed, so it cannot close a cycle at run time)."""
    for node in ast.iter_child_nodes(tree):
        if _is_type_checking(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports. ``from pkg import name`` points at ``pkg.name`` when that is a
    module, else at ``pkg``; relative imports are resolved against the importing module's package."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, (path, is_pkg) in mods.items():
        package = m.split(".") if is_pkg else m.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import superalign.x.y` of a name inside a module
                    t = t.rpartition(".")[0]
                if t and t != m:
                    graph[m].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a → … → a) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:  # a shortest way back to the start, for a readable message
        start = min(comp)
        prev = {start: None}
        frontier = [start]
        while frontier and start not in [w for v in frontier for w in graph[v]]:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in graph[v])
        path = [start]
        while last is not None and last != start:
            path.insert(1, last)
            last = prev[last]
        cycles.append(path + [start])
    return cycles


def test_cycle_finder_sees_function_level_and_relative_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    g = import_graph()
    assert "superalign.errors" in g["superalign.runs.jobs"]        # from ..errors import (relative, two levels)
    assert "superalign.runs.report" in g["superalign.cli"]         # from .runs.report import (inside a function)
    assert "superalign.interp.sae_base" in g["superalign.interp.sae"]


def test_no_import_cycles():
    graph = import_graph()
    for a, b in KNOWN_CYCLE_EDGES:
        graph.get(a, set()).discard(b)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)
