"""Tests for tasks.data.sources.synthetic.latent: the label model and the two sites."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.data.sources import synthetic
from tasks.data.sources.synthetic.latent import (
    COEFFICIENTS,
    FACTOR_CORRELATION,
    FACTORS,
    INTERCEPT,
    SITES,
    VALIDATION_SITE,
    draw_latent,
    severity,
)
from tests.tasks.data.sources.synthetic.helpers import WrittenCohort


def test_sites_have_their_own_scanner_character(cohort: WrittenCohort):
    manifest = cohort.manifest
    assert set(manifest["site"]) == {"A", "B"}
    a, b = SITES["A"], SITES["B"]
    assert a.shape != b.shape and a.pixel_spacing_mm != b.pixel_spacing_mm
    assert a.speckle_sigma_px != b.speckle_sigma_px


def test_site_profiles_are_named_by_their_key_and_b_is_validation():
    assert {key: site.name for key, site in SITES.items()} == {"A": "A", "B": "B"}
    assert VALIDATION_SITE in SITES
    for site in SITES.values():
        assert 0.0 < site.wall_filter < 1.0 and site.dynamic_range_db > 0


def test_latent_draws_follow_the_documented_model():
    table = draw_latent(100_000, np.random.default_rng(0))
    assert list(table.columns) == [*FACTORS, "unexplained", "logit", "label"]
    factors = table[list(FACTORS)].to_numpy()
    np.testing.assert_allclose(factors.mean(axis=0), 0.0, atol=0.02)
    np.testing.assert_allclose(factors.std(axis=0), 1.0, atol=0.02)
    corr = np.corrcoef(factors.T)[np.triu_indices(3, 1)]
    np.testing.assert_allclose(corr, FACTOR_CORRELATION, atol=0.02)
    logit = INTERCEPT + factors @ np.asarray(COEFFICIENTS) + table["unexplained"].to_numpy()
    np.testing.assert_allclose(table["logit"], logit)
    assert set(table["label"]) == {0, 1}
    # docs/synthetic-cohort.md: prevalence 0.368 expected.
    assert table["label"].mean() == pytest.approx(0.368, abs=0.01)


def test_severity_is_in_the_unit_interval_and_rises_with_the_factor():
    rng = np.random.default_rng(1)
    low = [severity(-2.0, rng) for _ in range(500)]
    high = [severity(2.0, rng) for _ in range(500)]
    assert all(0.0 < s < 1.0 for s in low + high)
    assert np.mean(low) < 0.2 < 0.8 < np.mean(high)


def test_the_package_exports_what_its_callers_use():
    assert set(synthetic.__all__) >= {"generate_cohort", "plan_cohort", "SITES", "FACTORS"}
    assert synthetic.SITES is SITES and synthetic.LATENT_COLUMNS[:3] == ("case_id", "site", "label")
