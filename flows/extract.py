"""The ``extract-features`` subflow: a run's plan fanned out over Dask, each chunk committed as
it completes.

Radiomics chunks may run on any worker; CNN chunks are submitted under
``dask.annotate(resources={"GPU": 1})`` so only GPU-resource workers take them. Commits
happen in the flow process (the single writer of the Delta tables), chunk by chunk, so a
crash keeps everything finished before it. The plan is made once by the calling flow and
kept in the store (:func:`tasks.features.plan.save_plan`): the subflow's parameters are the
settings and the run id, never case rows or file paths.

One run writes a store at a time: :func:`store_writer` takes the store's Prefect global
concurrency limit (one slot, named from a hash of the store URI) around the extraction and
its commits, so a nightly ``cohort`` and a ``backfill`` (or ``validate``'s embeddings) on
one store, under ``sln serve`` or two ``sln run``, run one after the other: the second
waits. The leases of :mod:`tasks.data.lease` keep rows single either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar

import dask
from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.utilities.annotations import opaque

from flows.runtime.runners import task_runner
from tasks.config import Settings
from tasks.data.store import FeatureStore
from tasks.features.plan import (
    ChunkResult,
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
            started = time.monotonic()
            # opaque: Prefect would otherwise walk every row and feature value of the chunk
            # looking for futures, twice per commit (about 2 s of CPU per 20-case chunk).
            counts = commits[kind](opaque(result), store, run_id, force)
            counts.commit_seconds = time.monotonic() - started
            _forget(future, result)
            totals[kind].add(counts)
            done = totals[kind]
            logger.info(
                "%s: chunk %d/%d committed (%d cases so far)",
                kind,
                done.chunks,
                chunks[kind],
                done.cases + done.failed,
            )
    return totals


def _forget(future: PrefectFuture, result: ChunkResult) -> None:
    """Drop a committed chunk's rows everywhere, so memory stays flat as cohorts grow: the
    worker keeps a task's result while its Dask key is held (release it), and the flow
    process keeps it in the future's cached final state, referenced by ``as_completed``
    until the last chunk (empty the rows in place)."""
    future.wrapped_future.release()
    result.rows.clear()
    result.failures.clear()


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


# -- one writing run per store: a Prefect global concurrency limit -------------------------
STORE_LIMIT_PREFIX = "sln-store-"
# Prefect's minimum: a holder that died frees the slot within this (plus the server's
# repossessor loop, 15 s); a live holder renews it every 3/4 of it.
STORE_LEASE_SECONDS = 60.0
# How long a run waits for the slot before going on without it (the table leases keep the
# rows single; the slot only saves work). Prefect's server keeps slot leases in memory by
# default: a server restart while a run holds the slot leaves the slot counted but
# unleased, never freed; this bound keeps such a stuck slot from stopping every night.
STORE_WAIT_SECONDS = 6 * 3600.0
_HELD: ContextVar[frozenset[str]] = ContextVar("sln_store_writer", default=frozenset())


def store_limit_name(store_uri: str) -> str:
    """The store's concurrency limit: a short hash of its URI (an absolute path for a
    folder, no trailing slash), so one store has one name and no path shows in Prefect."""
    uri = str(store_uri).rstrip("/")
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return STORE_LIMIT_PREFIX + hashlib.sha256(uri.encode()).hexdigest()[:16]


def _ensure_limit(name: str) -> None:
    """Create the store's one-slot limit when missing (Prefect does not: a missing limit
    would be no limit). Two first runs may race to create it: the loser's create fails
    and it reads the winner's."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            if client.read_global_concurrency_limit_by_name(name).limit >= 1:
                return
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
                return
        client.upsert_global_concurrency_limit_by_name(name, 1)


@contextlib.contextmanager
def store_writer(store_uri: str, timeout: float | None = None) -> Iterator[float]:
    """Hold the store's one writing slot for the block (waiting up to ``timeout`` seconds,
    None: as long as it takes); yields the seconds waited. Re-entrant in one run (a flow
    holding it may call :func:`run_extraction`, which takes it too)."""
    name = store_limit_name(store_uri)
    if name in _HELD.get():
        yield 0.0
        return
    from prefect.concurrency.sync import concurrency

    _ensure_limit(name)
    started = time.monotonic()
    with concurrency(
        name,
        occupy=1,
        timeout_seconds=timeout,
        lease_duration=STORE_LEASE_SECONDS,
        strict=True,
        raise_on_lease_renewal_failure=False,  # a Prefect restart must not kill a commit
    ):
        waited = time.monotonic() - started
        token = _HELD.set(_HELD.get() | {name})
        try:
            yield waited
        finally:
            _HELD.reset(token)


