"""The ``extract-features`` subflow: a run's plan fanned out over Dask, each chunk committed as
it completes.

Radiomics chunks may run on any worker; CNN chunks are submitted under
``dask.annotate(resources={"GPU": 1})`` so only GPU-resource workers take them. Commits
happen in the flow process (the single writer of the Delta tables), chunk by chunk, so a
crash keeps everything finished before it. The plan is made once by the calling flow and
kept in the store (:func:`tasks.features.plan.save_plan`): the subflow's parameters are the
settings and the run id, never case rows or file paths.
"""

from __future__ import annotations

import dask
from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed

from flows.runtime.runners import task_runner
from tasks.config import Settings
from tasks.data.store import FeatureStore
from tasks.features.plan import (
    CommitCounts,
    EmbeddingWork,
    WorkPlan,
    drop_plan,
    load_plan,
    save_plan,
)
from tasks.features.radiomics import commit_radiomics_task, extract_chunk_task

KINDS = ("radiomics", "embeddings")
Submitted = dict[PrefectFuture, str]
Totals = dict[str, CommitCounts]


def empty_totals() -> Totals:
    return {kind: CommitCounts() for kind in KINDS}


def radiomics_chunks(work: WorkPlan, settings: Settings) -> list[list[dict]]:
    return work.radiomics.chunks(settings.chunk_size, settings.n_workers) if work.radiomics else []


def embedding_chunks(work: WorkPlan, settings: Settings) -> list[list[dict]]:
    # CNN chunks are batched inference on few GPU workers: larger than radiomics chunks.
    return work.embeddings.plan.chunks(settings.chunk_size * 4, 1) if work.embeddings else []


def submit_radiomics(chunks: list[list[dict]], params: dict, settings: Settings) -> Submitted:
    return {extract_chunk_task.submit(chunk, params, settings): "radiomics" for chunk in chunks}


def submit_embeddings(
    chunks: list[list[dict]], work: EmbeddingWork, settings: Settings
) -> Submitted:
    # torch is imported only where CNN work is planned: prefect-dask ships the flow with each
    # task, so a module-level import would load torch into every radiomics worker.
    from tasks.features.cnn.embed import embed_chunk_task

    with dask.annotate(resources={"GPU": 1}):
        return {
            embed_chunk_task.submit(chunk, work.model, work.dual, settings): "embeddings"
            for chunk in chunks
        }


def commit_as_completed(
    submitted: Submitted, store: FeatureStore, run_id: str, force: bool = False
) -> Totals:
    """Commit every chunk as it finishes; log cases done/total per kind.

    A chunk whose worker died (OOM, node loss: Dask's ``KilledWorker`` once the scheduler
    gives up on it) is resubmitted once, so one dead process does not fail the night; a
    second death fails the run, and a plain re-run picks up what is left.
    """
    commits = {"radiomics": commit_radiomics_task}
    if "embeddings" in submitted.values():
        from tasks.features.cnn.embed import commit_embeddings_task

        commits["embeddings"] = commit_embeddings_task
    logger = get_run_logger()
    totals = empty_totals()
    chunks = {kind: list(submitted.values()).count(kind) for kind in KINDS}
    pending, resubmitted = dict(submitted), set()
    while pending:
        for future in as_completed(list(pending)):
            kind = pending.pop(future)
            try:
                result = future.result()
            except Exception as exc:
                if not _worker_lost(exc) or future.task_run_id in resubmitted:
                    raise
                resubmitted.add(future.task_run_id)
                future.wrapped_future.retry()
                pending[future] = kind
                logger.warning("%s: a worker died running a chunk; resubmitted once", kind)
                continue
            totals[kind].add(commits[kind](result, store, run_id, force))
            done = totals[kind]
            logger.info(
                "%s: chunk %d/%d committed (%d cases so far)",
                kind,
                done.chunks,
                chunks[kind],
                done.cases + done.failed,
            )
    return totals


def _worker_lost(exc: BaseException) -> bool:
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    return isinstance(exc, KilledWorker | CommClosedError)


@flow(name="extract-features", log_prints=True)
def extract_features(settings: Settings, run_id: str) -> Totals:
    """Radiomics chunks to every Dask worker, CNN chunks to GPU workers only."""
    store = FeatureStore(settings.store)
    work = load_plan(store, run_id)
    submitted = {}
    if work.radiomics:
        submitted |= submit_radiomics(radiomics_chunks(work, settings), work.params, settings)
    if work.embeddings:
        submitted |= submit_embeddings(embedding_chunks(work, settings), work.embeddings, settings)
    return commit_as_completed(submitted, store, run_id, work.window.force)


def run_extraction(work: WorkPlan, settings: Settings, run_id: str) -> Totals:
    """Run a plan on Dask; the cluster starts only when the plan has work for it."""
    if not work.has_work:
        return empty_totals()
    store = FeatureStore(settings.store)
    save_plan(store, run_id, work)
    try:
        runner = task_runner(settings)
        return extract_features.with_options(task_runner=runner)(settings, run_id)
    finally:
        drop_plan(store, run_id)
