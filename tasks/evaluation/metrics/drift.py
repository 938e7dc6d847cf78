"""Drift between training and a later set: population stability index per feature."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

PSI_EPS = 1e-4


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
