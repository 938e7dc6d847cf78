"""Classification metrics (tasks.evaluation.metrics.binary) against statsmodels' Wilson
intervals, scikit-learn's ROC curve, pROC's Youden threshold on aSAH and hand cases.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve
from statsmodels.stats.proportion import proportion_confint

from tasks.evaluation.metrics import binary
from tests.tasks.evaluation.metrics.reference import simulated


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
def test_wilson_matches_statsmodels(alpha):
    counts = [(0, 1), (1, 1), (0, 7), (7, 7), (3, 7), (1, 20), (19, 20), (50, 105), (0, 450)]
    for x, n in counts:
        lo, hi = binary.wilson_ci(x, n, alpha)
        ref_lo, ref_hi = proportion_confint(x, n, alpha=alpha, method="wilson")
        assert lo == pytest.approx(ref_lo, abs=1e-12)
        assert hi == pytest.approx(ref_hi, abs=1e-12)
    xs, ns = np.array(counts).T
    lo, hi = binary.wilson_ci(xs, ns, alpha)
    ref_lo, ref_hi = proportion_confint(xs, ns, alpha=alpha, method="wilson")
    np.testing.assert_allclose(lo, ref_lo, atol=1e-12)
    np.testing.assert_allclose(hi, ref_hi, atol=1e-12)


def test_wilson_edges():
    lo, hi = binary.wilson_ci(0, 10)
    assert lo == 0.0 and 0 < hi < 1
    lo, hi = binary.wilson_ci(10, 10)
    assert hi == 1.0 and 0 < lo < 1
    lo, hi = binary.wilson_ci(0, 0)
    assert math.isnan(lo) and math.isnan(hi)
    lo, hi = binary.wilson_ci(np.array([0, 1]), np.array([0, 2]))
    assert math.isnan(lo[0]) and lo[1] > 0
    assert isinstance(binary.wilson_ci(3, 7)[0], float)
    with pytest.raises(ValueError):
        binary.wilson_ci(5, 4)


# ---------------------------------------------------------------------------------------
# Youden threshold and classification metrics
# ---------------------------------------------------------------------------------------
def test_youden_hand_case_with_tie():
    # Positive if score >= t. Sorted down: 0.8(+) 0.6(+) 0.4(-) 0.3(+) 0.2(-) 0.1(-),
    # 3 positives, 3 negatives. J(t) = tp/3 - fp/3:
    # t=0.8: 1/3; t=0.6: 2/3; t=0.4: 1/3; t=0.3: 3/3 - 1/3 = 2/3; t=0.2: 1/3; t=0.1: 0.
    # Maximum 2/3 at 0.6 and 0.3: the tie goes to the lowest threshold, 0.3.
    y = [0, 0, 1, 0, 1, 1]
    score = [0.1, 0.2, 0.3, 0.4, 0.6, 0.8]
    assert binary.youden_threshold(y, score) == 0.3
    # Flip the case at 0.3 to negative: 0.6 is then the unique maximum (J = 1).
    assert binary.youden_threshold([0, 0, 0, 0, 1, 1], score) == 0.6
    with pytest.raises(ValueError):
        binary.youden_threshold([1, 1, 1], [0.1, 0.2, 0.3])


def test_youden_matches_sklearn_roc_curve_and_proc(asah):
    y, s = asah["y"], asah["s100b"]
    t = binary.youden_threshold(y, s)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    best = thr[np.isclose(j, j.max(), atol=1e-12, rtol=0)].min()
    assert t == best
    # pROC coords(roc(aSAH$outcome, aSAH$s100b), "best") gives threshold 0.205 (the
    # midpoint between the observed 0.19 and 0.22), specificity 0.8055556, sensitivity
    # 0.6341463: the same partition as our observed-score threshold.
    assert t == 0.22 and 0.19 < 0.205 <= t
    res = binary.classification_metrics(y, s, t)
    assert res["specificity"] == pytest.approx(0.8055556, abs=1e-7)
    assert res["sensitivity"] == pytest.approx(0.6341463, abs=1e-7)


def test_classification_metrics_hand_case():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    score = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.5]
    # threshold 0.75: called positive 0.9(+), 0.8(+) -> tp 2, fp 0;
    # called negative 0.3(+), 0.5(+) -> fn 2; 0.7, 0.2, 0.1, 0.4 (-) -> tn 4.
    res = binary.classification_metrics(y, score, 0.75)
    assert (res["n"], res["tp"], res["fp"], res["tn"], res["fn"]) == (8, 2, 0, 4, 2)
    assert res["accuracy"] == 6 / 8
    assert res["sensitivity"] == 2 / 4
    assert res["specificity"] == 4 / 4
    assert res["ppv"] == 2 / 2
    assert res["npv"] == 4 / 6
    assert res["npv_ci"] == pytest.approx(
        list(proportion_confint(4, 6, method="wilson")), abs=1e-12
    )
    assert res["auc"] == pytest.approx(roc_auc_score(y, score))
    # ">=": at threshold 0.5 the case scored exactly 0.5 is called positive.
    assert binary.classification_metrics(y, score, 0.5)["tp"] == 3


def test_classification_metrics_undefined_values_are_nan():
    y = [1, 0, 1, 0]
    score = [0.2, 0.1, 0.3, 0.4]
    res = binary.classification_metrics(y, score, 0.9)  # nothing called positive
    assert res["tp"] == res["fp"] == 0
    assert math.isnan(res["ppv"]) and all(math.isnan(v) for v in res["ppv_ci"])
    assert res["sensitivity"] == 0.0 and res["npv"] == 0.5
    single = binary.classification_metrics([0, 0, 0], [0.2, 0.6, 0.9], 0.5)
    assert math.isnan(single["auc"]) and all(math.isnan(v) for v in single["auc_ci"])
    assert math.isnan(single["sensitivity"]) and single["specificity"] == 1 / 3
    empty = binary.classification_metrics([], [], 0.5)
    assert empty["n"] == 0 and math.isnan(empty["accuracy"]) and math.isnan(empty["auc"])


def test_model_set_metrics_report_shape():
    y, _, latent, _ = simulated(12)
    prob = expit(latent - 0.5)
    res = binary.model_set_metrics(y, prob, 0.4)
    for key in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "brier"):
        assert type(res[key]) is float
    assert type(res["n"]) is int and res["n"] == y.size
    assert isinstance(res["auc_ci"], list) and len(res["auc_ci"]) == 2
    assert all(type(v) is float for v in res["auc_ci"])
    assert res["brier"] == pytest.approx(brier_score_loss(y, prob), abs=1e-15)
    assert json.loads(json.dumps(res))["n"] == y.size
    single = binary.model_set_metrics([1, 1], [0.3, 0.9], 0.5)
    json.dumps(single)  # NaN is allowed by json.dumps
    assert math.isnan(single["auc"])
