"""Discrimination: AUC with its DeLong variance and confidence interval, paired DeLong test.

- :func:`delong_components`, :func:`delong_roc_variance`: the DeLong structural components
  and the AUC's variance;
- :func:`auc_ci`: AUC with a DeLong (Wald) interval;
- :func:`delong_test`: paired test of two models scored on the same cases.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats

from tasks.evaluation.metrics._inputs import _labels, _scores, _z


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
