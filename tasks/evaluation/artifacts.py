"""Prefect artifacts: what each run did, readable in the UI and from the API."""

from __future__ import annotations

import json
from typing import Any

from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from tasks.evaluation.results import Evaluation


def summary_markdown(kind: str, summary: dict[str, Any]) -> str:
    lines = [f"### {kind} run", "", "| what | value |", "| --- | --- |"]
    for key, value in summary.items():
        shown = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


def publish_run_summary(kind: str, summary: dict[str, Any]) -> None:
    """One markdown artifact (human) and one table artifact (machine) per run."""
    key = f"{kind}-run-summary"
    create_markdown_artifact(
        markdown=summary_markdown(kind, summary), key=key, description=f"{kind} run counts"
    )
    rows = [
        {"what": key_, "value": json.dumps(value) if isinstance(value, dict) else value}
        for key_, value in summary.items()
    ]
    create_table_artifact(table=rows, key=f"{kind}-run-counts", description=f"{kind} counts")


def publish_evaluation(kind: str, evaluation: Evaluation, report: dict[str, str]) -> None:
    """The metrics table and a link to the report, on the run's Artifacts tab."""
    from tasks.evaluation.report import metrics_table  # matplotlib: only for evaluations

    create_table_artifact(
        table=metrics_table(evaluation),
        key=f"{kind}-metrics",
        description=f"{kind}: AUC (DeLong 95% CI) and threshold metrics per model and set",
    )
    link = report["html"]
    if "://" not in link:
        link = f"file://{link}"
    create_link_artifact(link=link, link_text="validation report", key=f"{kind}-report")


# -- Prefect wrappers ------------------------------------------------------------------------
publish_run_summary_task = task(
    publish_run_summary, name="publish-run-summary", cache_policy=NO_CACHE
)
publish_evaluation_task = task(publish_evaluation, name="publish-evaluation", cache_policy=NO_CACHE)
