"""Per-site metrics within a set, and drift of the model's inputs against training."""

from __future__ import annotations

import math

import numpy as np

from tasks.evaluation.sites import selected_inputs, site_drift, site_metrics


def test_a_site_needs_twenty_cases_and_five_of_each_class_for_an_auc():
    rng = np.random.default_rng(0)
    y = np.array([1] * 5 + [0] * 15)
    ok = site_metrics(y, rng.normal(size=20) + y, 0.0)
    assert ok.enough and math.isfinite(ok.auc) and ok.note == ""
    few = site_metrics(y[:19], rng.normal(size=19), 0.0)  # n = 19
    assert not few.enough and math.isnan(few.auc) and few.note.startswith("too few: n=19")
    four = site_metrics(np.array([1] * 4 + [0] * 30), rng.normal(size=34), 0.0)
    assert not four.enough and "4 positive" in four.note
    assert four.tp + four.fp + four.tn + four.fn == 34  # counts are shown either way


def test_drift_reads_only_the_models_selected_inputs(feature_data, fitted):
    comb = fitted["COMB"]
    inputs = selected_inputs(comb, feature_data.reader1)
    assert list(inputs.columns) == list(comb.selected_features())
    drift = site_drift(comb, feature_data, n_resamples=100)
    assert set(drift) == {"validation", "testing"}
    site = drift["validation"]["C"]
    assert site.features == inputs.shape[1] and site.critical > 0 and math.isfinite(site.psi_max)
    # The same seed gives the same critical value: the report's numbers repeat.
    again = site_drift(comb, feature_data, n_resamples=100)
    assert again["validation"]["C"].critical == site.critical