def _logger():
    """The flow run's logger, or the module's outside a flow run."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("flows.extract")


@contextlib.contextmanager
def _writing_slot(store_uri: str, timeout: float = STORE_WAIT_SECONDS) -> Iterator[float]:
    """The store's writing slot, or after ``timeout`` a warning and no slot; yields the
    seconds waited for it."""
    logger = _logger()
    with contextlib.ExitStack() as stack:
        waited = 0.0
        try:
            waited = stack.enter_context(store_writer(store_uri, timeout))
        except TimeoutError:
            logger.warning(
                "another run has held this store's writing slot (%s) for %.0f s: going on "
                "without it (the table leases keep every row single)",
                store_limit_name(store_uri),
                timeout,
            )
        else:
            if waited > 1.0:
                logger.info("waited %.0f s for another run writing this store", waited)
        yield waited


def still_to_do(work: WorkPlan, store: FeatureStore, settings: Settings) -> WorkPlan:
    """``work`` less the radiomics cases another run stored since it was planned (after a
    wait for the store's slot): the waiting run does not extract them again. Embeddings
    stay as planned (their crop size needs the model); a forced window keeps every case."""
    if not work.radiomics or not work.radiomics.todo or work.window.force:
        return work
    import pandas as pd

    from tasks.data.tables import RADIOMICS
    from tasks.features.plan import Plan, plan_cases
    from tasks.features.radiomics import params_hash

    phash = params_hash(work.params or {}, ring_mm=settings.ring_mm, ring_px=settings.ring_px)
    stored = store.read(RADIOMICS, columns=list(RADIOMICS.keys))
    planned = work.radiomics
    left = plan_cases(
        pd.DataFrame(planned.todo),
        stored,
        "params_hash",
        phash,
        work.window,
        settings.perturb_repeats,
    )
    done = len(planned.todo) - len(left.todo)
    radiomics = Plan(todo=left.todo, skipped=planned.skipped + done, window=planned.window)
    return dataclasses.replace(work, radiomics=radiomics)


def run_extraction(work: WorkPlan, settings: Settings, run_id: str) -> Totals:
    """Run a plan on Dask; the cluster starts only when the plan has work for it. Holds
    the store's writing slot (:func:`store_writer`) from before the cluster starts to the
    last commit."""
    if not work.has_work:
        return empty_totals()
    store = FeatureStore(settings.store)
    with _writing_slot(settings.store) as waited:
        if waited > 1.0:  # another run wrote this store meanwhile: what is left to do
            work = still_to_do(work, store, settings)
            if not work.has_work:
                return empty_totals()
        save_plan(store, run_id, work)
        try:
            runner = task_runner(settings)
            totals = extract_features.with_options(task_runner=runner)(settings, run_id)
        finally:
            drop_plan(store, run_id)
        compact_tables(store, totals, settings.compact_at_files)
        return totals


def compact_tables(store: FeatureStore, totals: Totals, at_files: int) -> None:
    """Compact each table this run wrote once it holds ``at_files`` files
    (:meth:`FeatureStore.compact`, ``SLN_COMPACT_AT_FILES``); the seconds count as commit
    time. The rows are stored already, so a failure here is a warning, and the next run
    tries again."""
    from tasks.data.tables import EMBEDDINGS, RADIOMICS

    logger = _logger()
    for kind, spec in (("radiomics", RADIOMICS), ("embeddings", EMBEDDINGS)):
        if not totals[kind].rows:
            continue
        started = time.monotonic()
        try:
            done = store.compact(spec, at_files)
        except Exception as exc:  # noqa: BLE001 (upkeep only: every row is committed)
            done = None
            logger.warning("%s: compacting the table failed (%s); rows are stored", kind, exc)
        totals[kind].commit_seconds += time.monotonic() - started
        if done:
            logger.info(
                "%s: table compacted, %d files into %d (version %d)",
                kind,
                done["files_before"],
                done["files_after"],
                done["version"],
            )
