"""Validation metrics step: discrimination, classification, calibration, clinical use, drift.

Pure functions on arrays; they read and write nothing. The validate flow calls them once
per model (``ONLY_HF``, ``ONLY_DF``, ``COMB``) and per split (training, external
validation, test) and publishes the dicts they return:

- discrimination: AUC with its DeLong variance and confidence interval
  (:func:`delong_roc_variance`, :func:`auc_ci`) and the paired DeLong test between two
  models scored on the same cases (:func:`delong_test`);
- classification at a threshold learned on the training set (:func:`youden_threshold`):
  confusion counts, accuracy, sensitivity, specificity, PPV, NPV, each with a Wilson
  interval (:func:`wilson_ci`, :func:`classification_metrics`, :func:`model_set_metrics`);
- calibration: intercept, slope, Brier score, reliability curve (:func:`calibration`);
- clinical utility: net benefit over a threshold grid (:func:`decision_curve`);
- drift between training and a later set: population stability index (:func:`psi`,
  :func:`psi_table`).

Conventions used throughout: labels are 0/1 (1 = sentinel lymph node metastasis), a
higher score means more likely positive, and a case is called positive when
``score >= threshold``. Bad input (labels other than 0/1, lengths that differ, scores that
are not finite) raises ``ValueError``; a quantity that the data leave undefined (a ratio
with an empty denominator, an AUC on a set with a single class) comes back as NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special, stats

DEFAULT_DC_THRESHOLDS = np.arange(0.01, 0.99, 0.01)
# Lowest probability fed to the logit: keeps a prediction of exactly 0 or 1 finite.
LOGIT_EPS = 1e-12
PSI_EPS = 1e-4


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------
def _labels(y: ArrayLike) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int8)
    try:
        values = arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError("labels must be 0/1") from exc
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1 (1 = positive), without missing values")
    return values.astype(np.int8)


def _scores(score: ArrayLike, n: int, name: str = "score") -> np.ndarray:
    arr = np.asarray(score, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values for {n} labels")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return arr


def _probabilities(prob: ArrayLike, n: int) -> np.ndarray:
    arr = _scores(prob, n, "prob")
    if ((arr < 0) | (arr > 1)).any():
        raise ValueError("prob must lie in [0, 1]")
    return arr


def _z(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(stats.norm.isf(alpha / 2))


# ---------------------------------------------------------------------------------------
# Discrimination: AUC, DeLong variance, DeLong test
# ---------------------------------------------------------------------------------------
def _delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance for stacked scores ``(k, n)`` of the same cases.

    Fast midrank algorithm of Sun & Xu (2014): with ``Tz`` the midranks of a case among
    all cases, ``Tx`` among the positives and ``Ty`` among the negatives, the structural
    components are ``V10 = (Tz - Tx) / n_neg`` (positives) and
    ``V01 = 1 - (Tz - Ty) / n_pos`` (negatives), in O(n log n) instead of O(n_pos n_neg).
    """
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    k = scores.shape[0]
    if m == 0 or n == 0:
        return np.full(k, np.nan), np.full((k, k), np.nan)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (tz[:, :m] - stats.rankdata(pos, axis=1)) / n
    v01 = 1.0 - (tz[:, m:] - stats.rankdata(neg, axis=1)) / m
    aucs = v10.mean(axis=1)
    if m < 2 or n < 2:
        # The sample covariance of a single structural component is undefined.
        return aucs, np.full((k, k), np.nan)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_components(y: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """DeLong structural components (placement values) of one score.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels, 0/1.
    score : array-like of shape (n,)
        Scores; higher means more likely positive.

    Returns
    -------
    v10 : ndarray of shape (n_pos,)
        For each positive (in input order), the share of negatives it outscores, ties
        counting one half: ``V10(x_i) = mean_j psi(x_i, y_j)``.
    v01 : ndarray of shape (n_neg,)
        For each negative, the share of positives that outscore it:
        ``V01(y_j) = mean_i psi(x_i, y_j)``. Both average to the AUC.

    Raises
    ------
    ValueError
        If a class is missing (there are no components then).

    References
    ----------
    .. [1] DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or more
       correlated receiver operating characteristic curves: a nonparametric approach.
       Biometrics. 1988;44(3):837-845.
    .. [2] Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas
       under correlated receiver operating characteristic curves. IEEE Signal Process
       Lett. 2014;21(11):1389-1393.
    """
    labels = _labels(y)
    s = _scores(score, labels.size)
    pos, neg = s[labels == 1], s[labels == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("both classes are needed for DeLong components")
    tz = stats.rankdata(np.concatenate([pos, neg]))
    v10 = (tz[: pos.size] - stats.rankdata(pos)) / neg.size
    v01 = 1.0 - (tz[pos.size :] - stats.rankdata(neg)) / pos.size
    return v10, v01


def delong_roc_variance(y: ArrayLike, score: ArrayLike) -> tuple[float, float]:
    """AUC and its DeLong variance.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels, 0/1.
    score : array-like of shape (n,)
        Scores; higher means more likely positive. Ties count one half.

    Returns
    -------
    auc : float
        Area under the ROC curve (the Mann-Whitney statistic), equal to
        :func:`sklearn.metrics.roc_auc_score`. NaN when a class is missing.
    var : float
        DeLong variance ``S10 / n_pos + S01 / n_neg`` (sample variances, ``ddof=1``, of
        the structural components), as in pROC's ``var(roc)``. NaN when a class has
        fewer than two cases; 0 when the classes are perfectly separated.

    References
    ----------
    .. [1] DeLong ER, DeLong DM, Clarke-Pearson DL. Biometrics. 1988;44(3):837-845.
    .. [2] Sun X, Xu W. IEEE Signal Process Lett. 2014;21(11):1389-1393.
    """
    labels = _labels(y)
    s = _scores(score, labels.size)
    aucs, cov = _delong(labels, s[None, :])
    return float(aucs[0]), float(cov[0, 0])


def auc_ci(
    y: ArrayLike, score: ArrayLike, alpha: float = 0.05, transform: str = "none"
) -> tuple[float, float, float]:
    """AUC with a DeLong (Wald) confidence interval.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels, 0/1.
    score : array-like of shape (n,)
        Scores; higher means more likely positive.
    alpha : float, default 0.05
        Two-sided level: a ``1 - alpha`` interval.
    transform : {"none", "logit"}, default "none"
        ``"none"`` (the default): ``auc -/+ z * sqrt(var)`` on the AUC scale, clipped to
        [0, 1]; this is pROC's ``ci.auc(method="delong")``, the interval most papers
        report, so our numbers compare with theirs. ``"logit"``: the same interval built
        on ``logit(auc)`` with the delta-method standard error
        ``sqrt(var) / (auc (1 - auc))`` and mapped back; it stays inside (0, 1) and is
        asymmetric, which behaves better for small sets with an AUC near 1 (Pepe 2003,
        sec. 5.2.2). With AUC exactly 0 or 1 the logit is undefined and the interval
        collapses to the point, as the Wald interval does (its variance is 0 there).

    Returns
    -------
    auc, lo, hi : float
        NaN where :func:`delong_roc_variance` gives NaN.

    References
    ----------
    .. [1] DeLong ER, DeLong DM, Clarke-Pearson DL. Biometrics. 1988;44(3):837-845.
    .. [2] Robin X, et al. pROC: an open-source package for R and S+ to analyze and
       compare ROC curves. BMC Bioinformatics. 2011;12:77.
    .. [3] Pepe MS. The Statistical Evaluation of Medical Tests for Classification and
       Prediction. Oxford University Press; 2003.
    """
    if transform not in ("none", "logit"):
        raise ValueError(f"transform must be 'none' or 'logit', got {transform!r}")
    z = _z(alpha)
    auc, var = delong_roc_variance(y, score)
    if not (math.isfinite(auc) and math.isfinite(var)):
        return auc, math.nan, math.nan
    se = math.sqrt(var)
    if transform == "logit" and 0.0 < auc < 1.0:
        centre = math.log(auc / (1 - auc))
        half = z * se / (auc * (1 - auc))
        return auc, float(special.expit(centre - half)), float(special.expit(centre + half))
    return auc, max(0.0, auc - z * se), min(1.0, auc + z * se)


def delong_test(
    y: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, alpha: float = 0.05
) -> dict[str, Any]:
    """Paired two-sided DeLong test of two AUCs measured on the same cases.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels, 0/1.
    score_a, score_b : array-like of shape (n,)
        Scores of two models on the same cases, in the same order.
    alpha : float, default 0.05
        Level of the interval on the difference.

    Returns
    -------
    dict
        ``auc_a``, ``auc_b``; ``diff`` = ``auc_a - auc_b``;
        ``z`` = ``diff / sqrt(var_a + var_b - 2 cov_ab)`` from the DeLong covariance
        matrix; ``p``, the two-sided normal p-value; ``diff_ci``, ``[lo, hi]`` Wald
        interval on the difference (pROC's ``roc.test`` ``conf.int``). When the
        difference and its variance are both 0 (for instance identical scores), ``z`` is
        0 and ``p`` is 1, as in pROC; a non-zero difference with zero variance gives
        ``z = +/-inf`` and ``p = 0``. ``z``, ``p`` and ``diff_ci`` are NaN when a class
        has fewer than two cases (the AUCs too when a class is missing).

    References
    ----------
    .. [1] DeLong ER, DeLong DM, Clarke-Pearson DL. Biometrics. 1988;44(3):837-845.
    .. [2] Sun X, Xu W. IEEE Signal Process Lett. 2014;21(11):1389-1393.
    """
    labels = _labels(y)
    a = _scores(score_a, labels.size, "score_a")
    b = _scores(score_b, labels.size, "score_b")
    zcrit = _z(alpha)
    aucs, cov = _delong(labels, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if not (math.isfinite(diff) and math.isfinite(var)):
        z = p = math.nan
        lo = hi = math.nan
    else:
        var = max(var, 0.0)  # rounding can leave -1e-18 for identical scores
        if var == 0.0:
            z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        else:
            z = diff / math.sqrt(var)
        p = float(2 * stats.norm.sf(abs(z)))
        half = zcrit * math.sqrt(var)
        lo, hi = diff - half, diff + half
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "z": float(z),
        "p": float(p),
        "diff_ci": [float(lo), float(hi)],
    }


# ---------------------------------------------------------------------------------------
# Proportions and thresholds
# ---------------------------------------------------------------------------------------
def wilson_ci(successes: ArrayLike, n: ArrayLike, alpha: float = 0.05) -> tuple[Any, Any]:
    """Wilson score interval for a binomial proportion.

    Parameters
    ----------
    successes : int or array-like of int
        Number of successes, ``0 <= successes <= n``.
    n : int or array-like of int
        Number of trials (broadcast against ``successes``).
    alpha : float, default 0.05
        Two-sided level: a ``1 - alpha`` interval.

    Returns
    -------
    lo, hi : float or ndarray
        Bounds, clipped to [0, 1]; floats for scalar input. ``(nan, nan)`` where
        ``n == 0``. Unlike the Wald interval it is never degenerate at 0/n or n/n and
        keeps close to nominal coverage for the small counts of a validation set.

    References
    ----------
    .. [1] Wilson EB. Probable inference, the law of succession, and statistical
       inference. J Am Stat Assoc. 1927;22(158):209-212.
    .. [2] Brown LD, Cai TT, DasGupta A. Interval estimation for a binomial proportion.
       Stat Sci. 2001;16(2):101-133.
    """
    z = _z(alpha)
    x = np.asarray(successes, dtype=float)
    trials = np.asarray(n, dtype=float)
    if (trials < 0).any() or (x < 0).any() or (x > trials).any():
        raise ValueError("need 0 <= successes <= n")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = x / trials
        denom = 1 + z**2 / trials
        centre = (p + z**2 / (2 * trials)) / denom
        half = z * np.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    empty = trials == 0
    lo = np.where(empty, np.nan, np.clip(centre - half, 0.0, 1.0))
    hi = np.where(empty, np.nan, np.clip(centre + half, 0.0, 1.0))
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def youden_threshold(y: ArrayLike, score: ArrayLike) -> float:
    """Score threshold maximising Youden's J = sensitivity + specificity - 1.

    Learn it on the training set only and apply it unchanged to the other sets.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels, 0/1; both classes must be present.
    score : array-like of shape (n,)
        Scores; a case is called positive when ``score >= threshold``.

    Returns
    -------
    float
        One of the observed scores (as in :func:`sklearn.metrics.roc_curve`): every
        threshold between the next lower observed score (exclusive) and this value gives
        the same classification of these cases. Ties in J are compared exactly (on the
        integers ``tp * n_neg - fp * n_pos``) and broken towards the **lowest** threshold,
        i.e. the highest sensitivity, because missing a metastasis (a false negative)
        costs more than an unneeded axillary procedure.

    Raises
    ------
    ValueError
        If a class is missing: J is undefined and no threshold can be learned.

    References
    ----------
    .. [1] Youden WJ. Index for rating diagnostic tests. Cancer. 1950;3(1):32-35.
    .. [2] Fluss R, Faraggi D, Reiser B. Estimation of the Youden index and its
       associated cutoff point. Biom J. 2005;47(4):458-472.
    """
    labels = _labels(y)
    s = _scores(score, labels.size)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("both classes are needed to learn a Youden threshold")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], labels[order].astype(np.int64)
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    # Last position of each run of equal scores: "positive if score >= s" there.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    j_scaled = tp[last] * n_neg - fp[last] * n_pos
    best = np.flatnonzero(j_scaled == j_scaled.max())
    # Candidates are in decreasing score order: the last maximiser is the lowest.
    return float(s_sorted[last][best[-1]])


def _ratio(num: int, den: int, alpha: float) -> tuple[float, list[float]]:
    if den == 0:
        return math.nan, [math.nan, math.nan]
    lo, hi = wilson_ci(num, den, alpha)
    return num / den, [lo, hi]


def classification_metrics(
    y: ArrayLike, score: ArrayLike, threshold: float, alpha: float = 0.05
) -> dict[str, Any]:
    """Confusion counts and diagnostic ratios at a fixed threshold, with the AUC.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels, 0/1. An empty set or a single class is allowed (see Returns).
    score : array-like of shape (n,)
        Scores or probabilities; a case is called positive when ``score >= threshold``.
    threshold : float
        Usually :func:`youden_threshold` of the training set.
    alpha : float, default 0.05
        Level of every interval.

    Returns
    -------
    dict
        Plain Python numbers and lists (JSON-serialisable; NaN allowed):
        ``n``, ``n_pos``, ``n_neg``, ``tp``, ``fp``, ``tn``, ``fn``, ``threshold``;
        ``accuracy`` = (tp + tn) / n, ``sensitivity`` = tp / (tp + fn),
        ``specificity`` = tn / (tn + fp), ``ppv`` = tp / (tp + fp),
        ``npv`` = tn / (tn + fn), each with ``<name>_ci`` = ``[lo, hi]``, the Wilson
        interval; ``auc`` and ``auc_ci`` (DeLong, :func:`auc_ci`).
        A ratio whose denominator is 0 (e.g. PPV when nothing is called positive) is NaN
        with interval ``[nan, nan]``; no exception is raised. On a set with a single
        class the AUC is NaN (with ``[nan, nan]``): it is the probability that a positive
        outscores a negative, which needs one of each, and the undefined sensitivity or
        specificity is NaN for the same reason. With exactly one case in a class the AUC
        is defined but its DeLong variance is not, so ``auc_ci`` is ``[nan, nan]``.

    References
    ----------
    .. [1] Altman DG, Bland JM. Diagnostic tests 1: sensitivity and specificity. BMJ.
       1994;308:1552. Diagnostic tests 2: predictive values. BMJ. 1994;309:102.
    .. [2] Wilson EB. J Am Stat Assoc. 1927;22(158):209-212.
    .. [3] DeLong ER, DeLong DM, Clarke-Pearson DL. Biometrics. 1988;44(3):837-845.
    """
    labels = _labels(y)
    s = _scores(score, labels.size)
    threshold = float(threshold)
    pred = s >= threshold
    pos = labels == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    n = labels.size
    out: dict[str, Any] = {
        "n": int(n),
        "n_pos": tp + fn,
        "n_neg": tn + fp,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "threshold": threshold,
    }
    for name, num, den in (
        ("accuracy", tp + tn, n),
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
    ):
        out[name], out[f"{name}_ci"] = _ratio(num, den, alpha)
    if tp + fn == 0 or tn + fp == 0:
        out["auc"], out["auc_ci"] = math.nan, [math.nan, math.nan]
    else:
        auc, lo, hi = auc_ci(labels, s, alpha)
        out["auc"], out["auc_ci"] = auc, [lo, hi]
    return out


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------
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


def calibration(y: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------
# Clinical utility
# ---------------------------------------------------------------------------------------
def decision_curve(
    y: ArrayLike, prob: ArrayLike, thresholds: ArrayLike | None = None
) -> pd.DataFrame:
    """Net benefit of the model, of treating all and of treating none.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels, 0/1.
    prob : array-like of shape (n,)
        Predicted probabilities in [0, 1]; a case is treated when ``prob >= pt``.
    thresholds : array-like, optional
        Threshold probabilities ``pt``, each in (0, 1); default
        ``np.arange(0.01, 0.99, 0.01)``.

    Returns
    -------
    DataFrame
        Columns ``threshold``, ``net_benefit_model`` = ``TP/n - FP/n * pt / (1 - pt)``,
        ``net_benefit_all`` = ``prevalence - (1 - prevalence) * pt / (1 - pt)``,
        ``net_benefit_none`` = 0; one row per threshold, in the order given.

    References
    ----------
    .. [1] Vickers AJ, Elkin EB. Decision curve analysis: a novel method for evaluating
       prediction models. Med Decis Making. 2006;26(6):565-574.
    .. [2] Vickers AJ, van Calster B, Steyerberg EW. A simple, step-by-step guide to
       interpreting decision curve analysis. Diagn Progn Res. 2019;3:18.
    """
    labels = _labels(y)
    p = _probabilities(prob, labels.size)
    if labels.size == 0:
        raise ValueError("decision_curve needs at least one case")
    pt = DEFAULT_DC_THRESHOLDS if thresholds is None else thresholds
    pt = np.atleast_1d(np.asarray(pt, dtype=float))
    if pt.ndim != 1 or not ((pt > 0) & (pt < 1)).all():
        raise ValueError("thresholds must be a 1-D array of values in (0, 1)")
    n = labels.size
    pos = np.sort(p[labels == 1])
    neg = np.sort(p[labels == 0])
    # Number of cases with prob >= pt, for every pt at once.
    tp = pos.size - np.searchsorted(pos, pt, side="left")
    fp = neg.size - np.searchsorted(neg, pt, side="left")
    odds = pt / (1 - pt)
    prevalence = pos.size / n
    return pd.DataFrame(
        {
            "threshold": pt,
            "net_benefit_model": tp / n - fp / n * odds,
            "net_benefit_all": prevalence - (1 - prevalence) * odds,
            "net_benefit_none": np.zeros_like(pt),
        }
    )


# ---------------------------------------------------------------------------------------
# Drift
# ---------------------------------------------------------------------------------------
def _psi_matrix(expected: np.ndarray, actual: np.ndarray, bins: int, eps: float) -> np.ndarray:
    """PSI of every column of ``actual`` (m, k) against ``expected`` (n, k); NaNs ignored."""
    if bins < 2:
        raise ValueError("bins must be >= 2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> NaN edges
        inner = np.nanquantile(expected, np.linspace(0, 1, bins + 1)[1:-1], axis=0)

    def shares(x: np.ndarray) -> np.ndarray:
        # Cases with x <= each inner edge (NaN compares False), then per-bin counts:
        # bin i holds edge_{i-1} < x <= edge_i, the outer bins are open-ended.
        below = (x[:, None, :] <= inner[None, :, :]).sum(axis=0)
        total = (~np.isnan(x)).sum(axis=0)
        cum = np.vstack([np.zeros_like(total), below, total])
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.diff(cum, axis=0) / total

    e, a = shares(expected), shares(actual)
    e, a = np.where(e == 0, eps, e), np.where(a == 0, eps, a)
    return np.sum((a - e) * np.log(a / e), axis=0)


def psi(expected: ArrayLike, actual: ArrayLike, bins: int = 10, eps: float = PSI_EPS) -> float:
    """Population stability index of one feature.

    Parameters
    ----------
    expected : array-like of shape (n,)
        Reference values (the training set). Bin edges are its quantiles
        (``np.nanquantile``, linear), so each bin holds about ``1/bins`` of it; the outer
        bins are open-ended, so values of ``actual`` outside the training range count.
    actual : array-like of shape (m,)
        Values to compare (external validation, test, or a new batch).
    bins : int, default 10
        Number of quantile bins.
    eps : float, default 1e-4
        Share given to an empty bin, so that its log term stays finite (shares are not
        renormalised; a bin empty in both contributes 0).

    Returns
    -------
    float
        ``sum_i (a_i - e_i) ln(a_i / e_i)`` over bins, with ``e_i``, ``a_i`` the shares of
        non-missing values; NaN if either side has no value. Usual reading:
        < 0.1 stable, 0.1-0.25 moderate shift (investigate), > 0.25 major shift.

    References
    ----------
    .. [1] Siddiqi N. Credit Risk Scorecards: Developing and Implementing Intelligent
       Credit Scoring. Wiley; 2006.
    .. [2] Yurdakul B. Statistical properties of population stability index. PhD thesis,
       Western Michigan University; 2018.
    """
    e = np.asarray(expected, dtype=float).reshape(-1, 1)
    a = np.asarray(actual, dtype=float).reshape(-1, 1)
    return float(_psi_matrix(e, a, bins, eps)[0])


def psi_table(
    train_df: pd.DataFrame, other_df: pd.DataFrame, bins: int = 10, eps: float = PSI_EPS
) -> pd.Series:
    """Population stability index of every column of ``train_df``, vectorised.

    Parameters
    ----------
    train_df : DataFrame
        Reference (training) feature table; numeric columns.
    other_df : DataFrame
        Table to compare; must contain every column of ``train_df``.
    bins, eps
        As in :func:`psi`.

    Returns
    -------
    Series
        PSI per column, indexed like ``train_df.columns``, named ``"psi"``; identical to
        :func:`psi` column by column. Reading: < 0.1 stable, 0.1-0.25 moderate,
        > 0.25 shift.

    References
    ----------
    .. [1] Siddiqi N. Credit Risk Scorecards. Wiley; 2006.
    """
    columns = list(train_df.columns)
    missing = [c for c in columns if c not in other_df.columns]
    if missing:
        raise ValueError(f"other_df lacks columns {missing}")
    e = train_df[columns].to_numpy(dtype=float, na_value=np.nan)
    a = other_df[columns].to_numpy(dtype=float, na_value=np.nan)
    return pd.Series(_psi_matrix(e, a, bins, eps), index=train_df.columns, name="psi")


# ---------------------------------------------------------------------------------------
# Report shape
# ---------------------------------------------------------------------------------------
def model_set_metrics(
    y: ArrayLike, prob: ArrayLike, threshold: float, alpha: float = 0.05
) -> dict[str, Any]:
    """All metrics of one model on one set, in the report's JSON shape.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels, 0/1.
    prob : array-like of shape (n,)
        Predicted probabilities in [0, 1].
    threshold : float
        Decision threshold learned on the training set (:func:`youden_threshold`).
    alpha : float, default 0.05
        Level of every interval.

    Returns
    -------
    dict
        Everything of :func:`classification_metrics` (``n``, counts, ``auc``,
        ``auc_ci``, ``accuracy``, ``sensitivity``, ``specificity``, ``ppv``, ``npv`` and
        their ``*_ci``) plus ``brier``; plain Python ints, floats and lists, so that
        ``json.dumps`` takes it as is (NaN where undefined).

    References
    ----------
    .. [1] Collins GS, Reitsma JB, Altman DG, Moons KGM. Transparent reporting of a
       multivariable prediction model for individual prognosis or diagnosis (TRIPOD).
       BMJ. 2015;350:g7594.
    """
    labels = _labels(y)
    p = _probabilities(prob, labels.size)
    out = classification_metrics(labels, p, threshold, alpha)
    out["brier"] = float(np.mean((p - labels) ** 2)) if labels.size else math.nan
    return out
