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


def drift_bins(n_other: int, most: int = 10) -> int:
    """Quantile bins for a set of ``n_other`` cases: about ten of its cases per bin (3 to
    ``most``), so that a small site's bins are not mostly empty by chance."""
    return int(min(most, max(3, n_other // 10)))


def psi_permutation_test(
    train_df: pd.DataFrame,
    other_df: pd.DataFrame,
    bins: int = 10,
    n_resamples: int = 500,
    alpha: float = 0.05,
    random_state: int = 0,
    eps: float = PSI_EPS,
) -> tuple[pd.DataFrame, float]:
    """PSI of every column with a critical value calibrated against sampling noise.

    PSI grows as the compared set shrinks even without any shift (with 276 training rows
    and 10 bins, 21% of unshifted features exceed the usual 0.25 at n = 69), so a fixed
    cut-off reads noise as drift. Here the null distribution is built by permutation: the
    training and the other rows are pooled, a random ``len(other_df)`` of them play the
    other set and the rest training (bins from that pseudo-training set's quantiles, as
    for the observed statistic), ``n_resamples`` times. A feature is flagged when its PSI
    exceeds the ``1 - alpha`` quantile of the largest PSI over all features in each draw
    (the max-T procedure of Westfall & Young), so that on unshifted data no feature is
    flagged in ``1 - alpha`` of sites, whatever the number of features or the site's n.

    Returns
    -------
    table : DataFrame
        Indexed by column: ``psi``, ``p`` (the feature's own permutation p-value,
        ``(1 + #{null >= observed}) / (n_resamples + 1)``) and ``flagged``.
    critical : float
        The family-wise critical PSI.

    References
    ----------
    .. [1] Yurdakul B. Statistical properties of population stability index. PhD thesis,
       Western Michigan University; 2018 (PSI's sampling distribution depends on n).
    .. [2] Westfall PH, Young SS. Resampling-Based Multiple Testing. Wiley; 1993.
    .. [3] Good P. Permutation, Parametric and Bootstrap Tests of Hypotheses. Springer; 2005.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    columns = list(train_df.columns)
    e = train_df[columns].to_numpy(dtype=float, na_value=np.nan)
    a = other_df[columns].to_numpy(dtype=float, na_value=np.nan)
    observed = _psi_matrix(e, a, bins, eps)
    pooled = np.vstack([e, a])
    rng = np.random.default_rng(random_state)
    null = np.empty((n_resamples, len(columns)))
    for b in range(n_resamples):
        order = rng.permutation(pooled.shape[0])
        null[b] = _psi_matrix(pooled[order[a.shape[0] :]], pooled[order[: a.shape[0]]], bins, eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features
        critical = float(np.nanquantile(np.nanmax(null, axis=1), 1 - alpha))
    p = (1 + (null >= observed[None, :]).sum(axis=0)) / (n_resamples + 1)
    table = pd.DataFrame(
        {"psi": observed, "p": p, "flagged": observed > critical}, index=train_df.columns
    )
    return table, critical
