"""Clinical utility: net benefit of the model, of treating all and of treating none."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from tasks.evaluation.metrics._inputs import _labels, _probabilities

DEFAULT_DC_THRESHOLDS = np.arange(0.01, 0.99, 0.01)


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
