"""Number formatting and labels of the report."""

from __future__ import annotations

import math

from tasks.evaluation.report._format import DASH, SET_LABELS, est_ci, f, present


def test_numbers_round_and_missing_values_show_a_dash():
    assert f(0.12345) == "0.123" and f(2.0, 1) == "2.0"
    assert f(None) == f(math.nan) == f(math.inf) == DASH


def test_estimates_with_and_without_intervals():
    assert est_ci(0.78123, (0.7, 0.86)) == "0.781 (0.700–0.860)"
    assert est_ci(0.5, (math.nan, math.nan)) == "0.500"
    assert est_ci(math.nan, (0.1, 0.2)) == DASH


def test_present_keeps_split_order_and_labels_cover_every_split():
    tree = {"COMB": {"testing": 1, "training": 2}, "ONLY_HF": {"validation": 3}}
    assert present(tree) == ["training", "validation", "testing"]
    assert present({"COMB": {"testing": 1}}) == ["testing"]
    assert set(SET_LABELS) == {"training", "training_new", "validation", "testing"}
    assert present({"COMB": {"training_new": 1, "training": 2}}) == ["training", "training_new"]
