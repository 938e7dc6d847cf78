"""The evaluation contract: frozen results whose fields are the metrics' keys and the
report's JSON keys, in order."""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import numpy as np
import pytest

from tasks.evaluation.metrics import decision_curve, delong_test, model_set_metrics
from tasks.evaluation.results import (
    Checks,
    DelongTest,
    Evaluation,
    ModelSetMetrics,
    NetBenefit,
    RocCurve,
)

BEFORE = Path(__file__).parent / "data" / "report.json"


def _names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def test_results_are_frozen(sample_evaluation):
    with pytest.raises(FrozenInstanceError):
        sample_evaluation.run_id = "other"
    with pytest.raises(FrozenInstanceError):
        sample_evaluation.models["COMB"]["validation"].auc = 1.0


def test_with_checks_returns_a_new_evaluation(sample_evaluation):
    checks = Checks(auc_floor=0.9, split="testing", auc=0.5, passed=False, failed=("low",))
    checked = sample_evaluation.with_checks(checks)
    assert checked.checks is checks and checked is not sample_evaluation
    assert sample_evaluation.checks is not checks
    assert checked.models is sample_evaluation.models


def test_fields_are_the_metrics_keys_in_order():
    y = np.array([0, 1, 0, 1, 1, 0])
    prob = np.array([0.2, 0.7, 0.4, 0.6, 0.3, 0.1])
    assert _names(ModelSetMetrics) == list(model_set_metrics(y, prob, 0.5))
    assert _names(DelongTest) == list(delong_test(y, prob, prob[::-1]))
    assert _names(NetBenefit) == list(decision_curve(y, prob).columns)


def test_evaluation_fields_are_the_report_keys_in_order():
    keys = list(json.loads(BEFORE.read_text()))
    # report.json: the fields in order, checks (when set), then roc and the disclaimer.
    expected = [n for n in _names(Evaluation) if n not in ("roc", "checks")]
    assert keys == [*expected, "checks", "roc", "tripod", "disclaimer"]
    assert [f.metadata.get("json", f.name) for f in fields(Checks)] == list(
        json.loads(BEFORE.read_text())["checks"]
    )


def test_roc_curve_defined_only_with_points():
    assert RocCurve((0.0, 1.0), (0.0, 1.0), 4, 2).defined
    assert not RocCurve((), (), 4, 0).defined


def test_undefined_numbers_are_nan(sample_evaluation):
    site_d = sample_evaluation.per_site["testing"]["D"]["COMB"]  # five negatives only
    assert site_d.n == 5 and site_d.n_pos == 0 and not site_d.enough
    assert math.isnan(site_d.auc) and site_d.note.startswith("too few")
    assert all(math.isnan(v) for v in site_d.auc_ci)
