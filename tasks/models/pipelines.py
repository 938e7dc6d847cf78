"""Modeling step: feature matrices from the store, the three models, fitted on training only.

Reads the current ``cohort`` with its ``radiomics`` (current params) and ``embeddings``
(one CNN model version) rows and builds one matrix per mask variant: handcrafted columns
``hf:<region>:<feature>`` and deep columns ``df:<i>`` (the fused embedding). The three
models of the paper are sklearn Pipelines over those columns::

    ONLY_HF  features(hf)      -> LASSO -> logistic regression
    ONLY_DF  features(df)      -> LASSO -> logistic regression
    COMB     features(hf, df)  -> LASSO -> logistic regression

where ``features`` is, per family: impute -> standardise (-> PCA -> standardise for deep
features) -> ICC filter (on repeat delineations; on perturbed reader-1 masks when the
training cases have none, see :meth:`FeatureData.pairs`) -> Pearson filter. Everything learned
(imputer, scaler, PCA, ICC/Pearson/LASSO selection, coefficients, the Youden threshold) sees
training rows only: :func:`fit_models` drops every other row before fitting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tasks.data.ingest import current_cohort
from tasks.data.schema import GENERATED_VARIANTS, MASK_VARIANTS, PERTURBED
from tasks.data.store import FeatureStore
from tasks.evaluation.metrics import youden_threshold
from tasks.features.plan import variant_keys
from tasks.features.radiomics import META_COLUMNS
from tasks.models.selection import ICCFilter, LassoSelector, PearsonFilter

log = logging.getLogger(__name__)

MODELS = {"ONLY_HF": ("hf",), "ONLY_DF": ("df",), "COMB": ("hf", "df")}
SPLITS = ("training", "validation", "testing")
# Repeat sets for the ICC filter: (name, reference variant, repeat variant). The sets of a
# generated repeat variant (a perturbed mask) are a fallback: FeatureData.pairs uses them
# only when no real delineation set is available.
REPEAT_SETS = (
    ("inter", "reader1", "reader2"),
    ("intra", "reader1", "repeat"),
    (PERTURBED, "reader1", PERTURBED),
)
MIN_REPEATS = 3  # cases a repeat set needs to be used
_NOT_FEATURES = {*META_COLUMNS, "run_id", "code_version", "extracted_at"}


@dataclass
class FeatureData:
    """Matrices by mask variant (index case_id), labels and the cases' split and site."""

    X: dict[str, pd.DataFrame]  # mask variant -> matrix
    cases: pd.DataFrame  # case_id (index), label, split, site, exam_date
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def reader1(self) -> pd.DataFrame:
        return self.X["reader1"]

    def pairs(
        self, case_ids: pd.Index | None = None
    ) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
        """ICC repeat sets, restricted to ``case_ids`` (the training cases when fitting).

        The real delineation sets (``inter``: reader 2, ``intra``: reader 1's repeat) when
        any of them has at least three of the cases; only when none has, the ``perturbed``
        set (reader 1's mask eroded/dilated with contour noise). A second delineation
        measures how readers really differ, a perturbation only models it, so the two are
        never mixed and the real one always wins.
        """
        real: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
        generated: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
        for name, ref, rep in REPEAT_SETS:
            if ref not in self.X or rep not in self.X:
                continue
            common = self.X[ref].index.intersection(self.X[rep].index)
            if case_ids is not None:
                common = common.intersection(case_ids)
            if len(common) >= MIN_REPEATS:
                out = generated if rep in GENERATED_VARIANTS else real
                out[name] = (self.X[ref].loc[common], self.X[rep].loc[common])
        return real or generated


def icc_source(pairs: dict[str, Any]) -> str:
    """What repeat sets ``pairs`` come from: ``"delineations"``, ``"perturbed masks"`` or
    ``"none"``."""
    if not pairs:
        return "none"
    generated = {name for name, _, rep in REPEAT_SETS if rep in GENERATED_VARIANTS}
    return "perturbed masks" if set(pairs) <= generated else "delineations"


def _current_keys(cohort: pd.DataFrame) -> pd.DataFrame:
    """(case_id, mask_variant, image_sha256, mask_sha256) of every mask variant of the
    current cohort rows, the perturbed ones included where a case gets one (the derived
    mask id, as :func:`tasks.features.plan.variant_keys` plans them)."""
    records = cohort.astype(object).where(cohort.notna(), None).to_dict("records")
    keys = [key for case in records for key in variant_keys(case, perturb=True)]
    return pd.DataFrame(keys, columns=["case_id", "mask_variant", "image_sha256", "mask_sha256"])


