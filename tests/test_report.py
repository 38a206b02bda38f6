import math

from superalign.runs import RunStore
from superalign.runs.report import write_report

EVIL = "<script>alert(1)</script>"


def _row(loss, pgr):
    return {"task": EVIL, "weak": "bow", "strong": "minilm-l6", "loss": loss, "seeds": [0, 1], "weak_acc": 0.7,
            "student_acc": 0.78, "ceiling_acc": 0.86, "weak_auroc": 0.75, "student_auroc": 0.85, "ceiling_auroc": 0.92,
            "pgr_acc": pgr, "pgr_acc_ci": [0.2, 0.8] if not math.isnan(pgr) else [math.nan, math.nan],
            "pgr_auroc": 0.5, "pgr_auroc_ci": [0.3, 0.7], "pgr_acc_per_seed": [pgr, pgr], "pgr_auroc_per_seed": [0.5, 0.5],
            "agree_weak_correct": 0.9, "agree_weak_wrong": 0.4, "diag_gt_es_student_acc": 0.8,
            "run_ids": [f"w2s-{loss}-0", f"w2s-{loss}-1"], "wall_s": 1.0, "flops": 1e9,
            **({"pgr_acc_note": "gap too small"} if math.isnan(pgr) else {})}


def test_report_escapes_plots_and_nan(tmp_path):
    s = RunStore(tmp_path / "h")
    s.start("w2s-sweep-x", "w2s-sweep", {"task": EVIL, "mode": "probe"})
    s.finish("w2s-sweep-x", {"rows": [_row("xent", 0.5), _row("aux_conf", float("nan"))]}, {"runs": []},
             {"wall_s": 2.0, "flops_total": 2e9})
    s.start("w2s-xent-0", "w2s", {"task": EVIL, "weak": "bow", "strong": "minilm-l6", "loss": "xent", "seed": 0})
    s.finish("w2s-xent-0", {"student_acc": 0.78, "pgr_acc": float("nan")}, {}, {"wall_s": 1.0, "flops_total": 1e9})
    s.start("rlhf-rm-1", "rlhf-rm", {"model": "tiny"})
    s.finish("rlhf-rm-1", {"pair_acc": 0.66, "loss": 0.61}, {}, {})
    s.start("bad", "w2s", {"task": "t"})
    s.fail("bad", EVIL)
    out = write_report(s, tmp_path / "out" / "r.html")
    text = out.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and EVIL not in text
    assert text.count("data:image/png;base64,") == 2
    assert "n/a" in text and "pair_acc=0.660" in text and "rlhf-rm" in text
    assert not [p for p in out.parent.iterdir() if p.name != "r.html"]


def test_report_empty_store(tmp_path):
    out = write_report(RunStore(tmp_path / "h"), tmp_path / "r.html")
    assert "No runs yet" in out.read_text() and out.read_text().startswith("<!DOCTYPE html>")
