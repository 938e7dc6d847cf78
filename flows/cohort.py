"""The nightly cohort flow: ingest -> plan -> radiomics on Dask workers -> feature store.

Only composition lives here: each step is a plain function in ``tasks/`` with a thin
Prefect wrapper. Extraction runs in chunks of cases on the Dask task runner (one Prefect
task per chunk, never per image); each finished chunk is committed at once, so a crash
keeps what was done and a re-run picks up the rest.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run

from flows.runners import task_runner
from tasks.artifacts import publish_run_summary
from tasks.cohort import ingest_task
from tasks.config import Settings
from tasks.radiomics import commit_radiomics_task, extract_chunk_task, plan_radiomics_task
from tasks.store import FeatureStore


def current_run_id(prefix: str) -> str:
    return f"{prefix}-{flow_run.id}" if flow_run.id else prefix


@flow(name="cohort", log_prints=True)
def cohort(
    manifest: str,
    store: str = "./store",
    chunk_size: int = 20,
    exam_from: str | None = None,
    exam_to: str | None = None,
    force: bool = False,
) -> dict:
    """Ingest a manifest and extract handcrafted radiomics for every new or changed case.

    Parameters
    ----------
    manifest: cohort manifest (CSV/Parquet, path or s3:// URI)
    store: feature store root (folder or s3://bucket/prefix)
    chunk_size: cases per Dask task
    exam_from, exam_to: ISO dates; only cases examined in this window are processed
    force: re-extract the window even when rows exist (a MERGE replaces them)
    """
    logger = get_run_logger()
    started = time.monotonic()
    settings = Settings(store=store, chunk_size=chunk_size)
    feature_store = FeatureStore(settings.store)
    run_id = current_run_id("cohort")

    ingested = ingest_task(manifest, feature_store, settings, run_id)
    plan, params = plan_radiomics_task(feature_store, settings, exam_from, exam_to, force)
    chunks = plan.chunks(settings.chunk_size, settings.n_workers)
    logger.info(
        "radiomics: %d cases to extract in %d chunks, %d already stored",
        len(plan.todo),
        len(chunks),
        plan.skipped,
    )
    futures = [extract_chunk_task.submit(chunk, params, settings) for chunk in chunks]
    totals = {"rows": 0, "extracted": 0, "failed": 0}
    for done, future in enumerate(as_completed(futures), start=1):
        committed = commit_radiomics_task(future.result(), feature_store, run_id, force)
        for key in totals:
            totals[key] += committed[key]
        logger.info(
            "radiomics: chunk %d/%d committed (%d/%d cases)",
            done,
            len(chunks),
            totals["extracted"] + totals["failed"],
            len(plan.todo),
        )

    seconds = time.monotonic() - started
    summary = {
        "run_id": run_id,
        "manifest_rows": ingested.rows_in,
        "cases_new": totals["extracted"],
        "cases_skipped": plan.skipped,
        "cases_quarantined": ingested.quarantined,
        "cases_failed": totals["failed"],
        "radiomics_rows": totals["rows"],
        "seconds": round(seconds, 1),
        "cases_per_second": round(totals["extracted"] / seconds, 3) if seconds else 0.0,
        "table_versions": feature_store.versions(("cohort", "quarantine", "radiomics")),
    }
    publish_run_summary("cohort", summary)
    return summary


def run_cohort(manifest: str, settings: Settings, **params) -> dict:
    """Run the flow on the configured task runner (local cluster or existing scheduler)."""
    runner = task_runner(settings)
    return cohort.with_options(task_runner=runner)(
        manifest=manifest, store=settings.store, chunk_size=settings.chunk_size, **params
    )
