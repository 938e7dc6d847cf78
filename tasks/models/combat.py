"""ComBat harmonisation of features across scanners (sites), with a reference batch.

ComBat (Johnson, Li & Rabinovic, Biostatistics 2007; Fortin et al., NeuroImage 2018 for
imaging features) models each feature of each site as the reference site's distribution
shifted (``gamma``) and scaled (``delta``), and shrinks the per-feature shifts and scales
of a site towards that site's own mean over features (parametric empirical Bayes). This is
neuroCombat's parametric EB with ``ref_batch`` and no covariates, written as an sklearn
transformer so that it is fitted on training rows only, stored inside the model, and
applied unchanged at scoring time:

- ``fit``: the reference batch (``reference``; default the training site with most
  cases) gives the standardising mean and variance; every other training site gets its
  shrunk ``gamma*``/``delta*``. Labels are never used (no covariates), so nothing of the
  outcome can leak into the harmonisation of another site.
- ``transform``: rows of a site seen in ``fit`` use its stored estimates (the reference
  site is left unchanged); a site never seen is harmonised from its own unlabelled rows in
  the call, against the training reference (its EB estimates use only those rows and the
  stored reference mean and variance). A new site with fewer than ``min_cases`` rows is
  left unchanged (too few to estimate a variance) and reported in ``skipped_``.

A consequence: a new site's rows are adjusted with statistics of the rows scored with
them, so score a new site's cases together (the validate flow scores every current case).
Checked against ``neuroCombat`` 0.2.12 in tests/tasks/models/test_combat.py.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from tasks.models.harmonise import SITE_COLUMN

CONVERGENCE = 1e-4  # neuroCombat's it_sol tolerance (relative change)


def _priors(gamma_hat: np.ndarray, delta_hat: np.ndarray) -> dict[str, float]:
    """One batch's hyperparameters over its features (neuroCombat's aprior/bprior)."""
    m, s2 = float(np.mean(delta_hat)), float(np.var(delta_hat, ddof=1))
    return {
        "gamma_bar": float(np.mean(gamma_hat)),
        "t2": float(np.var(gamma_hat, ddof=1)),
        "a": (2 * s2 + m**2) / s2,
        "b": (m * s2 + m**3) / s2,
    }


def eb_estimates(s: np.ndarray, max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Shrunk (gamma*, delta*) of one batch from its standardised rows ``s`` (n x p).

    A feature with fewer than two finite values in the batch (or none in the reference)
    cannot be estimated: it keeps gamma 0 and delta 1 (left unchanged) and is left out of
    the priors, so one empty feature cannot turn every other feature's estimate into NaN.
    """
    gamma, delta = np.zeros(s.shape[1]), np.ones(s.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled below
        n_all = np.isfinite(s).sum(axis=0)
        usable = (n_all >= 2) & np.isfinite(np.nanmean(s, axis=0))
    if usable.sum() < 2:
        return gamma, delta
    gamma[usable], delta[usable] = _eb(s[:, usable], max_iter)
    return gamma, delta


def _eb(s: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """neuroCombat's parametric EB iteration on features with finite estimates."""
    n = np.isfinite(s).sum(axis=0)
    gamma_hat = np.nanmean(s, axis=0)
    delta_hat = np.nanvar(s, axis=0, ddof=1)
    delta_hat[delta_hat == 0] = 1.0
    p = _priors(gamma_hat, delta_hat)
    g_old, d_old = gamma_hat.copy(), delta_hat.copy()
    for _ in range(max_iter):
        g_new = (p["t2"] * n * gamma_hat + d_old * p["gamma_bar"]) / (p["t2"] * n + d_old)
        sum2 = np.nansum((s - g_new) ** 2, axis=0)
        d_new = (0.5 * sum2 + p["b"]) / (n / 2.0 + p["a"] - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            change = max(
                np.nanmax(np.abs(g_new - g_old) / np.abs(g_old)),
                np.nanmax(np.abs(d_new - d_old) / d_old),
            )
        g_old, d_old = g_new, d_new
        if change <= CONVERGENCE:
            break
    return g_old, d_old


class ComBat(TransformerMixin, BaseEstimator):
    """Reference-batch ComBat on the feature columns of a frame with a site column.

    Parameters
    ----------
    columns_prefixes : tuple of str
        Columns harmonised (every other column passes through unchanged).
    site_column : str
        The column naming each row's site (kept in the output).
    reference : str or None
        The reference site; None: the training site with the most rows.
    min_cases : int
        Rows a site needs to be harmonised (fit and transform).

    Attributes
    ----------
    reference_ : str
    mean_, var_ : ndarray
        The reference site's feature means and variances (ddof 0, as neuroCombat).
    estimates_ : dict
        Site -> (gamma*, delta*) of the training sites (the reference: 0 and 1).
    columns_ : list of str
    skipped_ : dict
        Site -> rows, for sites left unchanged by the last call (too few rows).
    fit_skipped_ : dict
        The same for the training sites in ``fit``.
    """

    def __init__(
        self,
        columns_prefixes: tuple[str, ...] = ("hf:", "df:"),
        site_column: str = SITE_COLUMN,
        reference: str | None = None,
        min_cases: int = 10,
    ):
        self.columns_prefixes = columns_prefixes
        self.site_column = site_column
        self.reference = reference
        self.min_cases = min_cases

    def _columns(self, X: pd.DataFrame) -> list[str]:
        return [c for c in X.columns if c.startswith(self.columns_prefixes)]

    def _sites(self, X: pd.DataFrame) -> pd.Series:
        if self.site_column not in X:
            raise ValueError(f"ComBat needs the site of each row in column {self.site_column!r}")
        return X[self.site_column].astype(str)

    def _standardise(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean_) / np.sqrt(self.var_)

    def fit(self, X: pd.DataFrame, y: Any = None):
        sites = self._sites(X)
        self.columns_ = self._columns(X)
        counts = sites.value_counts()
        self.reference_ = str(self.reference or counts.index[0])
        if self.reference_ not in counts:
            raise ValueError(f"reference site {self.reference_!r} has no training rows")
        ref = X.loc[sites == self.reference_, self.columns_].to_numpy(np.float64)
        self.mean_ = np.nanmean(ref, axis=0)
        var = np.nanmean((ref - self.mean_) ** 2, axis=0)
        self.var_ = np.where(var > 0, var, 1.0)  # a constant feature is left as it is
        self.estimates_ = {
            self.reference_: (np.zeros(len(self.columns_)), np.ones(len(self.columns_)))
        }
        self.skipped_ = {}
        for site, n in counts.items():
            if site == self.reference_:
                continue
            if n < self.min_cases:
                self.skipped_[str(site)] = int(n)
                continue
            rows = X.loc[sites == site, self.columns_].to_numpy(np.float64)
            self.estimates_[str(site)] = eb_estimates(self._standardise(rows))
        self.fit_skipped_ = dict(self.skipped_)  # transform overwrites skipped_
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        sites = self._sites(X)
        out = X.copy()
        self.skipped_ = {}
        for site in sites.unique():
            mask = (sites == site).to_numpy()
            if site == self.reference_:
                continue
            rows = X.loc[mask, self.columns_].to_numpy(np.float64)
            s = self._standardise(rows)
            if site in self.estimates_:
                gamma, delta = self.estimates_[site]
            elif mask.sum() >= self.min_cases:
                gamma, delta = eb_estimates(s)
            else:
                self.skipped_[str(site)] = int(mask.sum())
                continue
            adjusted = (s - gamma) / np.sqrt(delta) * np.sqrt(self.var_) + self.mean_
            out.loc[mask, self.columns_] = adjusted
        return out

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.feature_names_in_, dtype=object)
