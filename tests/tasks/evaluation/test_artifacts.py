"""Prefect artifacts of a run: the summary as markdown and table, the metrics table and the
report link, read back from a real Prefect server."""

from __future__ import annotations

import json

import pytest

from tasks.evaluation.artifacts import (
    publish_evaluation,
    publish_evaluation_task,
    publish_run_summary,
    publish_run_summary_task,
    summary_markdown,
)
from tasks.evaluation.report import metrics_table

SUMMARY = {"run_id": "validate-1", "cases_scored": 80, "counts": {"b": 2, "a": 1}}


def test_summary_markdown_one_row_per_key():
    assert summary_markdown("validate", SUMMARY).split("\n") == [
        "### validate run",
        "",
        "| what | value |",
        "| --- | --- |",
        "| run_id | validate-1 |",
        "| cases_scored | 80 |",
        '| counts | {"a": 1, "b": 2} |',
    ]


def test_prefect_tasks_wrap_the_publishers():
    assert publish_evaluation_task.fn is publish_evaluation
    assert publish_evaluation_task.name == "publish-evaluation"
    assert publish_run_summary_task.fn is publish_run_summary
    assert publish_run_summary_task.name == "publish-run-summary"


def _artifact(api_url: str, key: str) -> dict:
    import httpx

    resp = httpx.post(f"{api_url}/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}})
    resp.raise_for_status()
    found = resp.json()
    assert found, f"no artifact {key}"
    return found[0]


@pytest.mark.slow
def test_artifacts_on_a_prefect_server(prefect_api, sample_evaluation):
    from prefect import flow

    @flow(name="publish-artifacts")
    def publish():
        report = {"html": "/srv/reports/r1/report.html", "json": "/srv/reports/r1/report.json"}
        publish_evaluation_task("unit", sample_evaluation, report)
        publish_run_summary_task("unit", SUMMARY)

    publish()
    table = _artifact(prefect_api, "unit-metrics")
    assert table["type"] == "table"
    assert json.loads(table["data"]) == metrics_table(sample_evaluation)
    link = _artifact(prefect_api, "unit-report")
    # Prefect stores a link artifact as markdown.
    assert link["data"] == "[validation report](file:///srv/reports/r1/report.html)"
    markdown = _artifact(prefect_api, "unit-run-summary")
    assert markdown["data"] == summary_markdown("unit", SUMMARY)
    counts = json.loads(_artifact(prefect_api, "unit-run-counts")["data"])
    assert counts[-1] == {"what": "counts", "value": json.dumps(SUMMARY["counts"])}
