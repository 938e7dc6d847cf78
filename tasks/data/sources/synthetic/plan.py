"""Cohort plan of the synthetic cohort: who is in it, their factors, label, site, date, split.

:func:`plan_cohort` decides everything that is not a pixel, from the ``PLAN`` and
``REPEATS`` random streams of one seed. Reads and writes nothing.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pandas as pd

from tasks.data.sources.synthetic.latent import SITES, VALIDATION_SITE, draw_latent
from tasks.data.sources.synthetic.streams import PLAN, REPEATS, stream

# Cohort shape of the paper (Yang et al. 2025): 450 patients, 105 external validation.
PAPER_PATIENTS = 450
PAPER_VALIDATION = 105
TEST_SHARE = 0.2
FIRST_EXAM = date(2021, 10, 1)
LAST_EXAM = date(2025, 3, 31)


def _round_half_up(value: float) -> int:
    """Round .5 upwards: Python's round() would send 2.5 to 2 and surprise a reader."""
    return int(math.floor(value + 0.5))


def _stratified_pick(labels: np.ndarray, n_pick: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n_pick`` positions keeping each label's share (largest-remainder quotas)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = n_pick * counts / counts.sum()
    quotas = np.floor(exact).astype(int)
    shortfall = n_pick - quotas.sum()
    quotas[np.argsort(-(exact - quotas), kind="stable")[:shortfall]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == cls), size=quota, replace=False)
        for cls, quota in zip(classes, quotas, strict=True)
    ]
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=int)


def plan_cohort(
    n_patients: int = PAPER_PATIENTS, seed: int = 0, repeat_share: float = 0.3
) -> pd.DataFrame:
    """Plan the cohort without drawing a pixel: one row per case.

    Site B gets ``round(N * 105 / 450)`` patients and is the external validation set; site
    A is split 80/20 into training/testing, stratified by label. Cases are numbered in exam
    order, as an export would list them. For 450 patients this gives the paper's 276 / 69
    / 105.

    Parameters
    ----------
    n_patients : number of patients (one lesion each).
    seed : cohort seed; the same seed always gives the same plan.
    repeat_share : share of cases that get reader-2 and reader-1 repeat masks.

    Returns
    -------
    pandas.DataFrame
        ``case_index, case_id, patient_id, site, exam_date, label, split,
        pixel_spacing_mm, has_repeat`` and the latent columns of
        :func:`~tasks.data.sources.synthetic.latent.draw_latent`.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    if not 0.0 <= repeat_share <= 1.0:
        raise ValueError(f"repeat_share must be within [0, 1], got {repeat_share}")
    rng = stream(seed, PLAN)
    plan = draw_latent(n_patients, rng)
    span_days = (LAST_EXAM - FIRST_EXAM).days
    exam_day = rng.integers(0, span_days + 1, n_patients)
    site = np.full(n_patients, "A", dtype=object)
    n_validation = _round_half_up(n_patients * PAPER_VALIDATION / PAPER_PATIENTS)
    site[rng.permutation(n_patients)[:n_validation]] = VALIDATION_SITE
    order = np.argsort(exam_day, kind="stable")
    plan = plan.iloc[order].reset_index(drop=True)
    exam_day, site = exam_day[order], site[order]

    split = np.where(site == VALIDATION_SITE, "validation", "training").astype(object)
    development = np.flatnonzero(site != VALIDATION_SITE)
    n_test = _round_half_up(len(development) * TEST_SHARE)
    labels = plan["label"].to_numpy()
    split[development[_stratified_pick(labels[development], n_test, rng)]] = "testing"

    has_repeat = np.zeros(n_patients, dtype=bool)
    n_repeat = _round_half_up(n_patients * repeat_share)
    has_repeat[stream(seed, REPEATS).permutation(n_patients)[:n_repeat]] = True

    width = max(4, len(str(n_patients)))
    numbers = [f"{i + 1:0{width}d}" for i in range(n_patients)]
    plan.insert(0, "case_index", np.arange(n_patients))
    plan.insert(1, "case_id", [f"SYN-{n}" for n in numbers])
    plan.insert(2, "patient_id", [f"P{n}" for n in numbers])
    plan.insert(3, "site", site)
    plan.insert(
        4, "exam_date", [(FIRST_EXAM + timedelta(days=int(d))).isoformat() for d in exam_day]
    )
    plan["split"] = split
    plan["pixel_spacing_mm"] = [SITES[s].pixel_spacing_mm for s in site]
    plan["has_repeat"] = has_repeat
    return plan
