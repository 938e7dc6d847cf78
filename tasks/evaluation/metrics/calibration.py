"""Calibration: intercept and slope (logistic recalibration), Brier score, reliability curve."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special

from tasks.evaluation.metrics._inputs import _labels, _probabilities

# Lowest probability fed to the logit: keeps a prediction of exactly 0 or 1 finite.
LOGIT_EPS = 1e-12


def _loglik(eta: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(y * special.log_expit(eta) + (1 - y) * special.log_expit(-eta)))


def _logistic_fit(
    x: np.ndarray, y: np.ndarray, offset: np.ndarray, max_iter: int = 100, tol: float = 1e-10
) -> np.ndarray:
    """Maximum-likelihood logistic regression by Newton-Raphson with step halving.

    Returns NaN coefficients (with a RuntimeWarning) when the fit does not converge,
    which is what happens when the MLE does not exist (separation).
    """
    beta = np.zeros(x.shape[1])
    eta = offset + x @ beta
    ll = _loglik(eta, y)
    for _iteration in range(max_iter):
        mu = special.expit(eta)
        w = mu * (1 - mu)
        grad = x.T @ (y - mu)
        info = x.T @ (x * w[:, None])
        try:
            step = np.linalg.solve(info, grad)
        except np.linalg.LinAlgError:
            break
        for _halving in range(50):
            new_beta = beta + step
            new_eta = offset + x @ new_beta
            new_ll = _loglik(new_eta, y)
            # Tolerance: at the optimum a Newton step changes the likelihood by rounding.
            if new_ll >= ll - 1e-12 * abs(ll):
                break
            step = step / 2
        else:
            break  # no step improves the likelihood: give up rather than report a non-MLE
        beta, eta, ll = new_beta, new_eta, new_ll
        if np.max(np.abs(step)) < tol:
            return beta
    warnings.warn(
        "calibration fit did not converge (separation?); returning NaN",
        RuntimeWarning,
        stacklevel=3,
    )
    return np.full(x.shape[1], np.nan)


def _reliability(y: np.ndarray, prob: np.ndarray, n_bins: int) -> pd.DataFrame:
    # Same binning as sklearn's calibration_curve(strategy="quantile"): edges at the
    # quantiles of prob, a value on an inner edge goes to the lower bin, empty bins
    # (from tied quantiles) are dropped.
    edges = np.percentile(prob, np.linspace(0, 1, n_bins + 1) * 100)
    bin_id = np.searchsorted(edges[1:-1], prob)
    count = np.bincount(bin_id, minlength=n_bins)
    sum_prob = np.bincount(bin_id, weights=prob, minlength=n_bins)
    sum_y = np.bincount(bin_id, weights=y, minlength=n_bins)
    keep = count > 0
    return pd.DataFrame(
        {
            "bin": np.flatnonzero(keep),
            "mean_predicted": sum_prob[keep] / count[keep],
            "observed_fraction": sum_y[keep] / count[keep],
            "count": count[keep],
        }
    )


def calibration(
    y: ArrayLike, prob: ArrayLike, n_bins: int = 10, linear_predictor: ArrayLike | None = None
) -> dict[str, Any]:
    """Calibration intercept and slope, Brier score and reliability curve.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels, 0/1.
    prob : array-like of shape (n,)
        Predicted probabilities in [0, 1]; clipped to ``[1e-12, 1 - 1e-12]`` before
        the logit.
    n_bins : int, default 10
        Number of quantile bins of the reliability curve.
    linear_predictor : array-like of shape (n,), optional
        The model's log-odds. When given, intercept and slope are fitted on it directly:
        a probability that rounds to exactly 0 or 1 would otherwise be clipped, and the
        intercept would then depend on the clipping constant.

    Returns
    -------
    dict
        ``n``; ``intercept``: calibration-in-the-large, the intercept ``a`` of
        ``logit P(y=1) = a + logit(p)`` (logit(p) as an offset); 0 when the mean
        prediction matches the event rate, > 0 when risks are underestimated.
        ``slope``: ``b`` in ``logit P(y=1) = a + b logit(p)``; 1 ideal, < 1 when the
        predictions are too extreme (over-fitting), > 1 when too moderate.
        ``brier``: ``mean((p - y)^2)``. ``reliability``: a DataFrame with columns
        ``bin``, ``mean_predicted``, ``observed_fraction``, ``count``, one row per
        non-empty quantile bin (the binning of scikit-learn's
        ``calibration_curve(strategy="quantile")``); ``.to_dict("list")`` for JSON.
        Intercept and slope are NaN on a single-class set and, with a RuntimeWarning,
        when the logistic fit does not converge (outcome separated by logit(p)).

    Notes
    -----
    Both fits are maximum likelihood by Newton-Raphson (:func:`_logistic_fit`); they agree
    with a binomial GLM (statsmodels) to the convergence tolerance.

    References
    ----------
    .. [1] Cox DR. Two further applications of a model for binary regression.
       Biometrika. 1958;45(3-4):562-565.
    .. [2] Van Calster B, McLernon DJ, van Smeden M, et al. Calibration: the Achilles heel
       of predictive analytics. BMC Med. 2019;17:230.
    .. [3] Steyerberg EW. Clinical Prediction Models. 2nd ed. Springer; 2019, ch. 15.
    .. [4] Brier GW. Verification of forecasts expressed in terms of probability. Mon
       Weather Rev. 1950;78(1):1-3.
    """
    labels = _labels(y)
    p = _probabilities(prob, labels.size)
    if labels.size == 0:
        raise ValueError("calibration needs at least one case")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    yf = labels.astype(float)
    if linear_predictor is not None:
        lp = np.asarray(linear_predictor, dtype=float)
        if lp.shape != p.shape or not np.isfinite(lp).all():
            raise ValueError("linear_predictor must be finite, one value per label")
    else:
        pc = np.clip(p, LOGIT_EPS, 1 - LOGIT_EPS)
        lp = np.log(pc) - np.log1p(-pc)
    if labels.min() == labels.max():
        intercept = slope = math.nan
    else:
        ones = np.ones((labels.size, 1))
        intercept = float(_logistic_fit(ones, yf, lp)[0])
        slope = float(_logistic_fit(np.column_stack([ones, lp]), yf, np.zeros_like(lp))[1])
    return {
        "n": int(labels.size),
        "intercept": intercept,
        "slope": slope,
        "brier": float(np.mean((p - yf) ** 2)),
        "reliability": _reliability(yf, p, n_bins),
    }
