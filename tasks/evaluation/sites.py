"""Evaluation by site within each set: per-site metrics and feature drift against training.

Reads the scored cases (linear predictors by model, label, split, site) and the fitted
models' selected input features; writes nothing. A site's numbers are always those of one
set (a site's training rows never mix with its testing rows), shown only where the site has
enough cases (:data:`~tasks.evaluation.results.SITE_MIN_N`, and
:data:`~tasks.evaluation.results.SITE_MIN_CLASS` of each class); drift is PSI on the
model's selected inputs with a permutation-calibrated critical value.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tasks.evaluation.metrics import classification_metrics, drift_bins, psi_permutation_test
from tasks.evaluation.results import (
    SITE_MIN_CLASS,
    SITE_MIN_N,
    FeaturePsi,
    SiteDrift,
    SiteMetrics,
)
from tasks.models.features import FeatureData
from tasks.models.pipelines import FittedModel

DRIFT_SETS = ("validation", "testing")  # compared against training
DRIFT_MIN_N = 10  # cases a site needs before its drift is tested at all
DRIFT_ALPHA = 0.05


def site_metrics(y: np.ndarray, score: np.ndarray, cutoff: float) -> SiteMetrics:
    """AUC and confusion counts of one site, or "too few" below the minimum."""
    n, n_pos = int(y.size), int(y.sum())
    n_neg = n - n_pos
    m = classification_metrics(y, score, cutoff)
    enough = n >= SITE_MIN_N and min(n_pos, n_neg) >= SITE_MIN_CLASS
    note = (
        ""
        if enough
        else f"too few: n={n} ({n_pos} positive, {n_neg} negative); needs n >= {SITE_MIN_N} "
        f"with >= {SITE_MIN_CLASS} of each class"
    )
    auc, ci = (m["auc"], tuple(m["auc_ci"])) if enough else (math.nan, (math.nan, math.nan))
    return SiteMetrics(n, n_pos, n_neg, m["tp"], m["fp"], m["tn"], m["fn"], auc, ci, enough, note)


def per_site(
    sets: dict[str, pd.DataFrame], models: dict[str, FittedModel]
) -> dict[str, dict[str, dict[str, SiteMetrics]]]:
    """``{set: {site: {model: SiteMetrics}}}`` from the scored rows of each set
    (``lp_<model>`` columns, on the scale of the model's ``cutoff``)."""
    out: dict[str, dict[str, dict[str, SiteMetrics]]] = {}
    for name, rows in sets.items():
        out[name] = {}
        for site, at in rows.groupby("site"):
            y = at["label"].astype(int).to_numpy()
            out[name][str(site)] = {
                model: site_metrics(y, at[f"lp_{model}"].to_numpy(), m.cutoff)
                for model, m in models.items()
            }
    return out


def selected_inputs(model: FittedModel, X: pd.DataFrame) -> pd.DataFrame:
    """The model's selected input features (what its logistic regression reads)."""
    return model.pipeline[:-1].transform(X)


def site_drift(
    model: FittedModel,
    data: FeatureData,
    n_resamples: int = 500,
    alpha: float = DRIFT_ALPHA,
    seed: int = 0,
    top: int = 5,
) -> dict[str, dict[str, SiteDrift]]:
    """``{set: {site: SiteDrift}}``: each validation and testing site against training, on
    the model's selected inputs, bins from training quantiles, critical value from a
    permutation null (:func:`~tasks.evaluation.metrics.psi_permutation_test`)."""
    X = selected_inputs(model, data.reader1)
    cases = data.cases
    reference = X[(cases["split"] == "training").to_numpy()]
    out: dict[str, dict[str, SiteDrift]] = {}
    for split in DRIFT_SETS:
        rows = cases[cases["split"] == split]
        for site, at in rows.groupby("site"):
            other = X.loc[at.index]
            if len(other) < DRIFT_MIN_N or reference.empty:
                out.setdefault(split, {})[str(site)] = SiteDrift(
                    int(len(other)),
                    math.nan,
                    math.nan,
                    0,
                    math.nan,
                    (),
                    model.name,
                    X.shape[1],
                    f"too few cases (< {DRIFT_MIN_N}) to test drift",
                )
                continue
            table, critical = psi_permutation_test(
                reference, other, drift_bins(len(other)), n_resamples, alpha, seed
            )
            table = table.sort_values("psi", ascending=False)
            out.setdefault(split, {})[str(site)] = SiteDrift(
                n=int(len(other)),
                psi_max=float(table["psi"].max()),
                psi_mean=float(table["psi"].mean()),
                features_flagged=int(table["flagged"].sum()),
                critical=critical,
                top=tuple(
                    FeaturePsi(str(f), float(r.psi), float(r.p), bool(r.flagged))
                    for f, r in table.head(top).iterrows()
                ),
                model=model.name,
                features=int(X.shape[1]),
                note=f"{drift_bins(len(other))} training-quantile bins, {n_resamples} "
                f"permutations, family-wise alpha {alpha}",
            )
    return out
