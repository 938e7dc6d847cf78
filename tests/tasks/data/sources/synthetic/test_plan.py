"""Tests for tasks.data.sources.synthetic.plan: who is in the cohort, and in which split."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from tasks.data.sources.synthetic.latent import SITES, VALIDATION_SITE
from tasks.data.sources.synthetic.plan import _stratified_pick, plan_cohort


def test_plan_for_450_patients_reproduces_the_paper_split():
    plan = plan_cohort(450, seed=0)
    counts = plan.groupby(["site", "split"]).size().to_dict()
    assert counts == {("A", "training"): 276, ("A", "testing"): 69, ("B", "validation"): 105}
    assert 0.3 <= plan["label"].mean() <= 0.45
    # Testing is stratified by label within site A: its positive share matches site A's.
    site_a = plan[plan["site"] == "A"]
    testing = site_a[site_a["split"] == "testing"]
    assert abs(testing["label"].mean() - site_a["label"].mean()) <= 1 / 69


@pytest.mark.parametrize(
    ("n_patients", "n_validation", "n_testing"), [(12, 3, 2), (100, 23, 15), (1000, 233, 153)]
)
def test_plan_keeps_the_proportions_for_other_sizes(n_patients, n_validation, n_testing):
    plan = plan_cohort(n_patients, seed=1)
    split = plan["split"].value_counts().to_dict()
    assert split.get("validation", 0) == n_validation
    assert split.get("testing", 0) == n_testing
    assert split.get("training", 0) == n_patients - n_validation - n_testing
    assert (plan.loc[plan["split"] == "validation", "site"] == "B").all()
    assert (plan.loc[plan["split"] != "validation", "site"] == "A").all()


def test_plan_identifiers_dates_and_spacing_look_like_an_export():
    plan = plan_cohort(40, seed=5)
    assert plan["case_id"].tolist() == [f"SYN-{i:04d}" for i in range(1, 41)]
    assert plan["patient_id"].str.fullmatch(r"P\d{4}").all()
    assert plan["patient_id"].is_unique
    dates = pd.to_datetime(plan["exam_date"], format="%Y-%m-%d")
    assert dates.is_monotonic_increasing  # numbered in exam order
    assert dates.min().date() >= date(2021, 10, 1)
    assert dates.max().date() <= date(2025, 3, 31)
    assert dates.dt.year.nunique() >= 3
    for site, profile in SITES.items():
        spacing = plan.loc[plan["site"] == site, "pixel_spacing_mm"]
        assert (spacing == profile.pixel_spacing_mm).all()


def test_plan_depends_on_the_seed_only():
    first, again = plan_cohort(60, seed=9), plan_cohort(60, seed=9)
    pd.testing.assert_frame_equal(first, again)
    other = plan_cohort(60, seed=10)
    assert not np.allclose(first["morph"], other["morph"])
    # Changing the repeat share changes which cases get repeats, nothing else.
    more = plan_cohort(60, seed=9, repeat_share=0.6)
    pd.testing.assert_frame_equal(first.drop(columns="has_repeat"), more.drop(columns="has_repeat"))
    assert (more["has_repeat"] | ~first["has_repeat"]).all()  # a superset


@pytest.mark.parametrize(("kwargs"), [{"n_patients": 0}, {"repeat_share": 1.5}])
def test_plan_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        plan_cohort(**{"n_patients": 10, **kwargs})


def test_plan_numbers_past_9999_patients_get_wider():
    plan = plan_cohort(10_000, seed=0, repeat_share=0.0)
    assert plan["case_id"].iloc[[0, -1]].tolist() == ["SYN-00001", "SYN-10000"]
    assert plan["patient_id"].iloc[-1] == "P10000"
    assert not plan["has_repeat"].any()
    assert (plan.loc[plan["site"] == VALIDATION_SITE, "split"] == "validation").all()


def test_stratified_pick_keeps_each_label_share():
    labels = np.array([0] * 70 + [1] * 30)
    picked = _stratified_pick(labels, 10, np.random.default_rng(0))
    assert len(picked) == len(set(picked)) == 10
    assert np.bincount(labels[picked]).tolist() == [7, 3]
    # Largest remainder: 2 of (0, 0, 1) is exactly 1.33 and 0.67, so one of each.
    few = np.array([0, 0, 1])
    assert sorted(few[_stratified_pick(few, 2, np.random.default_rng(0))]) == [0, 1]
