"""One plan per run: which cases need radiomics and which need embeddings, from one read of
``cohort`` (done by the calling flow) and one read of each feature table's keys.

The counts a run reports (new, skipped) come from this plan, the same one that drives the
work (:func:`flows.extract.run_extraction`).
"""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Settings
from tasks.data.store import FeatureStore
from tasks.features.plan import Window, WorkPlan
from tasks.features.radiomics import plan_radiomics


def plan_work(
    cohort: pd.DataFrame,
    store: FeatureStore,
    settings: Settings,
    window: Window = Window(),
    radiomics: bool = True,
    embeddings: bool = True,
    model: str | None = None,
) -> WorkPlan:
    """The run's plan over the current ``cohort`` rows.

    ``radiomics`` / ``embeddings`` choose the kinds of work; ``model`` is the CNN to embed
    with (default: the current one).
    """
    work = WorkPlan(window=window)
    if radiomics:
        work.radiomics, work.params = plan_radiomics(cohort, store, settings, window)
    if embeddings:
        from tasks.features.cnn.embed import plan_embeddings  # torch only where CNN work runs

        work.embeddings = plan_embeddings(cohort, store, settings, window, model)
    return work


plan_work_task = task(plan_work, name="plan", cache_policy=NO_CACHE)
