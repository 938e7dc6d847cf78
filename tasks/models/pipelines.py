"""Modeling step: the three models of the paper, fitted on training rows only.

Reads a :class:`tasks.models.features.FeatureData` (reader 1's matrix with handcrafted
``hf:`` and deep ``df:`` columns, labels, splits and the ICC repeat sets) and returns one
:class:`FittedModel` per model; writes nothing (:mod:`tasks.models.registry` logs them).
The three models are sklearn Pipelines over the feature families::

    ONLY_HF  features(hf)      -> LASSO -> logistic regression
    ONLY_DF  features(df)      -> LASSO -> logistic regression
    COMB     features(hf, df)  -> LASSO -> logistic regression

The LASSO chooses its penalty by 10-fold CV grouped by patient (a patient's lesions never
straddle a fold); the final logistic regression on the LASSO's features is unpenalised
(maximum likelihood), as the report says; the Youden threshold is learned on the training
linear predictor (log-odds), which never saturates the way a probability of 1.0 does.

where ``features`` is, per family: impute -> standardise (-> PCA -> standardise for deep
features) -> ICC filter (on repeat delineations; on perturbed reader-1 masks when the
training cases have none, see :meth:`~tasks.models.features.FeatureData.pairs`) -> Pearson
filter. Everything learned (imputer, scaler, PCA, ICC/Pearson/LASSO selection,
coefficients, the Youden threshold) sees training rows only: :func:`fit_models` drops every
other row before fitting. Fitting is retraining's slowest step (models x LASSO folds x
penalty path), so it logs each model and each LASSO fold as it finishes.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from scipy.special import expit, logit
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tasks.config import Settings
from tasks.evaluation.metrics import youden_threshold
from tasks.models.combat import ComBat
from tasks.models.features import FeatureData, icc_source, patient_groups, training_rows
from tasks.models.harmonise import SITE_COLUMN
from tasks.models.selection import ICCFilter, LassoSelector, PearsonFilter

log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter

# The models and the feature families each reads: the one list of model names.
MODELS = {"ONLY_HF": ("hf",), "ONLY_DF": ("df",), "COMB": ("hf", "df")}
LASSO_FOLDS = 10  # CV folds choosing the LASSO penalty


class FamilyFeatures(TransformerMixin, BaseEstimator):
    """Per feature family: (ComBat ->) impute -> standardise (-> PCA -> standardise) -> ICC
    -> Pearson.

    Parameters
    ----------
    families : tuple of str
        Column prefixes to use (``"hf"`` handcrafted, ``"df"`` deep).
    icc_threshold, icc_form : ICC filter settings (see :class:`tasks.models.selection.ICCFilter`).
    pearson_threshold : |r| above which one of a pair is dropped.
    pca_variance : explained variance kept by the PCA of deep features.
    combat : harmonise the handcrafted (``hf``) columns across sites with
        :class:`~tasks.models.combat.ComBat` first (the matrix then needs the
        ``meta:site`` column). Deep features are not harmonised: the CNN learns from the
        images of every training site, and the PCA would mix a per-site shift into every
        component.
    combat_min_cases : rows a site needs before ComBat estimates its batch effect.

    Attributes
    ----------
    branches_ : dict
        Per family: the fitted ``pre`` pipeline, ``icc`` filter (or None when no repeat
        set was given), ``pearson`` filter, the ``columns`` it reads and its ``combat``
        harmoniser (None when not harmonised).
    feature_names_out_ : list of str
    """

    def __init__(
        self,
        families: tuple[str, ...] = ("hf", "df"),
        icc_threshold: float = 0.75,
        icc_form: str = "ICC2",
        pearson_threshold: float = 0.9,
        pca_variance: float = 0.95,
        random_state: int = 0,
        combat: bool = False,
        combat_min_cases: int = 20,
    ):
        self.families = families
        self.icc_threshold = icc_threshold
        self.icc_form = icc_form
        self.pearson_threshold = pearson_threshold
        self.pca_variance = pca_variance
        self.random_state = random_state
        self.combat = combat
        self.combat_min_cases = combat_min_cases

    def _pre(self, family: str) -> Pipeline:
        steps: list[tuple[str, Any]] = [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]
        if family == "df":
            steps += [
                (
                    "pca",
                    PCA(
                        n_components=self.pca_variance,
                        svd_solver="full",
                        random_state=self.random_state,
                    ),
                ),
                ("rescale", StandardScaler()),
            ]
        return Pipeline(steps).set_output(transform="pandas")

    def _project(
        self, pre: Pipeline, family: str, X: pd.DataFrame, columns, combat: ComBat | None = None
    ) -> pd.DataFrame:
        values = X[columns]
        if combat is not None:  # sites harmonised before anything is imputed or scaled
            values = combat.transform(X[[*columns, SITE_COLUMN]])[columns]
        out = pre.transform(values)
        if family == "df":  # PCA names its outputs pca0..; keep the family prefix
            out.columns = [f"df:pc{i}" for i in range(out.shape[1])]
        return out

    def fit(self, X: pd.DataFrame, y, pairs: dict | None = None):
        self.branches_ = {}
        names: list[str] = []
        for family in self.families:
            columns = [c for c in X.columns if c.startswith(f"{family}:")]
            if not columns:
                raise ValueError(f"no {family}: columns in the feature matrix")
            combat = None
            if self.combat and family == "hf":
                combat = ComBat(columns_prefixes=("hf:",), min_cases=self.combat_min_cases)
                combat.fit(X[[*columns, SITE_COLUMN]])
            values = X[columns]
            if combat is not None:
                values = combat.transform(X[[*columns, SITE_COLUMN]])[columns]
            pre = self._pre(family).fit(values)
            Z = self._project(pre, family, X, columns, combat)
            icc = None
            if pairs:
                projected = {
                    name: (
                        self._project(pre, family, a, columns, combat),
                        self._project(pre, family, b, columns, combat),
                    )
                    for name, (a, b) in pairs.items()
                }
                icc = ICCFilter(threshold=self.icc_threshold, form=self.icc_form)
                icc.set_output(transform="pandas")
                Z = icc.fit(Z, y, pairs=projected).transform(Z)
            pearson = PearsonFilter(threshold=self.pearson_threshold)
            pearson.set_output(transform="pandas").fit(Z, y)
            Z = pearson.transform(Z)
            self.branches_[family] = {
                "pre": pre,
                "icc": icc,
                "pearson": pearson,
                "columns": columns,
                "combat": combat,
            }
            names += list(Z.columns)
        self.feature_names_out_ = names
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        parts = []
        for family, branch in self.branches_.items():
            Z = self._project(branch["pre"], family, X, branch["columns"], branch.get("combat"))
            if branch["icc"] is not None:
                Z = branch["icc"].transform(Z)
            parts.append(branch["pearson"].transform(Z))
        return pd.concat(parts, axis=1)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.feature_names_out_, dtype=object)


def build_pipeline(
    families: tuple[str, ...], settings: Settings, harmonisation: str = "none"
) -> Pipeline:
    """features -> LASSO (10-fold CV, 1-SE) -> logistic regression, as one Pipeline.

    ``harmonisation`` ``"combat"`` puts ComBat first in the features step; ``"image"`` and
    ``"none"`` change nothing here (image normalisation happens at extraction: the caller
    passes the normalised pass's feature data).
    """
    return Pipeline(
        [
            (
                "features",
                FamilyFeatures(
                    families=families,
                    icc_threshold=settings.icc_threshold,
                    pearson_threshold=settings.pearson_threshold,
                    pca_variance=settings.pca_variance,
                    random_state=settings.seed,
                    combat=harmonisation == "combat",
                    combat_min_cases=settings.combat_min_cases,
                ),
            ),
            (
                "lasso",
                LassoSelector(cv=LASSO_FOLDS, rule=settings.lasso_rule, random_state=settings.seed),
            ),
            ("logit", unpenalised_logistic()),
        ]
    ).set_output(transform="pandas")


PENALTY = "none (maximum likelihood)"  # the final models' penalty, as the report names it


def unpenalised_logistic(max_iter: int = 10000) -> LogisticRegression:
    """Logistic regression without penalty, across sklearn versions (1.8 deprecated
    ``penalty=``; ``C=inf`` is its unpenalised form)."""
    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated":
        return LogisticRegression(C=np.inf, max_iter=max_iter)
    return LogisticRegression(penalty=None, max_iter=max_iter)  # pragma: no cover


@dataclass
class FittedModel:
    """A fitted model, its training threshold and how it was fitted.

    ``threshold`` is the Youden threshold as a probability (what a reader reads);
    ``threshold_lp`` the same cut-off on the linear predictor, where decisions are made.
    ``fit_info`` records the fit (penalty, LASSO rule and fallback, CV grouping, ICC
    repeat sets and their n, features kept per step) for the report and MLflow. Bundles
    fitted before these two fields existed read them as None.
    """

    name: str
    pipeline: Pipeline
    threshold: float  # Youden on training, applied unchanged elsewhere
    icc_applied: bool
    threshold_lp: float | None = None
    fit_info: dict[str, Any] | None = None

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """The linear predictor (log-odds): finite where a probability would round to 1."""
        return np.asarray(self.pipeline.decision_function(X), dtype=np.float64)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return expit(self.decision_function(X))

    @property
    def cutoff(self) -> float:
        """The threshold on the linear predictor (older bundles: from the probability)."""
        if self.threshold_lp is not None:
            return float(self.threshold_lp)
        return float(logit(np.clip(self.threshold, 1e-15, 1 - 1e-15)))

    def selected_features(self) -> dict[str, float]:
        lasso = self.pipeline.named_steps["lasso"]
        coefs = self.pipeline.named_steps["logit"].coef_[0]
        return dict(zip(lasso.get_feature_names_out(), map(float, coefs), strict=True))


def _log_fold(logger: Logger, name: str, fold: int, n_folds: int) -> None:
    logger.info("%s: LASSO fold %d/%d", name, fold, n_folds)


def fit_models(
    data: FeatureData,
    settings: Settings,
    names: Sequence[str] = tuple(MODELS),
    logger: Logger = log,
    harmonisation: str = "none",
) -> dict[str, FittedModel]:
    """Fit each model on the labelled training rows only (repeats: training cases only).

    ``harmonisation``: the scanner harmonisation option the models are fitted under
    (``data`` is the image-normalised pass's for ``"image"``; see :func:`build_pipeline`).

    Progress goes to ``logger`` (the module's; the Prefect task passes its run logger):
    which model is being fitted and each LASSO cross-validation fold as it finishes,
    e.g. ``ONLY_HF: LASSO fold 3/10``.
    """
    X, y = training_rows(data)
    if y.nunique() < 2:
        raise ValueError(f"training split needs both labels, has {y.value_counts().to_dict()}")
    groups = patient_groups(data, X.index)
    pairs = data.pairs(X.index, settings.icc_min_repeats)
    repeats = data.repeat_counts(X.index)
    if not pairs:
        logger.warning(
            "no repeat delineations or perturbed masks among training cases: ICC filter not applied"
        )
    elif icc_source(pairs) == "perturbed masks":
        logger.info("no repeat delineations among training cases: ICC filter on perturbed masks")
    models = {}
    for i, name in enumerate(names, start=1):
        logger.info("%s: fitting model %d/%d on %d training cases", name, i, len(names), len(y))
        pipeline = clone(build_pipeline(MODELS[name], settings, harmonisation))
        fit_params: dict[str, Any] = {
            "lasso__progress": partial(_log_fold, logger, name),
            "lasso__groups": groups,
        }
        if pairs:
            fit_params["features__pairs"] = pairs
        pipeline.fit(X, y, **fit_params)
        cutoff = youden_threshold(y.to_numpy(), pipeline.decision_function(X))
        info = fit_info(pipeline, pairs, repeats, settings, harmonisation)
        info["training_cases"] = sorted(map(str, X.index))
        models[name] = FittedModel(
            name, pipeline, float(expit(cutoff)), bool(pairs), float(cutoff), info
        )
        logger.info("%s: %d features selected", name, len(models[name].selected_features()))
        if info["lasso"]["fallback"]:
            logger.warning(
                "%s: the LASSO %s rule selected no feature; fell back to C=%.4g",
                name,
                settings.lasso_rule,
                info["lasso"]["C"],
            )
    return models


def fit_info(
    pipeline: Pipeline,
    pairs: dict,
    repeats: dict[str, int],
    settings: Settings,
    harmonisation: str = "none",
) -> dict[str, Any]:
    """How one model was fitted, as plain values: what the report and MLflow record."""
    features, lasso = pipeline.named_steps["features"], pipeline.named_steps["lasso"]
    combat = next((b["combat"] for b in features.branches_.values() if b.get("combat")), None)
    harmonised: dict[str, Any] = {"option": harmonisation}
    if combat is not None:
        harmonised |= {
            "reference_site": combat.reference_,
            "training_sites": sorted(combat.estimates_),
            "skipped_sites": dict(combat.fit_skipped_),
            "min_cases": combat.min_cases,
        }
    logit_step = pipeline.named_steps["logit"]
    kept = {}
    for family, branch in features.branches_.items():
        icc, pearson = branch["icc"], branch["pearson"]
        kept[family] = {
            "columns": len(branch["columns"]),
            "after_preprocessing": int((icc or pearson).n_features_in_),
            "after_icc": int(pearson.n_features_in_),
            "after_pearson": int(branch["pearson"].support_.sum()),
        }
    return {
        "penalty": PENALTY,
        "converged": bool(np.all(logit_step.n_iter_ < logit_step.max_iter)),
        "lasso": {
            "rule": settings.lasso_rule,
            "folds": LASSO_FOLDS,
            "grouped_by_patient": bool(lasso.grouped_),
            "C": lasso.C_,
            "C_rule": lasso.C_rule_,
            "C_best": lasso.C_best_,
            "fallback": bool(lasso.fallback_),
            "selected": int(lasso.support_.sum()),
        },
        "icc": {
            "applied": bool(pairs),
            "source": icc_source(pairs),
            "threshold": settings.icc_threshold,
            "min_repeats": settings.icc_min_repeats,
            "n_per_set": dict(repeats),
            "sets_used": sorted(pairs),
        },
        "features_kept": kept,
        "harmonisation": harmonised,
    }


# -- Prefect wrappers ------------------------------------------------------------------------
@task(name="fit-models", cache_policy=NO_CACHE, task_run_name="fit-models-{harmonisation}")
def fit_models_task(
    data: FeatureData,
    settings: Settings,
    names: Sequence[str] = tuple(MODELS),
    harmonisation: str = "none",
) -> dict[str, FittedModel]:
    """:func:`fit_models` as a task run of its own, its progress lines in the run's log."""
    return fit_models(data, settings, names, logger=get_run_logger(), harmonisation=harmonisation)
