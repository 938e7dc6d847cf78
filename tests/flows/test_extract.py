"""The extract-features subflow: a run's one plan, fanned out over Dask, committed per chunk."""

from __future__ import annotations

import pytest

from flows.extract import run_extraction
from tasks.config import Settings
from tasks.data.ingest import current_cohort, ingest
from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, RADIOMICS
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
