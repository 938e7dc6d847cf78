"""Per-run report step: one self-contained HTML page and the same numbers as JSON.

:func:`write_report` writes ``<folder>/report.html`` (:mod:`~.html`, with the figures of
:mod:`~.figures`) and ``<folder>/report.json`` (:mod:`~.serialise`) for one
:class:`~tasks.evaluation.results.Evaluation`, through fsspec (a local folder or
``s3://...``).
"""

from __future__ import annotations

import json
import os

import fsspec
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.data.uris import is_uri, join
from tasks.evaluation.report.html import render_html
from tasks.evaluation.report.serialise import DISCLAIMER, metrics_table, report_json
from tasks.evaluation.results import Evaluation

__all__ = ["DISCLAIMER", "metrics_table", "render_html", "report_json", "write_report"]


def write_report(evaluation: Evaluation, folder: str) -> dict[str, str]:
    """Write ``<folder>/report.html`` and ``<folder>/report.json``; return their URIs.

    ``folder`` is a local path (created when missing) or an fsspec URI such as
    ``s3://bucket/prefix/reports/<run_id>``. The JSON is :func:`report_json`, dumped with
    ``allow_nan=False``. Returns ``{"html": uri, "json": uri}``.
    """
    folder = str(folder)
    if not is_uri(folder):
        folder = os.path.abspath(os.path.expanduser(folder))
        os.makedirs(folder, exist_ok=True)
    payload = json.dumps(report_json(evaluation), indent=2, allow_nan=False)
    page = render_html(evaluation)
    uris = {"html": join(folder, "report.html"), "json": join(folder, "report.json")}
    with fsspec.open(uris["json"], "w", encoding="utf-8") as fh:
        fh.write(payload)
    with fsspec.open(uris["html"], "w", encoding="utf-8") as fh:
        fh.write(page)
    return uris


# -- Prefect wrappers ------------------------------------------------------------------------
write_report_task = task(write_report, name="write-report", cache_policy=NO_CACHE)
