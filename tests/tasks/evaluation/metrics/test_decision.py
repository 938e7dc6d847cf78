"""Decision curves (tasks.evaluation.metrics.decision) against hand cases and dcurves 1.1.7."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.metrics import decision
from tests.tasks.evaluation.metrics.reference import calibration_sample


def test_decision_curve_hand_case():
    # n = 6, 3 events (prevalence 1/2).
    y = [1, 1, 0, 0, 1, 0]
    prob = [0.9, 0.6, 0.55, 0.3, 0.2, 0.1]
    dc = decision.decision_curve(y, prob, thresholds=[0.25, 0.5, 0.6])
    assert list(dc.columns) == [
        "threshold",
        "net_benefit_model",
        "net_benefit_all",
        "net_benefit_none",
    ]
    # pt = 0.25 (odds 1/3): treated 0.9+, 0.6+, 0.55-, 0.3-: TP 2, FP 2;
    #   NB = 2/6 - 2/6 * 1/3 = 2/9; all: 1/2 - 1/2 * 1/3 = 1/3.
    # pt = 0.5 (odds 1): treated 0.9+, 0.6+, 0.55-: NB = 2/6 - 1/6 = 1/6; all: 0.
    # pt = 0.6 (odds 3/2): treated 0.9+, 0.6+ (prob >= pt): NB = 2/6; all: 1/2 - 3/4 = -1/4.
    np.testing.assert_allclose(dc["net_benefit_model"], [2 / 9, 1 / 6, 1 / 3], atol=1e-15)
    np.testing.assert_allclose(dc["net_benefit_all"], [1 / 3, 0.0, -1 / 4], atol=1e-15)
    assert (dc["net_benefit_none"] == 0).all()


def test_decision_curve_treat_all_formula_and_default_grid():
    y, prob = calibration_sample(3, 300)
    dc = decision.decision_curve(y, prob)
    assert len(dc) == 98 and dc["threshold"].iloc[0] == 0.01
    prev = y.mean()
    pt = dc["threshold"].to_numpy()
    np.testing.assert_allclose(dc["net_benefit_all"], prev - (1 - prev) * pt / (1 - pt))
    # Treat-all is the model that treats everyone, treat-none the one that treats nobody.
    everyone = decision.decision_curve(y, np.ones_like(prob), thresholds=pt)
    np.testing.assert_allclose(everyone["net_benefit_model"], dc["net_benefit_all"], atol=1e-15)
    nobody = decision.decision_curve(y, np.zeros_like(prob), thresholds=pt)
    assert (nobody["net_benefit_model"] == 0).all()
    with pytest.raises(ValueError):
        decision.decision_curve(y, prob, thresholds=[0.0, 0.5])


def test_decision_curve_matches_dcurves(asah):
    # Reference produced once, outside the project venv, with dcurves 1.1.7
    # (pip install dcurves into /tmp; pandas 2.3.3, numpy 2.4.6):
    #   df = pd.DataFrame({"poor": y, "risk": s100b / 2.1})   # aSAH as above
    #   out = dcurves.dca(data=df, outcome="poor", modelnames=["risk"],
    #                     thresholds=[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4])
    #   out[out.model == m]["net_benefit"] for m in ("risk", "all")
    thresholds = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4]
    nb_model = [
        0.26595249184909175,
        0.21632251720747295,
        0.15825091098386257,
        0.12389380530973451,
        0.09734513274336284,
        0.07964601769911504,
        0.02654867256637168,
    ]
    nb_all = [
        0.32929669306008386,
        0.2920353982300885,
        0.25039042165538783,
        0.20353982300884957,
        0.1504424778761062,
        0.08975979772439946,
        -0.0619469026548673,
    ]
    dc = decision.decision_curve(asah["y"], asah["s100b"] / 2.1, thresholds=thresholds)
    np.testing.assert_allclose(dc["net_benefit_model"], nb_model, atol=1e-12)
    np.testing.assert_allclose(dc["net_benefit_all"], nb_all, atol=1e-12)
