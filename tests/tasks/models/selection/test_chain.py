"""Tests for tasks.models.selection as a whole: its public names, the chain in one Pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import tasks.models.selection as selection
from tasks.models.selection import ICCFilter, LassoSelector, PearsonFilter


def test_public_names_are_exported_from_the_package():
    assert sorted(selection.__all__) == [
        "ICCFilter",
        "ICC_FORMS",
        "LassoSelector",
        "PearsonFilter",
        "icc",
    ]
    # Each from the module of its stage (the package only re-exports them).
    assert selection.icc.__module__ == "tasks.models.selection.icc"
    assert ICCFilter.__module__ == "tasks.models.selection.icc"
    assert PearsonFilter.__module__ == "tasks.models.selection.pearson"
    assert LassoSelector.__module__ == "tasks.models.selection.lasso"


def test_selection_chain_in_one_pipeline():
    rng = np.random.default_rng(11)
    n, n_noise, n_rep = 240, 10, 60
    latent = rng.normal(size=(n, 3))
    logit = latent @ np.array([1.5, -1.2, 1.0]) + 1.3 * rng.normal(size=n)
    y = (logit > 0).astype(int)
    X = pd.DataFrame(latent * [2.0, 50.0, 0.1] + [10, -3, 0], columns=["s1", "s2", "s3"])
    X["s1_copy"] = X["s1"] + rng.normal(0, 0.25, n)  # r ~ 0.99 with s1, lower AUC
    X["fragile"] = 0.8 * latent[:, 0] - 0.8 * latent[:, 1] + rng.normal(0, 0.5, n)
    for j in range(n_noise):
        X[f"noise{j}"] = rng.normal(size=n)
    reader1 = X.iloc[:n_rep]
    reader2 = reader1 + rng.normal(0, 0.05, size=reader1.shape) * reader1.std().to_numpy()
    repeat = reader1 + rng.normal(0, 0.05, size=reader1.shape) * reader1.std().to_numpy()
    # The fragile feature is predictive but cannot be re-measured: the ICC stage drops it.
    repeat["fragile"] = rng.normal(size=n_rep)
    pairs = {"inter": (reader1, reader2), "intra": (reader1, repeat)}

    pipe = Pipeline(
        [
            ("scale", StandardScaler()),
            ("icc", ICCFilter()),
            ("pearson", PearsonFilter()),
            ("lasso", LassoSelector(cv=5, Cs=20)),
            ("model", LogisticRegression()),
        ]
    ).set_output(transform="pandas")
    pipe.fit(X, y, icc__pairs=pairs)

    assert "fragile" not in pipe["icc"].get_feature_names_out()
    assert pipe["pearson"].dropped_ == {"s1_copy": "s1"}
    names = pipe[:-1].get_feature_names_out().tolist()
    assert {"s1", "s2", "s3"} <= set(names)
    assert not {"fragile", "s1_copy"} & set(names)
    assert names == pipe["lasso"].coef_.index.tolist()
    assert pipe["model"].feature_names_in_.tolist() == names
    assert pipe.predict_proba(X).shape == (n, 2)