def _matching(rows: pd.DataFrame, cohort: pd.DataFrame, variant: str) -> pd.DataFrame:
    """Rows whose image and mask hashes are the current cohort version's."""
    current = _current_keys(cohort)
    current = current[current["mask_variant"] == variant]
    rows = rows[rows["mask_variant"] == variant]
    return rows.merge(
        current, on=["case_id", "mask_variant", "image_sha256", "mask_sha256"], how="inner"
    )


def radiomics_matrix(radiomics: pd.DataFrame, cohort: pd.DataFrame, variant: str) -> pd.DataFrame:
    rows = _matching(radiomics, cohort, variant)
    if rows.empty:
        return pd.DataFrame()
    features = [c for c in rows.columns if c not in _NOT_FEATURES and rows[c].dtype.kind == "f"]
    rows = rows.sort_values("extracted_at").drop_duplicates(["case_id", "region"], keep="last")
    wide = rows.pivot(index="case_id", columns="region", values=features)
    wide.columns = [f"hf:{region}:{feature}" for feature, region in wide.columns]
    return wide.sort_index(axis=1).astype("float64")


def embedding_matrix(embeddings: pd.DataFrame, cohort: pd.DataFrame, variant: str) -> pd.DataFrame:
    rows = _matching(embeddings, cohort, variant)
    if rows.empty:
        return pd.DataFrame()
    rows = rows.sort_values("embedded_at").drop_duplicates("case_id", keep="last")
    vectors = np.stack([np.asarray(v, dtype=np.float64) for v in rows["fused"]])
    return pd.DataFrame(
        vectors,
        index=pd.Index(rows["case_id"], name="case_id"),
        columns=[f"df:{i}" for i in range(vectors.shape[1])],
    )


def load_features(
    store: FeatureStore,
    params_hash: str,
    model_version: str,
    versions: dict[str, int | None] | None = None,
) -> FeatureData:
    """Matrices for every current case that has both feature families, pinned to table
    ``versions`` (default: the latest) so a model records exactly what it read."""
    versions = versions or store.versions(("cohort", "radiomics", "embeddings"))
    cohort = current_cohort(store.read("cohort", version=versions["cohort"]))
    radiomics = store.read("radiomics", version=versions["radiomics"])
    radiomics = radiomics[radiomics["params_hash"] == params_hash]
    embeddings = store.read("embeddings", version=versions["embeddings"])
    embeddings = embeddings[embeddings["model_version"] == model_version]
    X: dict[str, pd.DataFrame] = {}
    for variant in (*MASK_VARIANTS, *GENERATED_VARIANTS):
        hf = radiomics_matrix(radiomics, cohort, variant)
        df = embedding_matrix(embeddings, cohort, variant)
        if hf.empty or df.empty:
            continue
        X[variant] = hf.join(df, how="inner")
    if "reader1" not in X:
        raise ValueError(
            f"no case has both radiomics (params {params_hash[:12]}) and embeddings "
            f"({model_version}) in {store.root}: run the cohort flow first"
        )
    cases = cohort.set_index("case_id").loc[
        X["reader1"].index, ["label", "split", "site", "exam_date"]
    ]
    lineage = {
        "table_versions": versions,
        "params_hash": params_hash,
        "cnn_model_version": model_version,
        "cases_with_features": int(len(cases)),
        "cases_in_cohort": int(len(cohort)),
    }
    data = FeatureData(X=X, cases=cases, lineage=lineage)
    # The repeats the ICC filter will use, as fit_models picks them (labelled training rows).
    data.lineage["icc_source"] = icc_source(data.pairs(training_rows(data)[0].index))
    return data


