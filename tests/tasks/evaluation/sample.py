"""A small, fixed, real input for the evaluation step: feature matrices and fitted models.

Built from a seeded generator (no store, no images): 224 cases at four sites (site D: five
negatives only), labelled but for six, with handcrafted (``hf:``) and deep (``df:``) columns
that carry some signal, a reader-2 delineation for 30 training cases (so the ICC note names
repeat delineations) and a shifted feature at the validation site (so drift has something
to report). The three models are real fitted sklearn pipelines with the steps the
evaluation reads (``features`` ... ``lasso``, ``logit``); the Youden threshold is learned
on training.

Shared by the evaluation tests and the registry test; the report.json stored beside it
(``data/report.json``) was written from this input by the evaluation code (regenerated when
the report gained per-set site metrics, calibrated drift, model fits and TRIPOD+AI items).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tasks.evaluation.evaluate import check_floor, evaluate
from tasks.evaluation.metrics import youden_threshold
from tasks.evaluation.results import CohortFlow, Evaluation
from tasks.models.features import FeatureData
from tasks.models.pipelines import MODELS, FittedModel

RUN_ID = "validate-20240601T120000-ab12"
CREATED_AT = "2024-06-01T12:00:00+00:00"
SIZES = {"training": 120, "validation": 60, "testing": 44}
UNLABELLED = 6  # testing cases without a label: scored, never evaluated
LINEAGE = {
    "table_versions": {"cohort": 3, "radiomics": 5, "embeddings": 2},
    "params_hash": "0f1e2d3c4b5a",
    "cnn_model_version": "cnn-20240501T000000",
    "cases_with_features": sum(SIZES.values()),
    "cases_in_cohort": sum(SIZES.values()) + 4,
    "icc_source": "delineations",
}
COHORT_FLOW = {
    "cases_in": sum(SIZES.values()) + 4,
    "quarantined": 4,
    "per_split": dict(SIZES),
    "per_site": {"A": 86, "B": 78, "C": 60},
    "labelled": sum(SIZES.values()) - UNLABELLED,
    "unlabelled": UNLABELLED,
}


def feature_data(seed: int = 5) -> FeatureData:
    rng = np.random.default_rng(seed)
    splits = np.repeat(list(SIZES), list(SIZES.values()))
    n = splits.size
    ids = [f"C{i:04d}" for i in range(n)]
    label = (rng.random(n) < 0.4).astype(float)
    label[-UNLABELLED:] = np.nan
    sites = np.where(rng.random(n) < 0.52, "A", "B")
    sites[splits == "validation"] = "C"
    # A small testing site with negatives only: its AUC and sensitivity are undefined.
    site_d = np.flatnonzero((splits == "testing") & (label == 0))[:5]
    sites[site_d] = "D"
    signal = np.nan_to_num(2 * label - 1)
    columns = {}
    for i in range(6):
        columns[f"hf:intratumoral:feature_{i}"] = rng.normal(size=n) + (0.45 - 0.15 * i) * signal
    for i in range(4):
        columns[f"df:{i}"] = rng.normal(size=n) + (0.4 if i == 1 else 0.0) * signal
    reader1 = pd.DataFrame(columns, index=pd.Index(ids, name="case_id"))
    # The validation site's scanner shifts one texture feature: drift to report.
    reader1.loc[sites == "C", "hf:intratumoral:feature_4"] += 1.5
    repeat = reader1.index[splits == "training"][:30]
    reader2 = reader1.loc[repeat] + rng.normal(0, 0.1, (len(repeat), reader1.shape[1]))
    cases = pd.DataFrame(
        {
            "label": label,
            "split": splits,
            "site": sites,
            "exam_date": pd.Timestamp("2023-01-01") + pd.to_timedelta(np.arange(n), "D"),
        },
        index=reader1.index,
    )
    lineage = copy.deepcopy(LINEAGE)
    return FeatureData(X={"reader1": reader1, "reader2": reader2}, cases=cases, lineage=lineage)


def _pipeline(columns: list[str], k: int) -> Pipeline:
    scale = ColumnTransformer(
        [("scale", StandardScaler(), columns)], verbose_feature_names_out=False
    )
    return Pipeline(
        [
            ("features", scale),
            ("lasso", SelectKBest(f_classif, k=k)),
            ("logit", LogisticRegression(max_iter=1000)),
        ]
    ).set_output(transform="pandas")


def _fit(data: FeatureData, name: str, columns: list[str], k: int) -> FittedModel:
    cases = data.cases
    train = cases.index[(cases["split"] == "training") & cases["label"].notna()]
    X, y = data.reader1.loc[train], cases.loc[train, "label"].astype(int).to_numpy()
    pipeline = _pipeline(columns, k).fit(X, y)
    cutoff = youden_threshold(y, pipeline.decision_function(X))
    return FittedModel(
        name, pipeline, float(expit(cutoff)), icc_applied=True, threshold_lp=float(cutoff)
    )


def fit_models(data: FeatureData) -> dict[str, FittedModel]:
    """The three models, one per feature-family set, fitted on the labelled training rows."""
    models = {}
    for name, families in MODELS.items():
        columns = [c for c in data.reader1.columns if c.split(":")[0] in families]
        models[name] = _fit(data, name, columns, k=min(3, len(columns)))
    return models


def evaluation(
    data: FeatureData, models: dict[str, FittedModel], kind: str = "validate"
) -> Evaluation:
    """The evaluation ``data/report.json`` was written from: the flow's extra version, a
    fixed creation time and, for a validate run, the AUC floor check at 0.65."""
    if kind == "retrain":
        extra = {"cnn": LINEAGE["cnn_model_version"]}
    else:
        extra = {"champion": "sln-comb v3"}
    out = evaluate(models, data, RUN_ID, kind, CohortFlow(**COHORT_FLOW), extra)
    out = replace(out, created_at=CREATED_AT)
    return out.with_checks(check_floor(out, 0.65)) if kind == "validate" else out
