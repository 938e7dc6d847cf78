"""The nightly cohort flow: ingest -> plan -> radiomics + CNN embeddings on Dask -> store.

Only composition lives here: each step is a plain function in ``tasks/`` with a thin
Prefect wrapper. Extraction runs in chunks of cases on the Dask task runner (one Prefect
task per chunk, never per image); each finished chunk is committed at once, so a crash
keeps what was done and a re-run picks up the rest.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.fanout import (
    commit_as_completed,
    embedding_chunks,
    empty_totals,
    submit_embeddings,
    submit_radiomics,
)
from flows.runtime.runners import task_runner
from tasks.config import Settings
from tasks.data.ingest import current_cohort, ingest_task, with_perturbation
from tasks.data.store import FeatureStore
from tasks.evaluation.artifacts import publish_run_summary
from tasks.features.cnn.embed import plan_embeddings_task
from tasks.features.radiomics import plan_radiomics_task


def current_run_id(prefix: str) -> str:
    return f"{prefix}-{flow_run.id}" if flow_run.id else prefix


@flow(name="extract-features", log_prints=True)
def extract_features(
    settings: Settings,
    run_id: str,
    exam_from: str | None = None,
    exam_to: str | None = None,
    force: bool = False,
) -> dict:
    """Radiomics chunks to every Dask worker, CNN chunks to GPU workers only.

    Plans are made here, not passed in: flow parameters are stored by the Prefect API and
    must stay small and free of file paths."""
    store = FeatureStore(settings.store)
    settings = with_perturbation(current_cohort(store.read("cohort")), settings)
    plan, params = plan_radiomics_task(store, settings, exam_from, exam_to, force)
    submitted = submit_radiomics(
        plan.chunks(settings.chunk_size, settings.n_workers), params, settings
    )
    if settings.embed:
        embedding = plan_embeddings_task(store, settings, exam_from, exam_to, force)
        submitted |= submit_embeddings(
            embedding_chunks(embedding, settings), embedding.model, embedding.dual, settings
        )
    return commit_as_completed(submitted, store, run_id, force)


@flow(name="cohort", log_prints=True, persist_result=True)
def cohort(
    manifest: str | None = None,
    store: str = "./store",
    chunk_size: int = 20,
    workers: int | None = None,
    exam_from: str | None = None,
    exam_to: str | None = None,
    force: bool = False,
) -> dict:
    """Ingest a manifest and extract handcrafted radiomics for every new or changed case.

    Parameters
    ----------
    manifest: cohort manifest (CSV/Parquet, path or s3:// URI); None skips ingest and
        works on the cases already in the store (backfills)
    store: feature store root (folder or s3://bucket/prefix)
    chunk_size: cases per Dask task
    workers: local Dask process workers (default: one per core; ignored on a cluster)
    exam_from, exam_to: ISO dates; only cases examined in this window are processed
    force: re-extract the window even when rows exist (a MERGE replaces them)
    """
    logger = get_run_logger()
    started = time.monotonic()
    settings = Settings(
        store=store, chunk_size=chunk_size, **({"n_workers": workers} if workers else {})
    )
    feature_store = FeatureStore(settings.store)
    run_id = current_run_id("cohort")

    ingested = ingest_task(manifest, feature_store, settings, run_id) if manifest else None
    settings = with_perturbation(current_cohort(feature_store.read("cohort")), settings)
    plan, _ = plan_radiomics_task(feature_store, settings, exam_from, exam_to, force)
    chunks = plan.chunks(settings.chunk_size, settings.n_workers)
    logger.info(
        "radiomics: %d cases to extract in %d chunks, %d already stored",
        len(plan.todo),
        len(chunks),
        plan.skipped,
    )
    embed_chunks, model_version = [], None
    if settings.embed:
        embedding = plan_embeddings_task(feature_store, settings, exam_from, exam_to, force)
        embed_chunks, model_version = embedding_chunks(embedding, settings), embedding.version
        logger.info(
            "embeddings (%s): %d cases to embed in %d chunks, %d already stored",
            embedding.version,
            len(embedding.plan.todo),
            len(embed_chunks),
            embedding.plan.skipped,
        )
    totals = empty_totals()
    extract_started = time.monotonic()
    if chunks or embed_chunks:  # the Dask cluster starts only when there is work for it
        runner = task_runner(settings)
        totals = extract_features.with_options(task_runner=runner)(
            settings, run_id, exam_from, exam_to, force
        )
    extract_seconds = time.monotonic() - extract_started

    seconds = time.monotonic() - started
    summary = {
        "run_id": run_id,
        "manifest_rows": ingested.rows_in if ingested else 0,
        "cases_new": totals["radiomics"]["cases"],
        "cases_skipped": plan.skipped,
        "cases_quarantined": ingested.quarantined if ingested else 0,
        "cases_failed": totals["radiomics"]["failed"],
        "radiomics_rows": totals["radiomics"]["rows"],
        "model_version": model_version,
        "cases_embedded": totals["embeddings"]["cases"],
        "embedding_failed": totals["embeddings"]["failed"],
        "embedding_rows": totals["embeddings"]["rows"],
        "embedding_workers": totals["embeddings"]["workers"],
        "seconds": round(seconds, 1),
        "extract_seconds": round(extract_seconds, 1),
        "cases_per_second": round(totals["radiomics"]["cases"] / seconds, 3),
        "table_versions": feature_store.versions(
            ("cohort", "quarantine", "radiomics", "embeddings")
        ),
    }
    publish_run_summary("cohort", summary)
    return summary


@flow(name="backfill", log_prints=True, persist_result=True)
def backfill(
    start: str,
    end: str,
    store: str = "./store",
    force: bool = False,
    manifest: str | None = None,
) -> dict:
    """Re-run extraction for cases examined between ``start`` and ``end`` (ISO dates).

    Idempotent: without ``force`` only missing rows are extracted; with ``force`` the
    window is re-extracted and MERGEd, replacing rows so none is duplicated."""
    return cohort(manifest=manifest, store=store, exam_from=start, exam_to=end, force=force)


def run_cohort(manifest: str | None, settings: Settings, **params) -> dict:
    """Run the cohort flow; its Dask subflow uses the settings' cluster."""
    return cohort(
        manifest=manifest,
        store=settings.store,
        chunk_size=settings.chunk_size,
        workers=settings.n_workers,
        **params,
    )
