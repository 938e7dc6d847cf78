"""Tests for tasks.models.selection.lasso: LassoSelector as an sklearn step."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from tasks.models.selection import LassoSelector
from tests.tasks.models.selection.helpers import assert_params_round_trip_and_clone, binary

TRUE_FEATURES = {"f03", "f11", "f22"}


def _lasso_data(n: int = 300, p: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    beta = np.zeros(p)
    beta[[3, 11, 22]] = [1.2, -1.0, 0.8]
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ beta - 0.3)))).astype(int)
    X = pd.DataFrame(StandardScaler().fit_transform(X), columns=[f"f{j:02d}" for j in range(p)])
    return X, y


@pytest.fixture(scope="module")
def lasso_fits():
    X, y = _lasso_data()
    return X, y, LassoSelector(rule="1se").fit(X, y), LassoSelector(rule="min").fit(X, y)


def test_lasso_selects_the_true_features(lasso_fits):
    _, _, one_se, best = lasso_fits
    chosen_1se = set(one_se.get_feature_names_out())
    chosen_min = set(best.get_feature_names_out())
    assert len(chosen_1se & TRUE_FEATURES) >= 2 and len(chosen_1se - TRUE_FEATURES) <= 3
    assert chosen_min >= TRUE_FEATURES and len(chosen_min - TRUE_FEATURES) <= 10
    assert one_se.C_ <= best.C_ and len(chosen_1se) <= len(chosen_min)
    assert not one_se.fallback_ and not best.fallback_
    assert set(one_se.coef_.index) == chosen_1se and (one_se.coef_ != 0).all()
    assert np.sign(one_se.coef_["f11"]) == -1


def test_lasso_rules_are_exact_on_the_cv_table(lasso_fits):
    _, _, one_se, best = lasso_fits
    table = one_se.cv_scores_
    assert list(table.columns) == ["mean", "se", "n_nonzero"]
    assert table.index.is_monotonic_increasing and len(table) == 50
    i_best = int(np.argmin(table["mean"].to_numpy()))
    bound = table["mean"].iloc[i_best] + table["se"].iloc[i_best]
    assert best.C_ == one_se.C_best_ == table.index[i_best]
    assert one_se.C_ == table.index[table["mean"].to_numpy() <= bound][0]
    # The same CV (same folds, same solver seed) behind both rules.
    pd.testing.assert_frame_equal(table, best.cv_scores_)
    assert table.loc[one_se.C_, "n_nonzero"] == one_se.support_.sum()
    assert table["n_nonzero"].iloc[0] == 0  # the grid starts where every coefficient is 0


def test_lasso_is_deterministic(lasso_fits):
    X, y, one_se, _ = lasso_fits
    again = LassoSelector(rule="1se").fit(X, y)
    pd.testing.assert_frame_equal(again.cv_scores_, one_se.cv_scores_)
    pd.testing.assert_series_equal(again.coef_, one_se.coef_)
    assert again.C_ == one_se.C_


def test_lasso_roc_auc_scoring():
    X, y = _lasso_data(n=200, seed=4)
    sel = LassoSelector(cv=5, Cs=15, scoring="roc_auc").fit(X, y)
    assert sel.cv_scores_["mean"].iloc[0] == pytest.approx(0.5)  # empty model: constant score
    assert sel.cv_scores_["mean"].max() > 0.7
    assert len(set(sel.get_feature_names_out()) & TRUE_FEATURES) >= 2


def test_lasso_falls_back_when_the_rule_selects_nothing():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((120, 8))
    y = rng.integers(0, 2, 120)  # no signal: CV prefers the empty model
    sel = LassoSelector(cv=5, Cs=20).fit(X, y)
    table = sel.cv_scores_
    assert sel.fallback_
    assert sel.support_.sum() >= 1
    assert sel.C_ == table.index[table["n_nonzero"].to_numpy() > 0][0]


def test_lasso_rejects_bad_parameters():
    X, y = _lasso_data(n=60)
    with pytest.raises(ValueError, match="rule"):
        LassoSelector(rule="2se").fit(X, y)
    with pytest.raises(ValueError, match="scoring"):
        LassoSelector(scoring="accuracy").fit(X, y)
    with pytest.raises(ValueError, match="binary outcome"):
        LassoSelector().fit(X, np.arange(60) % 3)


def test_lasso_reports_each_fold_and_progress_changes_nothing(lasso_fits):
    X, y, one_se, _ = lasso_fits
    calls: list[tuple[int, int]] = []
    reported = LassoSelector(rule="1se").fit(X, y, progress=lambda *done: calls.append(done))
    assert calls == [(fold, 10) for fold in range(1, 11)]
    pd.testing.assert_frame_equal(reported.cv_scores_, one_se.cv_scores_)
    pd.testing.assert_series_equal(reported.coef_, one_se.coef_)
    # A splitter's own number of folds, and the step-prefixed fit parameter of a Pipeline.
    calls.clear()
    splitter = StratifiedKFold(3, shuffle=True, random_state=0)
    pipe = Pipeline([("lasso", LassoSelector(cv=splitter, Cs=5))])
    pipe.fit(X, y, lasso__progress=lambda *done: calls.append(done))
    assert calls == [(1, 3), (2, 3), (3, 3)]


# --------------------------------------------------------------------------------------
# the estimator contract
# --------------------------------------------------------------------------------------


class _BinarisedLassoSelector(LassoSelector):
    """check_estimator feeds 3-class targets; the outcome here is binary by design."""

    def fit(self, X, y):
        return super().fit(X, binary(y))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_check_estimator():
    # Every sklearn check, run on a thin subclass: the outcome must be binary, which
    # check_estimator does not provide; that inherent difference is tested directly above.
    # on_skip=None: the one skipped check is the array-API one, which needs SCIPY_ARRAY_API.
    check_estimator(_BinarisedLassoSelector(cv=3, Cs=5), on_skip=None)


def test_params_round_trip_and_clone():
    assert_params_round_trip_and_clone(LassoSelector(cv=4))
