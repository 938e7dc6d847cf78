"""write_report: both files, local and on S3, and its Prefect task."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec

from tasks.evaluation.report import write_report, write_report_task


def test_write_report_to_a_new_local_folder(evaluation, tmp_path):
    folder = tmp_path / "reports" / evaluation.run_id
    uris = write_report(evaluation, str(folder))
    assert uris == {"html": str(folder / "report.html"), "json": str(folder / "report.json")}
    assert json.loads(Path(uris["json"]).read_text())["run_id"] == evaluation.run_id
    assert Path(uris["html"]).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_write_report_to_s3(evaluation, s3_bucket):
    folder = f"{s3_bucket}/prefix/reports/{evaluation.run_id}"
    uris = write_report(evaluation, folder)
    assert uris == {"html": f"{folder}/report.html", "json": f"{folder}/report.json"}
    with fsspec.open(uris["json"], "r", encoding="utf-8") as fh:
        text = fh.read()
    assert "NaN" not in text and "Infinity" not in text
    out = json.loads(text)
    assert out["run_id"] == evaluation.run_id
    assert out["models"]["COMB"]["validation"]["n"] == 90
    with fsspec.open(uris["html"], "r", encoding="utf-8") as fh:
        text = fh.read()
    assert text.startswith("<!DOCTYPE html>") and text.count("<img") == 4


def test_write_report_task_wraps_it():
    assert write_report_task.name == "write-report"
    assert write_report_task.fn is write_report
