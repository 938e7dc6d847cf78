"""The extract-features subflow: a run's one plan, fanned out over Dask, committed per chunk."""

from __future__ import annotations

import pytest
from prefect import flow

from flows.extract import run_extraction
from tasks.config import Settings
from tasks.data.ingest import ingest
from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, RADIOMICS, current_cohort
from tasks.features.plan import PLANS, Plan, WorkPlan
from tasks.features.work import plan_work


def test_nothing_to_do_starts_no_cluster_and_stores_no_plan(tmp_path):
    settings = Settings(store=str(tmp_path / "store"))
    work = WorkPlan(radiomics=Plan(todo=[], skipped=5, window=5))
    totals = run_extraction(work, settings, "run-1")
    assert {kind: counts.chunks for kind, counts in totals.items()} == {
        "radiomics": 0,
        "embeddings": 0,
    }
    assert not (tmp_path / "store" / PLANS).exists()


@pytest.mark.slow
def test_the_subflow_works_through_the_stored_plan(tiny_cohort, tmp_path, prefect_api):
    settings = Settings(store=str(tmp_path / "store"), n_workers=2, chunk_size=1)
    store = FeatureStore(settings.store)
    ingest(str(tiny_cohort), store, settings, "ingest")
    cohort = current_cohort(store.read(COHORT)).head(3)
    work = plan_work(cohort, store, settings, embeddings=False)

    totals = run_extraction(work, settings, "run-2")
    radiomics = totals["radiomics"]
    assert radiomics.cases == 3 and radiomics.failed == 0 and radiomics.chunks == 3
    rows = store.read(RADIOMICS)
    assert radiomics.rows == len(rows) and set(rows["run_id"]) == {"run-2"}
    assert rows.groupby(list(RADIOMICS.keys)).size().max() == 1
    assert totals["embeddings"].chunks == 0
    # The plan lived in the store only for the run.
    assert list((tmp_path / "store" / PLANS).glob("*.json")) == []


@flow
def _extract_and_commit(work: WorkPlan, settings: Settings, address: str):
    """Submit a plan's chunks and commit them; then ask what the workers and the futures
    still hold (module-level: prefect-dask pickles the flow for its workers)."""
    from distributed import Client

    from flows.extract import commit_as_completed, radiomics_chunks, submit_radiomics

    submitted = submit_radiomics(radiomics_chunks(work, settings), work.params, settings)
    totals = commit_as_completed(submitted, FeatureStore(settings.store), "run-3")
    with Client(address) as client:
        held = client.run(lambda dask_worker: len(dask_worker.data))
    return totals, held, [len(future.result().rows) for future in submitted]


@pytest.mark.slow
def test_a_committed_chunk_is_held_by_neither_the_workers_nor_the_flow(
    tiny_cohort, tmp_path, prefect_api
):
    """Memory flat as cohorts grow (issue 12): once a chunk is committed its rows are gone
    from the worker (Dask key released) and from the flow process (the future's cached
    result), although the flow still holds every future until the last chunk."""
    from prefect_dask import DaskTaskRunner

    from flows.runtime.runners import local_cluster

    settings = Settings(store=str(tmp_path / "store"), chunk_size=1)
    store = FeatureStore(settings.store)
    ingest(str(tiny_cohort), store, settings, "ingest")
    work = plan_work(current_cohort(store.read(COHORT)).head(3), store, settings, embeddings=False)

    with local_cluster(n_workers=2, gpu_workers=1) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        run = _extract_and_commit.with_options(task_runner=runner)
        totals, held, rows_left = run(work, settings, cluster.scheduler_address)

    assert totals["radiomics"].chunks == 3 and totals["radiomics"].cases == 3
    assert len(store.read(RADIOMICS)) == totals["radiomics"].rows > 0
    assert sum(held.values()) == 0, held
    assert rows_left == [0, 0, 0]
