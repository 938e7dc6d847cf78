"""The nightly cohort flow: ingest -> plan -> radiomics + CNN embeddings on Dask -> store.

Only composition lives here: each step is a plain function in ``tasks/`` with a thin
Prefect wrapper. Extraction runs in chunks of cases on the Dask task runner (one Prefect
task per chunk, never per image); each finished chunk is committed at once, so a crash
keeps what was done and a re-run picks up the rest.
"""

from __future__ import annotations

import time

import dask
from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run

from flows.runners import task_runner
from tasks.artifacts import publish_run_summary
from tasks.cohort import ingest_task
from tasks.config import Settings
from tasks.embedding import (
    EmbeddingPlan,
    commit_embeddings_task,
    embed_chunk_task,
    plan_embeddings_task,
)
from tasks.radiomics import commit_radiomics_task, extract_chunk_task, plan_radiomics_task
from tasks.store import FeatureStore


def current_run_id(prefix: str) -> str:
    return f"{prefix}-{flow_run.id}" if flow_run.id else prefix


@flow(name="extract-features", log_prints=True)
def extract_features(
    radiomics_chunks: list[list[dict]],
    params: dict,
    embedding: EmbeddingPlan,
    embedding_chunks: list[list[dict]],
    settings: Settings,
    run_id: str,
    force: bool = False,
) -> dict:
    """Fan radiomics chunks out to every Dask worker and CNN chunks to GPU workers only;
    commit each chunk as it finishes, so a crash keeps what was done."""
    logger = get_run_logger()
    futures = {}
    for chunk in radiomics_chunks:
        futures[extract_chunk_task.submit(chunk, params, settings)] = "radiomics"
    with dask.annotate(resources={"GPU": 1}):
        for chunk in embedding_chunks:
            future = embed_chunk_task.submit(chunk, embedding.model, embedding.dual, settings)
            futures[future] = "embeddings"
    store = FeatureStore(settings.store)
    totals = {
        "radiomics": {"rows": 0, "extracted": 0, "failed": 0},
        "embeddings": {"rows": 0, "embedded": 0, "failed": 0, "workers": []},
    }
    expected = {
        "radiomics": sum(map(len, radiomics_chunks)),
        "embeddings": sum(map(len, embedding_chunks)),
    }
    for future in as_completed(list(futures)):
        kind = futures[future]
        commit = commit_radiomics_task if kind == "radiomics" else commit_embeddings_task
        committed = commit(future.result(), store, run_id, force)
        for key, value in committed.items():
            if isinstance(value, list):
                totals[kind][key] = sorted(set(totals[kind][key]) | set(value))
            else:
                totals[kind][key] += value
        done = totals[kind]["failed"] + totals[kind].get("extracted", totals[kind].get("embedded"))
        logger.info("%s: %d/%d cases committed", kind, done, expected[kind])
    return totals


@flow(name="cohort", log_prints=True)
def cohort(
    manifest: str,
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
    manifest: cohort manifest (CSV/Parquet, path or s3:// URI)
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

    ingested = ingest_task(manifest, feature_store, settings, run_id)
    plan, params = plan_radiomics_task(feature_store, settings, exam_from, exam_to, force)
    chunks = plan.chunks(settings.chunk_size, settings.n_workers)
    logger.info(
        "radiomics: %d cases to extract in %d chunks, %d already stored",
        len(plan.todo),
        len(chunks),
        plan.skipped,
    )
    embedding = plan_embeddings_task(feature_store, settings, exam_from, exam_to, force)
    # Each CNN chunk is batched inference: larger chunks than radiomics, one GPU worker.
    embed_chunks = embedding.plan.chunks(settings.chunk_size * 4, 1)
    logger.info(
        "embeddings (%s): %d cases to embed in %d chunks, %d already stored",
        embedding.version,
        len(embedding.plan.todo),
        len(embed_chunks),
        embedding.plan.skipped,
    )
    totals = {
        "radiomics": {"rows": 0, "extracted": 0, "failed": 0},
        "embeddings": {"rows": 0, "embedded": 0, "failed": 0, "workers": []},
    }
    extract_started = time.monotonic()
    if chunks or embed_chunks:  # the Dask cluster starts only when there is work for it
        runner = task_runner(settings)
        totals = extract_features.with_options(task_runner=runner)(
            chunks, params, embedding, embed_chunks, settings, run_id, force
        )
    extract_seconds = time.monotonic() - extract_started

    seconds = time.monotonic() - started
    summary = {
        "run_id": run_id,
        "manifest_rows": ingested.rows_in,
        "cases_new": totals["radiomics"]["extracted"],
        "cases_skipped": plan.skipped,
        "cases_quarantined": ingested.quarantined,
        "cases_failed": totals["radiomics"]["failed"],
        "radiomics_rows": totals["radiomics"]["rows"],
        "model_version": embedding.version,
        "cases_embedded": totals["embeddings"]["embedded"],
        "embedding_failed": totals["embeddings"]["failed"],
        "embedding_rows": totals["embeddings"]["rows"],
        "embedding_workers": totals["embeddings"]["workers"],
        "seconds": round(seconds, 1),
        "extract_seconds": round(extract_seconds, 1),
        "cases_per_second": round(totals["radiomics"]["extracted"] / seconds, 3),
        "table_versions": feature_store.versions(
            ("cohort", "quarantine", "radiomics", "embeddings")
        ),
    }
    publish_run_summary("cohort", summary)
    return summary


def run_cohort(manifest: str, settings: Settings, **params) -> dict:
    """Run the cohort flow; its Dask subflow uses the settings' cluster."""
    return cohort(
        manifest=manifest,
        store=settings.store,
        chunk_size=settings.chunk_size,
        workers=settings.n_workers,
        **params,
    )
