"""The TRIPOD+AI section: every item the software can state, in JSON and in the page."""

from __future__ import annotations

import json

from tasks.evaluation.report.tripod import NOT_DONE, tripod_html, tripod_section


def test_every_item_is_stated_from_the_evaluation(sample_evaluation, fitted):
    t = tripod_section(sample_evaluation)
    assert list(t) == [
        "guideline",
        "data_sources",
        "participants",
        "missing_data",
        "predictors",
        "sample_size",
        "model_specification",
        "performance",
        "calibration",
        "decision_sets",
        "not_done",
    ]
    json.dumps(t, allow_nan=False, default=str)
    assert t["participants"]["quarantined_cases"] == sample_evaluation.cohort_flow.quarantined
    comb = sample_evaluation.models["COMB"]
    assert t["sample_size"]["testing"] == {
        "n": comb["testing"].n,
        "events": comb["testing"].n_pos,
        "non_events": comb["testing"].n_neg,
    }
    spec = t["model_specification"]["COMB"]
    assert spec["coefficients"] == fitted["COMB"].selected_features()
    assert spec["intercept"] == float(fitted["COMB"].pipeline.named_steps["logit"].intercept_[0])
    assert "0f1e2d3c4b5a" in t["predictors"]["handcrafted"]
    assert t["performance"]["COMB"]["validation"]["auc"] == comb["validation"].auc
    assert t["not_done"] == list(NOT_DONE)


def test_the_html_section_escapes_and_names_what_was_not_done(sample_evaluation):
    page = tripod_html(sample_evaluation)
    assert page.startswith('<section id="tripod">') and "<script>" not in page
    assert "No clinical validation" in page and "Which set served which decision" in page
