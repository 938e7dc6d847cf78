"""Calibration (tasks.evaluation.metrics.calibration) against a statsmodels binomial GLM
and scikit-learn's calibration_curve.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from tasks.evaluation.metrics.calibration import calibration
from tests.tasks.evaluation.metrics.reference import calibration_sample


def test_calibration_matches_statsmodels_glm():
    y, prob = calibration_sample(0, 800, spread=1.4, shift=0.3)
    res = calibration(y, prob)
    lp = np.log(prob / (1 - prob))
    glm_int = sm.GLM(y, np.ones((y.size, 1)), family=sm.families.Binomial(), offset=lp).fit()
    glm_slope = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    assert res["intercept"] == pytest.approx(glm_int.params[0], abs=1e-9)
    assert res["slope"] == pytest.approx(glm_slope.params[1], abs=1e-9)
    assert res["brier"] == pytest.approx(brier_score_loss(y, prob), abs=1e-15)
    assert res["n"] == y.size


def test_calibration_perfect_and_overconfident():
    y, prob = calibration_sample(1, 20000)
    perfect = calibration(y, prob)
    assert perfect["slope"] == pytest.approx(1.0, abs=0.05)
    assert perfect["intercept"] == pytest.approx(0.0, abs=0.05)
    over = calibration(y, expit(2.0 * logit(prob)))
    assert over["slope"] == pytest.approx(0.5, abs=0.03)
    under = calibration(y, expit(0.5 * logit(prob)))
    assert under["slope"] == pytest.approx(2.0, abs=0.1)


def test_reliability_curve_matches_sklearn():
    y, prob = calibration_sample(2, 500, spread=1.2)
    rel = calibration(y, prob, n_bins=10)["reliability"]
    prob_true, prob_pred = calibration_curve(y, prob, n_bins=10, strategy="quantile")
    np.testing.assert_allclose(rel["observed_fraction"], prob_true, atol=1e-12)
    np.testing.assert_allclose(rel["mean_predicted"], prob_pred, atol=1e-12)
    assert rel["count"].sum() == y.size and list(rel.columns) == [
        "bin",
        "mean_predicted",
        "observed_fraction",
        "count",
    ]
    # Heavy ties: tied quantile edges leave empty bins, which are dropped (as sklearn).
    tied = np.repeat([0.2, 0.5, 0.8], [50, 30, 20])
    y_tied = (np.arange(100) % 3 == 0).astype(int)
    rel_tied = calibration(y_tied, tied, n_bins=10)["reliability"]
    ref_true, ref_pred = calibration_curve(y_tied, tied, n_bins=10, strategy="quantile")
    np.testing.assert_allclose(rel_tied["observed_fraction"], ref_true, atol=1e-12)
    np.testing.assert_allclose(rel_tied["mean_predicted"], ref_pred, atol=1e-12)


def test_calibration_undefined_fits_are_nan():
    single = calibration([1, 1, 1], [0.2, 0.5, 0.7])
    assert math.isnan(single["intercept"]) and math.isnan(single["slope"])
    # Outcome perfectly separated by logit(p): the slope MLE does not exist.
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sep = calibration([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    assert math.isnan(sep["slope"]) and math.isfinite(sep["intercept"])
    with pytest.raises(ValueError):
        calibration([0, 1], [0.2, 1.2])
