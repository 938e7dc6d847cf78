"""The nightly cohort flow: ingest -> plan -> radiomics + CNN embeddings on Dask -> store
(plus, when scanner harmonisation may use it, an image-normalised radiomics pass).

Only composition lives here: each step is a plain function in ``tasks/`` with a thin
Prefect wrapper. The run reads ``cohort`` once, plans once, and the Dask subflow
(:mod:`flows.extract`) works through that plan in chunks of cases (one Prefect task per
chunk, never per image); each finished chunk is committed at once, so a crash keeps what
was done and a re-run picks up the rest.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.extract import embedding_chunks, empty_totals, radiomics_chunks, run_extraction
from flows.runtime.runners import run_cluster
from tasks.config import Settings, resolve_settings
from tasks.data.ingest import ingest_task, with_perturbation
from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, EMBEDDINGS, QUARANTINE, RADIOMICS, current_cohort
from tasks.evaluation.artifacts import publish_run_summary
from tasks.features.plan import Window
from tasks.features.work import plan_work_task
from tasks.models.harmonise import image_pass_settings


def current_run_id(prefix: str) -> str:
    return f"{prefix}-{flow_run.id}" if flow_run.id else prefix


@flow(name="cohort", log_prints=True, persist_result=False)
def cohort(
    manifest: str | None = None,
    settings: Settings | None = None,
    exam_from: str | None = None,
    exam_to: str | None = None,
    force: bool = False,
) -> dict:
    """Ingest a manifest and extract features for every new or changed case.

    Parameters
    ----------
    manifest: cohort manifest (CSV/Parquet, path or s3:// URI); None skips ingest and
        works on the cases already in the store (backfills)
    settings: run settings built by the caller (None: from the environment)
    exam_from, exam_to: ISO dates; only cases examined in this window are processed
    force: re-extract the window even when rows exist (a MERGE replaces them)
    """
    logger = get_run_logger()
    started = time.monotonic()
    settings = resolve_settings(settings)
    store = FeatureStore(settings.store)
    run_id = current_run_id("cohort")

    ingested = ingest_task(manifest, store, settings, run_id) if manifest else None
    cases = current_cohort(store.read(COHORT))
    settings = with_perturbation(cases, settings)
    work = plan_work_task(
        cases, store, settings, Window(exam_from, exam_to, force), embeddings=settings.embed
    )
    # Scanner harmonisation "image": the same cases again with intensity normalisation on
    # (its own params_hash), radiomics only, for retrain to fit and compare.
    image = image_pass_settings(settings)
    image_work = None
    if image is not None:
        image_work = plan_work_task(
            cases, store, image, Window(exam_from, exam_to, force), embeddings=False
        )
    logger.info(
        "radiomics: %d cases to extract in %d chunks, %d already stored",
        len(work.radiomics.todo),
        len(radiomics_chunks(work, settings)),
        work.radiomics.skipped,
    )
    if work.embeddings:
        logger.info(
            "embeddings (%s): %d cases to embed in %d chunks, %d already stored",
            work.embeddings.version,
            len(work.embeddings.plan.todo),
            len(embedding_chunks(work, settings)),
            work.embeddings.plan.skipped,
        )
    if image_work is not None:
        logger.info(
            "radiomics, image-normalised pass: %d cases to extract, %d already stored",
            len(image_work.radiomics.todo),
            image_work.radiomics.skipped,
        )
    extract_started = time.monotonic()
    # One local cluster for both passes, started only if one of them has work.
    with run_cluster(settings) as cluster:
        totals = run_extraction(work, settings, run_id)
        normalised = empty_totals()
        if image_work is not None:
            normalised = run_extraction(image_work, image, run_id)
    extract_seconds = time.monotonic() - extract_started

    seconds = time.monotonic() - started
    radiomics, embedded = totals["radiomics"], totals["embeddings"]
    summary = {
        "run_id": run_id,
        "manifest_rows": ingested.rows_in if ingested else 0,
        "cases_new": radiomics.cases,
        "cases_skipped": work.radiomics.skipped,
        "cases_quarantined": ingested.quarantined if ingested else 0,
        "cases_failed": radiomics.failed,
        "radiomics_rows": radiomics.rows,
        "radiomics_rows_normalised": normalised["radiomics"].rows,
        "model_version": work.embeddings.version if work.embeddings else None,
        "cases_embedded": embedded.cases,
        "embedding_failed": embedded.failed,
        "embedding_rows": embedded.rows,
        "embedding_workers": embedded.workers,
        "seconds": round(seconds, 1),
        "extract_seconds": round(extract_seconds, 1),
        # Where the run's time went (the rest of extract_seconds: waiting on the workers).
        "ingest_plan_seconds": round(extract_started - started, 1),
        "cluster_start_seconds": round(cluster.start_seconds, 1) if cluster else None,
        "cluster_stop_seconds": round(cluster.stop_seconds, 1) if cluster else None,
        "commit_seconds": round(
            sum(t[kind].commit_seconds for t in (totals, normalised) for kind in t), 1
        ),
        "cases_per_second": round(radiomics.cases / seconds, 3),
        "table_versions": store.versions((COHORT, QUARANTINE, RADIOMICS, EMBEDDINGS)),
    }
    publish_run_summary("cohort", summary)
    return summary


@flow(name="backfill", log_prints=True, persist_result=False)
def backfill(
    exam_from: str,
    exam_to: str,
    settings: Settings | None = None,
    force: bool = False,
    manifest: str | None = None,
) -> dict:
    """Re-run extraction for cases examined between ``exam_from`` and ``exam_to`` (ISO dates).

    Idempotent: without ``force`` only missing rows are extracted; with ``force`` the
    window is re-extracted and MERGEd, replacing rows so none is duplicated."""
    return cohort(
        manifest=manifest, settings=settings, exam_from=exam_from, exam_to=exam_to, force=force
    )
