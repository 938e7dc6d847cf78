"""One plan per run: radiomics and embeddings planned from one read of the cohort."""

from __future__ import annotations

import pandas as pd

from tasks.config import Settings
from tasks.data.ingest import ingest
from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, RADIOMICS, current_cohort
from tasks.features.plan import Window, variant_keys
from tasks.features.radiomics import current_params_hash
from tasks.features.work import plan_work


def _ingested(tiny_cohort, tmp_path) -> tuple[FeatureStore, Settings, pd.DataFrame]:
    settings = Settings(store=str(tmp_path / "store"), cnn_start="random", cnn_size=64)
    store = FeatureStore(settings.store)
    ingest(str(tiny_cohort), store, settings, "test")
    return store, settings, current_cohort(store.read(COHORT))


def test_plan_work_plans_both_kinds_from_the_given_cohort(tiny_cohort, tmp_path):
    store, settings, cohort = _ingested(tiny_cohort, tmp_path)
    work = plan_work(cohort, store, settings)
    assert len(work.radiomics.todo) == 8 and work.radiomics.skipped == 0
    assert work.params["setting"]["binWidth"] > 0  # the validated params travel with it
    assert len(work.embeddings.plan.todo) == 8
    assert work.embeddings.version.startswith("start-random")
    assert work.embeddings.dual  # the tiny cohort has colour Doppler
    assert work.has_work

    # The plan works on the rows it is given: a subset gives a subset.
    assert len(plan_work(cohort.head(3), store, settings).radiomics.todo) == 3


def test_stored_rows_are_skipped_and_kinds_can_be_left_out(tiny_cohort, tmp_path):
    store, settings, cohort = _ingested(tiny_cohort, tmp_path)
    done = cohort.iloc[0].to_dict()
    rows = [
        {
            "case_id": case_id,
            "region": region,
            "mask_variant": variant,
            "image_sha256": image,
            "mask_sha256": mask,
            "params_hash": current_params_hash(settings),
        }
        for case_id, variant, image, mask in variant_keys(done, settings.perturb_repeats)
        for region in ("intratumoral", "peritumoral")
    ]
    store.insert_new(RADIOMICS, pd.DataFrame(rows))
    work = plan_work(cohort, store, settings, embeddings=False)
    assert work.embeddings is None
    assert work.radiomics.skipped == 1 and len(work.radiomics.todo) == 7
    assert done["case_id"] not in {case["case_id"] for case in work.radiomics.todo}
    # force re-plans the whole window, stored or not
    forced = plan_work(cohort, store, settings, Window(force=True), embeddings=False)
    assert len(forced.radiomics.todo) == 8


def test_an_exam_window_narrows_the_plan(tiny_cohort, tmp_path):
    store, settings, cohort = _ingested(tiny_cohort, tmp_path)
    work = plan_work(cohort, store, settings, Window("2023-02-01", "2023-03-31"), embeddings=False)
    dates = sorted(case["exam_date"] for case in work.radiomics.todo)
    assert dates and all("2023-02-01" <= d <= "2023-03-31" for d in dates)
    assert work.radiomics.window == len(dates)
