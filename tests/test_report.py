"""The HTML report on synthetic runs only (no model, no network): escaping, embedded plots, NaN, empty store,
atomic writes."""

import math
import re

import pytest

from superalign.errors import SuperalignError
from superalign.runs import RunStore, html, report
from superalign.runs.report import write_report
from superalign.w2s.report import plot_student_vs_weak

EVIL = "<script>alert(1)</script>"
EVIL_ESC = "&lt;script&gt;alert(1)&lt;/script&gt;"
NAN = float("nan")


def _row(task, weak, loss, pgr, weak_acc=0.7, ci=(0.2, 0.8)):
    nan_pgr = math.isnan(pgr)
    return {"task": task, "weak": weak, "strong": "minilm-l6", "loss": loss, "seeds": [0, 1], "weak_acc": weak_acc,
            "student_acc": weak_acc + 0.08, "ceiling_acc": 0.86, "weak_auroc": 0.75, "student_auroc": 0.85,
            "ceiling_auroc": 0.92, "pgr_acc": pgr, "pgr_acc_ci": [NAN, NAN] if nan_pgr else list(ci),
            "pgr_auroc": 0.5, "pgr_auroc_ci": [0.3, 0.7], "pgr_acc_per_seed": [pgr, pgr],
            "pgr_auroc_per_seed": [0.5, 0.5], "agree_weak_correct": 0.9, "agree_weak_wrong": 0.4,
            "diag_gt_es_student_acc": 0.8, "run_ids": [f"w2s-{weak}-{loss}-0", f"w2s-{weak}-{loss}-1"],
            "wall_s": 1.0, "flops": 1e9, **({"pgr_acc_note": f"gap too small {EVIL}"} if nan_pgr else {})}


def _sweep(s, rid, rows, task=EVIL):
    s.start(rid, "w2s-sweep", {"task": task, "weak": sorted({r["weak"] for r in rows}), "strong": ["minilm-l6"],
                               "loss": sorted({r["loss"] for r in rows}), "seed": [0, 1], "mode": "probe"})
    s.finish(rid, {"rows": rows, "n_runs": 2 * len(rows), "n_new": 0}, {"runs": []},
             {"wall_s": 2.0, "flops_total": 2e9})


@pytest.fixture()
def store(tmp_path):
    s = RunStore(tmp_path / "home")
    # A NaN PGR, a CI that does not contain its estimate (negative error bar), and a '$' (mathtext) in a name.
    _sweep(s, "w2s-sweep-a", [_row(EVIL, "bow", "xent", 0.5), _row(EVIL, "bow", "aux_conf", NAN),
                              _row(EVIL, "mini$lm", "xent", 0.9, weak_acc=0.75, ci=(0.95, 1.1))])
    for seed in (0, 1):
        rid = f"w2s-bow-xent-{seed}"
        s.start(rid, "w2s", {"task": EVIL, "weak": "bow", "strong": "minilm-l6", "loss": "xent", "seed": seed},
                "w2s-sweep-a")
        s.finish(rid, {"weak_acc": 0.7, "student_acc": 0.78, "ceiling_acc": 0.86, "pgr_acc": NAN},
                 {}, {"wall_s": 1.5, "flops_total": 1e9})
    s.start("future-kind-1", "future-kind", {"model": "tiny", "beta": 0.1})
    s.finish("future-kind-1", {"pair_acc": 0.66, "rm_loss": 0.61, "n_pairs": 128, "name": EVIL}, {}, {"wall_s": 3.0})
    s.start("w2s-bad", "w2s", {"task": "t", "weak": "bow", "strong": "x", "loss": "xent", "seed": 0})
    s.fail("w2s-bad", f"ValueError: {EVIL}")
    return s


def test_report_escapes_plots_and_nan(store, tmp_path):
    out = write_report(store, tmp_path / "out" / "r.html")
    assert out == tmp_path / "out" / "r.html" and out.is_file()
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert EVIL_ESC in text and "<script" not in text.lower()
    assert text.count("data:image/png;base64,") == 2  # one sweep: student-vs-weak and PGR plots
    assert "n/a" in text and "nan" not in re.sub(r"base64,[^\"]*", "", text).lower()
    # an unknown kind: its scalar metrics as key=value, strings escaped
    assert "pair_acc=0.660" in text and "rm_loss=0.610" in text and "n_pairs=128" in text
    assert f"name={EVIL_ESC}" in text
    assert "future-kind" in text and "w2s-bad" in text and "failed" in text
    assert "no runs" not in text.lower()
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # no temp file left behind


def test_report_combines_several_sweeps_and_filters_kinds(store, tmp_path):
    _sweep(store, "w2s-sweep-b", [_row("imdb", "bow", "product", 0.3)], task="imdb")
    text = write_report(store, tmp_path / "r.html").read_text()
    assert text.count("data:image/png;base64,") == 6  # two sweeps + combined
    assert "All 2 sweeps combined" in text
    only = write_report(store, tmp_path / "rm.html", kinds=["future-kind"]).read_text()
    assert "pair_acc=0.660" in only and "data:image/png" not in only and "w2s-bad" not in only
    none = write_report(store, tmp_path / "none.html", kinds=["rlhf-ppo"]).read_text()  # declared, none stored
    assert "No runs of kind rlhf-ppo yet" in none
    with pytest.raises(SuperalignError, match="unknown run kind.*nope"):  # a misspelt kind is not an empty report
        write_report(store, tmp_path / "nope.html", kinds=["nope"])
    assert not (tmp_path / "nope.html").exists()


def test_report_empty_store(tmp_path):
    out = write_report(RunStore(tmp_path / "h"), tmp_path / "r.html")
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "No runs yet" in text and text.rstrip().endswith("</html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h", "r.html"]


def test_report_failure_keeps_old_file_and_no_temp(store, tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    out.write_text("old")
    monkeypatch.setattr(report.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_report(store, out)
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir() if p.name != "home"] == ["r.html"]


def test_formatting():
    assert html.fmt(NAN) == "n/a" and html.fmt(None) == "n/a" and html.fmt(0.5, pct=True) == "50.0"
    assert html.fmt(EVIL) == EVIL_ESC and html.esc('"') == "&quot;"
    assert plot_student_vs_weak([{**_row("t", "w", "l", NAN), "weak_acc": NAN}]) == ""


def test_corrupt_artefact_breaks_only_its_section(store, tmp_path):
    """A damaged transcript (not UTF-8) and a records file that is not JSON: the debate and interp sections say
    which file is wrong (escaped); the w2s section, the other runs and the runs table still render."""
    bad = tmp_path / "<img src=x onerror=alert(1)>.jsonl"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe binary")
    store.start("debate-x", "debate", {"k": 4, "debater": "greedy"})
    store.finish("debate-x", {"debate_acc": 0.8, "judge_alone_acc": 0.5}, {"transcript": str(bad)})
    rec = tmp_path / "records.json"
    rec.write_text("{not json")
    store.start("interp-explain-x", "interp-explain", {"sae": "s"})
    store.finish("interp-explain-x", {"explainer": "token-lookup"}, {"records": str(rec)})
    text = write_report(store, tmp_path / "r.html").read_text()
    assert "<h2>Scalable oversight: debate</h2>" in text and "<h2>Interpretability</h2>" in text
    assert "is not UTF-8" in text and html.esc(str(bad)) in text and "<img src=x" not in text
    assert "records.json is not valid JSON" in text
    assert text.count("data:image/png;base64,") == 2  # the w2s sweep's plots
    assert "debate_acc=0.800" in text and "judge_alone_acc=0.500" in text and text.rstrip().endswith("</html>")
