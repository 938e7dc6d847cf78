"""Classification at a threshold: Wilson intervals, Youden threshold, confusion ratios.

- :func:`youden_threshold`: the threshold learned on the training set;
- :func:`wilson_ci`: interval of a proportion;
- :func:`classification_metrics`: confusion counts, accuracy, sensitivity, specificity,
  PPV, NPV (each with a Wilson interval) and the AUC at a fixed threshold;
- :func:`model_set_metrics`: all of it plus the Brier score, one model on one set.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from tasks.evaluation.metrics._inputs import _labels, _probabilities, _scores, _z
from tasks.evaluation.metrics.roc import auc_ci


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


def model_set_metrics(
    y: ArrayLike,
    prob: ArrayLike,
    threshold: float,
    alpha: float = 0.05,
    linear_predictor: ArrayLike | None = None,
) -> dict[str, Any]:
    """All metrics of one model on one set: the fields, in order, of the report's
    :class:`~tasks.evaluation.results.ModelSetMetrics` (the evaluation step builds it).

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
    linear_predictor : array-like of shape (n,), optional
        The model's log-odds. When given, the AUC and the classification use it, with
        ``threshold`` on its scale (reported as the probability ``expit(threshold)``):
        probabilities that round to 1.0 would tie cases the model ranks apart.

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
    if linear_predictor is None:
        out = classification_metrics(labels, p, threshold, alpha)
    else:
        out = classification_metrics(labels, linear_predictor, threshold, alpha)
        out["threshold"] = float(special.expit(threshold))
    out["brier"] = float(np.mean((p - labels) ** 2)) if labels.size else math.nan
    return out