class FamilyFeatures(TransformerMixin, BaseEstimator):
    """Per feature family: impute -> standardise (-> PCA -> standardise) -> ICC -> Pearson.

    Parameters
    ----------
    families : tuple of str
        Column prefixes to use (``"hf"`` handcrafted, ``"df"`` deep).
    icc_threshold, icc_form : ICC filter settings (see :class:`tasks.models.selection.ICCFilter`).
    pearson_threshold : |r| above which one of a pair is dropped.
    pca_variance : explained variance kept by the PCA of deep features.

    Attributes
    ----------
    branches_ : dict
        Per family: the fitted ``pre`` pipeline, ``icc`` filter (or None when no repeat
        set was given), ``pearson`` filter and the ``columns`` it reads.
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
    ):
        self.families = families
        self.icc_threshold = icc_threshold
        self.icc_form = icc_form
        self.pearson_threshold = pearson_threshold
        self.pca_variance = pca_variance
        self.random_state = random_state

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

    def _project(self, pre: Pipeline, family: str, X: pd.DataFrame, columns) -> pd.DataFrame:
        out = pre.transform(X[columns])
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
            pre = self._pre(family).fit(X[columns])
            Z = self._project(pre, family, X, columns)
            icc = None
            if pairs:
                projected = {
                    name: (
                        self._project(pre, family, a, columns),
                        self._project(pre, family, b, columns),
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
            }
            names += list(Z.columns)
        self.feature_names_out_ = names
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        parts = []
        for family, branch in self.branches_.items():
            Z = self._project(branch["pre"], family, X, branch["columns"])
            if branch["icc"] is not None:
                Z = branch["icc"].transform(Z)
            parts.append(branch["pearson"].transform(Z))
        return pd.concat(parts, axis=1)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.feature_names_out_, dtype=object)


def build_pipeline(families: tuple[str, ...], settings: Any) -> Pipeline:
    """features -> LASSO (10-fold CV, 1-SE) -> logistic regression, as one Pipeline."""
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
                ),
            ),
            ("lasso", LassoSelector(cv=10, rule=settings.lasso_rule, random_state=settings.seed)),
            ("logit", LogisticRegression(max_iter=5000)),
        ]
    ).set_output(transform="pandas")


@dataclass
class FittedModel:
    name: str
    pipeline: Pipeline
    threshold: float  # Youden on training, applied unchanged elsewhere
    icc_applied: bool

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.pipeline.predict_proba(X)[:, 1]

    def selected_features(self) -> dict[str, float]:
        lasso = self.pipeline.named_steps["lasso"]
        coefs = self.pipeline.named_steps["logit"].coef_[0]
        return dict(zip(lasso.get_feature_names_out(), map(float, coefs), strict=True))


def training_rows(data: FeatureData) -> tuple[pd.DataFrame, pd.Series]:
    cases = data.cases
    keep = (cases["split"] == "training") & cases["label"].notna()
    index = cases.index[keep]
    return data.reader1.loc[index], cases.loc[index, "label"].astype(int)


def fit_models(data: FeatureData, settings: Any, names=tuple(MODELS)) -> dict[str, FittedModel]:
    """Fit each model on the labelled training rows only (repeats: training cases only)."""
    X, y = training_rows(data)
    if y.nunique() < 2:
        raise ValueError(f"training split needs both labels, has {y.value_counts().to_dict()}")
    pairs = data.pairs(X.index)
    if not pairs:
        log.warning(
            "no repeat delineations or perturbed masks among training cases: ICC filter not applied"
        )
    elif icc_source(pairs) == "perturbed masks":
        log.info("no repeat delineations among training cases: ICC filter on perturbed masks")
    models = {}
    for name in names:
        pipeline = clone(build_pipeline(MODELS[name], settings))
        fit_params = {"features__pairs": pairs} if pairs else {}
        pipeline.fit(X, y, **fit_params)
        prob = pipeline.predict_proba(X)[:, 1]
        models[name] = FittedModel(
            name, pipeline, youden_threshold(y.to_numpy(), prob), bool(pairs)
        )
        log.info("%s: %d features selected", name, len(models[name].selected_features()))
    return models


def training_cases(store: FeatureStore, cohort_version: int | None = None) -> list[dict]:
    """Current labelled training cases, as plain dicts (for the CNN fine-tune)."""
    cohort = current_cohort(store.read("cohort", version=cohort_version))
    rows = cohort[(cohort["split"] == "training") & cohort["label"].notna()]
    return rows.astype(object).where(rows.notna(), None).to_dict("records")


# -- Prefect wrappers ------------------------------------------------------------------------
load_features_task = task(load_features, name="load-features", cache_policy=NO_CACHE)
fit_models_task = task(fit_models, name="fit-models", cache_policy=NO_CACHE)
training_cases_task = task(training_cases, name="training-cases", cache_policy=NO_CACHE)
