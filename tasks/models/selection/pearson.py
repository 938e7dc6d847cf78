"""Redundancy stage of feature selection: of each highly correlated pair, keep the better.

:class:`PearsonFilter` drops the weaker feature (lower univariate training AUC) of every
pair whose absolute Pearson correlation exceeds a threshold.

Reads a feature matrix and the binary outcome; writes nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from tasks.models.selection._base import _binary_target, _check_fraction, _feature_names

__all__ = ["PearsonFilter"]


def _univariate_auc(X: np.ndarray, y01: np.ndarray) -> np.ndarray:
    """Direction-free AUC, max(AUC, 1 - AUC), of every column (Mann-Whitney, mid-ranks)."""
    ranks = rankdata(X, axis=0)
    pos = y01 == 1
    n1 = int(pos.sum())
    n0 = y01.size - n1
    auc = (ranks[pos].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.maximum(auc, 1.0 - auc)


class PearsonFilter(SelectorMixin, BaseEstimator):
    """Drop the weaker feature of every highly correlated pair.

    Features are visited in order of decreasing univariate training AUC (direction-free,
    ``max(AUC, 1 - AUC)``; ties keep column order); a feature is kept when its absolute
    Pearson correlation with every feature kept before it is ``<= threshold``. So of two
    features with ``|r| > threshold`` the one that discriminates better survives, and a
    feature is only dropped for a feature that is itself kept.

    Parameters
    ----------
    threshold : float, default=0.9
        Largest absolute Pearson correlation tolerated between two kept features.

    Attributes
    ----------
    auc_ : pandas.Series of shape (n_features_in_,)
        Direction-free univariate AUC of each feature on the training data.
    support_ : ndarray of shape (n_features_in_,), dtype bool
        Which features are kept.
    dropped_ : dict of str to str
        Each dropped feature -> the kept feature it correlates with most strongly.
    n_features_in_ : int
        Number of features seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of ``X`` in :meth:`fit`, when it is a DataFrame with string columns.

    Notes
    -----
    Constant features have no correlation with anything (treated as ``r = 0``) and AUC
    0.5; they are kept here and left to the LASSO. The greedy pass costs one matrix-vector
    product per feature against the kept ones, so it needs no ``p x p`` correlation matrix
    in memory. ``y`` must be binary (the outcome is N0 vs N>=1); as
    :func:`~sklearn.utils.estimator_checks.check_estimator` feeds 3-class targets, the
    test suite runs it on a subclass that binarises ``y``.
    """

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold

    def fit(self, X, y):
        """Rank features by AUC and drop those redundant with a better one.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training features.
        y : array-like of shape (n_samples,)
            Binary outcome.

        Returns
        -------
        self : PearsonFilter
            Fitted.
        """
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        _check_fraction("threshold", self.threshold)
        y01 = _binary_target(y)
        names = _feature_names(self)
        auc = _univariate_auc(X, y01)

        sd = X.std(axis=0)
        z = np.divide(X - X.mean(axis=0), sd, out=np.zeros_like(X), where=sd > 0)
        n, p = X.shape
        kept_z = np.empty((n, p))
        kept: list[int] = []
        dropped: dict[str, str] = {}
        for j in np.argsort(-auc, kind="stable"):
            if kept:
                r = np.abs(kept_z[:, : len(kept)].T @ z[:, j]) / n
                i = int(np.argmax(r))
                if min(r[i], 1.0) > self.threshold:
                    dropped[str(names[j])] = str(names[kept[i]])
                    continue
            kept_z[:, len(kept)] = z[:, j]
            kept.append(int(j))

        self.support_ = np.zeros(p, dtype=bool)
        self.support_[kept] = True
        self.auc_ = pd.Series(auc, index=pd.Index(names, name="feature"), name="auc")
        self.dropped_ = dropped
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
