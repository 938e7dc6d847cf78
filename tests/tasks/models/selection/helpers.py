"""Data and checks shared by the selection tests: repeats data, the estimator contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import clone


def icc_data(n_cases: int = 60, n_repeat: int = 30, seed: int = 0):
    """X with features stable / noisy / stable between readers but not on repeat."""
    rng = np.random.default_rng(seed)
    cols = ["stable", "noisy", "inter_only"]
    X = pd.DataFrame(rng.normal(size=(n_cases, 3)), columns=cols)
    reader1 = X.iloc[:n_repeat]
    reader2 = reader1.copy()
    reader2["stable"] += rng.normal(0, 0.1, n_repeat)
    reader2["noisy"] = rng.normal(size=n_repeat)
    reader2["inter_only"] += rng.normal(0, 0.1, n_repeat)
    repeat = reader1.copy()
    repeat["stable"] += rng.normal(0, 0.1, n_repeat)
    repeat["noisy"] = rng.normal(size=n_repeat)
    repeat["inter_only"] = rng.normal(size=n_repeat)
    y = (X["stable"] + rng.normal(0, 1, n_cases) > 0).astype(int)
    return X, y, {"inter": (reader1, reader2), "intra": (reader1, repeat)}


def binary(y):
    """check_estimator's targets (often 3-class) made binary, as our outcome is."""
    if y is None:
        return y
    y = np.asarray(y)
    return y if y.size == 0 else (y != np.unique(y)[0]).astype(int)


def assert_params_round_trip_and_clone(estimator) -> None:
    """get_params/set_params/clone behave as sklearn's contract says."""
    params = estimator.get_params()
    twin = clone(estimator)
    assert twin is not estimator and twin.get_params() == params
    changed = {key: value for key, value in params.items() if key in ("threshold", "cv")}
    changed = {key: (0.5 if key == "threshold" else 3) for key in changed}
    twin.set_params(**changed)
    assert twin.get_params() == {**params, **changed}
    assert estimator.get_params() == params


def assert_fit_returns_self_and_set_output_keeps_names(est, X, y, **kwargs) -> None:
    """fit returns self; set_output(transform="pandas") keeps names and index."""
    assert est.fit(X, y, **kwargs) is est
    out = est.set_output(transform="pandas").transform(X)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(est.get_feature_names_out())
    assert out.index.equals(X.index)
