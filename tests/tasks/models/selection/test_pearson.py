"""Tests for tasks.models.selection.pearson: PearsonFilter as an sklearn step."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.utils.estimator_checks import check_estimator

from tasks.models.selection import PearsonFilter
from tests.tasks.models.selection.helpers import (
    assert_fit_returns_self_and_set_output_keeps_names,
    assert_params_round_trip_and_clone,
    binary,
    icc_data,
)


def _pearson_data(n: int = 400, seed: int = 1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    strong = y + rng.normal(0, 1.0, n)
    # weak = strong + noise, r ~ 0.95, so it discriminates less; it comes first in the
    # columns so that "keep the first of a pair" would fail.
    weak = strong + rng.normal(0, 0.37, n)
    mirror = -strong + rng.normal(0, 0.37, n)  # negatively correlated copy, r ~ -0.95
    other = rng.normal(size=n)
    X = pd.DataFrame({"weak": weak, "strong": strong, "mirror": mirror, "other": other})
    return X, y


def test_pearson_filter_keeps_the_better_of_a_correlated_pair():
    X, y = _pearson_data()
    r = X.corr()
    assert 0.93 < r.loc["weak", "strong"] < 0.97 and r.loc["mirror", "strong"] < -0.93
    sel = PearsonFilter(threshold=0.9).fit(X, y)
    for col in X:  # direction-free AUC, checked against sklearn's
        auc = roc_auc_score(y, X[col])
        assert sel.auc_[col] == pytest.approx(max(auc, 1 - auc), abs=1e-12)
    assert sel.auc_["strong"] > sel.auc_["weak"]
    assert sel.get_feature_names_out().tolist() == ["strong", "other"]
    assert sel.dropped_ == {"weak": "strong", "mirror": "strong"}
    # Above the pair's correlation nothing is redundant.
    assert PearsonFilter(threshold=0.99).fit(X, y).get_support().all()


def test_pearson_filter_respects_threshold():
    rng = np.random.default_rng(3)
    n = 300
    y = rng.integers(0, 2, n)
    factors = rng.normal(size=(n, 4)) + y[:, None] * np.array([1.0, 0.5, 0.2, 0.0])
    loadings = rng.normal(size=(4, 25))
    X = factors @ loadings + rng.normal(0, 0.4, size=(n, 25))
    for threshold in (0.6, 0.8, 0.9):
        sel = PearsonFilter(threshold=threshold).fit(X, y)
        kept = np.flatnonzero(sel.support_)
        r = np.corrcoef(X, rowvar=False)
        off = np.abs(r[np.ix_(kept, kept)])[~np.eye(kept.size, dtype=bool)]
        assert off.max() <= threshold
        assert 0 < kept.size < 25
        for dropped, keeper in sel.dropped_.items():
            i, j = int(dropped[1:]), int(keeper[1:])
            assert abs(r[i, j]) > threshold and sel.support_[j] and not sel.support_[i]
            assert sel.auc_[keeper] >= sel.auc_[dropped]
        assert len(sel.dropped_) + kept.size == 25


def test_pearson_filter_needs_binary_y():
    X, _ = _pearson_data(n=30)
    with pytest.raises(ValueError, match="binary outcome"):
        PearsonFilter().fit(X, np.arange(30) % 3)


# --------------------------------------------------------------------------------------
# the estimator contract
# --------------------------------------------------------------------------------------


class _BinarisedPearsonFilter(PearsonFilter):
    """check_estimator feeds 3-class targets; the outcome here is binary by design."""

    def fit(self, X, y):
        return super().fit(X, binary(y))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_check_estimator():
    # Every sklearn check, run on a thin subclass: the outcome must be binary, which
    # check_estimator does not provide; that inherent difference is tested directly above.
    # on_skip=None: the one skipped check is the array-API one, which needs SCIPY_ARRAY_API.
    check_estimator(_BinarisedPearsonFilter(), on_skip=None)


def test_params_round_trip_and_clone():
    assert_params_round_trip_and_clone(PearsonFilter(threshold=0.8))


def test_fit_returns_self_and_set_output_keeps_names():
    X, y, _ = icc_data()
    assert_fit_returns_self_and_set_output_keeps_names(PearsonFilter(), X, y)
