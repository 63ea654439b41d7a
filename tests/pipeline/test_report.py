"""report.json / report.html of a real run, and the CI regression gate command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipeline.cli import main


def _report(shipped_run):
    folder = shipped_run[0]
    return folder, json.loads((folder / "reports" / "tiny" / "latest" / "report.json").read_text())


def test_report_json_holds_per_class_flip_rates_and_ci(shipped_run):
    _, report = _report(shipped_run)
    m = report["metrics"]
    assert m["split"] == "test" and report["environment"]["torch"]
    student = m["models"]["student"]
    assert len(student["per_class"]) == 10 and all(0 <= v <= 100 for v in student["per_class"])
    # Flip rates recomputed from the predictions the validate stage stored, not from each other.
    from cskd.checkpoint import load_tensors

    folder = shipped_run[0]
    preds = load_tensors(folder / ".cskd" / "artifacts" / "validate" / report["artifacts"]["validate"]
                         / "predictions.safetensors")
    flips = (preds["onnx"].argmax(1) != preds["student"].argmax(1)).float().mean().item() * 100.0
    assert m["models"]["onnx"]["flip_rate"] == pytest.approx(flips)
    assert m["student_top1"] == pytest.approx((preds["student"].argmax(1) == preds["labels"]).float().mean().item() * 100)
    ci = m["student_vs_teacher"]["bootstrap"]
    assert ci["ci_low"] <= ci["difference"] <= ci["ci_high"]
    assert abs(ci["difference"] - (m["student_top1"] - m["teacher_top1"])) < 1e-9
    assert 0 <= m["student_vs_teacher"]["mcnemar"]["p_value"] <= 1
    assert report["gate"]["passed"] and report["training"]["student"][-1]["epoch"] == 2
    assert set(report["artifacts"]) >= {"teacher", "distill", "export", "validate", "gate"}


def test_report_html_is_self_contained(shipped_run):
    folder = shipped_run[0]
    page = (folder / "reports" / "tiny" / "latest" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # accuracy, per-class delta, training curves
    assert "PASS" in page and "student_top1 &gt;= teacher_top1 - max_drop" in page
    assert "http://" not in page and "https://" not in page  # opens offline


def _baseline(folder, report, *, bump=0.0):
    base = {"metrics": {"metrics.student_top1": {"value": report["metrics"]["student_top1"] + bump, "tolerance": 1.0},
                        "metrics.onnx_max_logit_diff": {"value": 1e-3, "tolerance": 0.0, "direction": "lower"}}}
    path = folder / f"baseline{bump}.json"
    path.write_text(json.dumps(base))
    return path


def test_regression_gate_passes_and_fails_naming_the_metric(shipped_run, monkeypatch):
    folder, report = _report(shipped_run)
    monkeypatch.chdir(folder)
    report_path = folder / "reports" / "tiny" / "latest" / "report.json"
    ok = CliRunner().invoke(main, ["gate", "--baseline", str(_baseline(folder, report)), "--report", str(report_path)])
    assert ok.exit_code == 0 and "PASS (0 of 2 metrics regressed)" in ok.output
    doctored = _baseline(folder, report, bump=5.0)  # expects 5 points more top-1
    bad = CliRunner().invoke(main, ["gate", "--baseline", str(doctored), "--report", str(report_path)])
    assert bad.exit_code == 1
    assert "| `metrics.student_top1` |" in bad.output and "**REGRESSION**" in bad.output
    assert "regression in metrics.student_top1" in bad.output
    # the default report location comes from the manifest
    default = CliRunner().invoke(main, ["gate", "-m", str(shipped_run[1]), "--baseline", str(_baseline(folder, report))])
    assert default.exit_code == 0


def test_regression_gate_bad_inputs_exit_2(shipped_run, tmp_path):
    report_path = shipped_run[0] / "reports" / "tiny" / "latest" / "report.json"
    missing = tmp_path / "b.json"
    missing.write_text(json.dumps({"metrics": {"metrics.nope": {"value": 1, "tolerance": 0}}}))
    r = CliRunner().invoke(main, ["gate", "--baseline", str(missing), "--report", str(report_path)])
    assert r.exit_code == 2 and "no metric 'metrics.nope'" in r.output
    junk = tmp_path / "j.json"
    junk.write_text("{not json")
    r = CliRunner().invoke(main, ["gate", "--baseline", str(junk), "--report", str(report_path)])
    assert r.exit_code == 2 and "not valid JSON" in r.output
    wrong = tmp_path / "w.json"
    wrong.write_text(json.dumps({"metrics": {"x": {"value": 1, "tolerance": -1}}}))
    r = CliRunner().invoke(main, ["gate", "--baseline", str(wrong), "--report", str(report_path)])
    assert r.exit_code == 2 and "metrics.x.tolerance" in r.output


def test_committed_baseline_is_valid():
    from pathlib import Path

    from pipeline.regression import load_baseline

    assert load_baseline(Path(__file__).parents[2] / "baselines" / "quickstart.json").metrics


@pytest.mark.parametrize(("name", "text", "says"), [
    ("nan value", '{"metrics": {"metrics.student_top1": {"value": NaN, "tolerance": 1}}}', "value"),
    ("infinite tolerance", '{"metrics": {"metrics.student_top1": {"value": 90, "tolerance": Infinity}}}', "tolerance"),
    ("overflowing tolerance", '{"metrics": {"metrics.student_top1": {"value": 90, "tolerance": 1e999}}}', "tolerance"),
    ("absurd tolerance", '{"metrics": {"metrics.student_top1": {"value": 90, "tolerance": 1e300}}}', "tolerance"),
    ("relative over 100%", '{"metrics": {"metrics.student_top1": {"value": 90, "tolerance": 3, "mode": "relative"}}}',
     "relative tolerance"),
    ("not an object", '[1, 2]', "JSON object"),
    ("deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_hostile_baselines_exit_2_with_one_line(shipped_run, tmp_path, name, text, says):
    report_path = shipped_run[0] / "reports" / "tiny" / "latest" / "report.json"
    baseline = tmp_path / "b.json"
    baseline.write_text(text)
    r = CliRunner().invoke(main, ["gate", "--baseline", str(baseline), "--report", str(report_path)])
    assert r.exit_code == 2, (name, r.output)
    assert says in r.output and r.output.count("\n") == 1


def test_a_folder_as_baseline_or_report_is_exit_2(shipped_run, tmp_path):
    report_path = shipped_run[0] / "reports" / "tiny" / "latest" / "report.json"
    good = tmp_path / "good.json"
    good.write_text('{"metrics": {"metrics.student_top1": {"value": 1, "tolerance": 1}}}')
    for args in (["--baseline", str(tmp_path), "--report", str(report_path)], ["--baseline", str(good), "--report", str(tmp_path)]):
        r = CliRunner().invoke(main, ["gate", *args])
        assert r.exit_code == 2 and "is a folder" in r.output, r.output


def test_report_tells_the_compression_story_with_confusion_lineage_and_working_links(shipped_run):
    import numpy as np

    from cskd.checkpoint import load_tensors

    folder, report = _report(shipped_run)
    preds = load_tensors(folder / ".cskd" / "artifacts" / "validate" / report["artifacts"]["validate"]
                         / "predictions.safetensors")
    for who in ("student", "teacher"):  # the matrices count the stored predictions, class by class
        cm = np.array(report["confusion"][who])
        expected = np.zeros((10, 10), dtype=int)
        np.add.at(expected, (preds["labels"].numpy(), preds[who].numpy().argmax(1)), 1)
        assert (cm == expected).all()
    teacher, student = report["compression"]
    assert teacher["parameters"] > 0 and student["parameters"] > 0 and teacher["bytes"] > 0
    assert [row["class"] for row in report["per_class"]] == [str(i) for i in range(10)]
    assert {a["kind"] for a in report["lineage"]} >= {"teacher", "distill", "validate", "gate", "ship"}
    assert report["run"]["id"] and report["run"]["duration_s"] >= 0
    page_path = (folder / "reports" / "tiny" / "latest" / "report.html").resolve()
    page = page_path.read_text()
    for needle in ("teacher against student", "Confusion matrices", "Per class", "Lineage", "Manifest (resolved)"):
        assert needle in page
    import re

    hrefs = re.findall(r'<a href="([^"]+)">', page)
    assert hrefs and all((page_path.parent / href).resolve().is_file() for href in hrefs)  # links reach the bundle


def test_the_first_screen_gives_the_verdict_the_shipped_files_and_one_sentence(shipped_run):
    import re

    folder, report = _report(shipped_run)
    release = report["run"]["release"]
    assert release["path"] == f"shipped/tiny/{release['version']}" and (folder / release["path"]).is_dir()
    rows = report["deployables"]
    assert rows[0]["model"] == "teacher" and rows[0]["top1"] == report["metrics"]["teacher_top1"]
    assert [r["runtime"] for r in rows[1:]] == ["onnx"]
    onnx = rows[1]
    # sizes are the shipped files themselves, top-1 the file run through its own runtime
    assert onnx["bytes"] == sum((folder / release["path"] / name).stat().st_size for name in onnx["files"])
    assert onnx["top1"] == report["metrics"]["models"]["onnx"]["top1"]
    assert onnx["smaller"] == rows[0]["bytes"] / onnx["bytes"]
    diff = report["metrics"]["student_vs_teacher"]["bootstrap"]["difference"]
    assert f"{abs(diff):.2f} points {'above' if diff >= 0 else 'below'} the teacher" in report["paired"]
    page = (folder / "reports" / "tiny" / "latest" / "report.html").read_text()
    verdict = re.search(r'<p class="status pass">(.*?)</p>', page).group(1)
    assert f"PASS: shipped {release['version']} to <code>{release['path']}/</code>" in verdict
    # the first screen: verdict, then the files table, then the sentence, before any detail
    order = [page.index(x) for x in ('class="status', 'class="headline"', 'class="paired"', "Per class", "Lineage")]
    assert order == sorted(order)
    assert re.search(r"<details><summary>\d+ lines: every setting", page)   # the manifest is collapsed


def test_the_paired_sentence_says_what_the_interval_supports():
    from pipeline.report import paired_sentence

    def metrics(low, high):
        return {"samples": 1797, "student_vs_teacher": {
            "bootstrap": {"difference": (low + high) / 2, "ci_low": low, "ci_high": high, "confidence": 0.95},
            "mcnemar": {"p_value": 0.04}}}

    assert paired_sentence(metrics(0.2, 1.0)).endswith("the student is reliably better.")
    assert paired_sentence(metrics(-1.0, -0.2)).endswith("the student is reliably worse.")
    assert paired_sentence(metrics(-0.5, 0.9)).endswith("the data cannot tell them apart.")
    assert "1,797 test images" in paired_sentence(metrics(-0.5, 0.9))


def test_latency_warnings_flag_slow_int8_and_long_tails():
    from pipeline.report import latency_warnings

    cells = {"results": [{"backend": "onnx", "batch": 1, "p50_ms": 0.52, "p90_ms": 0.6},
                         {"backend": "onnx-int8", "batch": 1, "p50_ms": 0.78, "p90_ms": 0.8},
                         {"backend": "pytorch-eager", "batch": 1, "p50_ms": 0.58, "p90_ms": 98.0}]}
    warnings = latency_warnings(cells)
    assert len(warnings) == 2 and "onnx-int8 at batch 1 is slower than FP32" in warnings[0]
    assert "pytorch-eager at batch 1: p90" in warnings[1]
    cells["results"][1]["p50_ms"], cells["results"][2]["p90_ms"] = 0.3, 1.0
    assert latency_warnings(cells) == []


def test_the_confusion_matrix_is_sklearns_at_50000_predictions():
    """The report counts its confusion matrices with numpy (importing sklearn costs every run
    seconds of start-up); they equal sklearn's, every class present or not."""
    import numpy as np
    from sklearn.metrics import confusion_matrix as sklearn_confusion

    from pipeline.report import confusion_matrix

    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 100, 50_000), rng.integers(0, 99, 50_000)  # class 99 never predicted
    assert np.array_equal(confusion_matrix(labels, predicted, 100),
                          sklearn_confusion(labels, predicted, labels=list(range(100))))
