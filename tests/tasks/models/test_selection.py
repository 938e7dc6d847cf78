"""Tests for tasks.models.selection: ICC, ICC filter, Pearson filter and LASSO as sklearn steps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import sklearn
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_array
from sklearn.utils.estimator_checks import check_estimator

from tasks.models.selection import ICC_FORMS, ICCFilter, LassoSelector, PearsonFilter, icc

# --------------------------------------------------------------------------------------
# icc
# --------------------------------------------------------------------------------------


def _pingouin_icc(ratings: np.ndarray) -> pd.DataFrame:
    """pingouin's six ICCs of each feature of an (n, k, p) array, feature x form."""
    n, k, p = ratings.shape
    rows = {}
    for j in range(p):
        long = pd.DataFrame(
            {
                "case": np.repeat(np.arange(n), k),
                "reader": np.tile(np.arange(k), n),
                "value": ratings[:, :, j].ravel(),
            }
        )
        table = pg.intraclass_corr(long, targets="case", raters="reader", ratings="value")
        rows[j] = table.set_index("Type")["ICC"]
    out = pd.DataFrame(rows).T
    # pingouin names the forms after McGraw & Wong; ours after Shrout & Fleiss.
    return out.rename(
        columns={
            "ICC(1,1)": "ICC1",
            "ICC(A,1)": "ICC2",
            "ICC(C,1)": "ICC3",
            "ICC(1,k)": "ICC1k",
            "ICC(A,k)": "ICC2k",
            "ICC(C,k)": "ICC3k",
        }
    )[list(ICC_FORMS)]


def _repeat_ratings(n: int, k: int, seed: int) -> np.ndarray:
    """Features spanning poor to excellent reliability, with reader offsets and scales."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(3.0, 2.0, size=(n, 1, 4))
    noise_sd = np.array([0.05, 0.5, 2.0, 5.0])
    reader_shift = rng.normal(0.0, 1.0, size=(1, k, 4))
    return truth + reader_shift + rng.normal(size=(n, k, 4)) * noise_sd


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.dropna")  # pingouin's
def test_icc_matches_pingouin(k):
    ratings = _repeat_ratings(n=25, k=k, seed=k)
    expected = _pingouin_icc(ratings)
    for form in ICC_FORMS:
        ours = icc(ratings[:, 0], ratings[:, 1], form) if k == 2 else icc(ratings, form=form)
        np.testing.assert_allclose(ours, expected[form].to_numpy(), rtol=0, atol=1e-10)
    # The simulated features do span the range, so the comparison covers it.
    consistency = icc(ratings, form="ICC3")
    assert consistency[0] > 0.95 and consistency[3] < 0.5


def test_icc_shrout_fleiss_table2():
    # Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; their Table 4 reports
    # ICC(1,1)=.17, ICC(2,1)=.29, ICC(3,1)=.71, ICC(1,4)=.44, ICC(2,4)=.62, ICC(3,4)=.91.
    table2 = np.array(
        [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
        dtype=float,
    )
    published = {"ICC1": 0.17, "ICC2": 0.29, "ICC3": 0.71, "ICC1k": 0.44, "ICC2k": 0.62}
    published["ICC3k"] = 0.91
    for form, value in published.items():
        assert icc(table2[:, :, None], form=form)[0] == pytest.approx(value, abs=0.005)


def test_icc_two_readers_by_hand():
    # Three cases, two readers: (1, 2), (2, 3), (3, 5). Grand mean 8/3.
    # Case means 1.5, 2.5, 4   -> SSR = 2 * (49 + 1 + 64) / 36 = 19/3, MSR = 19/6.
    # Reader means 2, 10/3     -> SSC = 3 * (4/9 + 4/9) = 8/3,         MSC = 8/3.
    # SST = (25 + 4 + 1 + 4 + 1 + 49) / 9 = 28/3 -> SSE = 1/3, MSE = 1/6 (df 2).
    # MSW = (SSC + SSE) / (n (k - 1)) = 3/3 = 1.
    # ICC1 = (19/6 - 1) / (19/6 + 1) = 13/25; ICC2 = 3 / (20/6 + 2 (8/3 - 1/6) / 3) = 3/5;
    # ICC3 = 3 / (20/6) = 9/10; ICC1k = 13/19; ICC2k = 3 / (19/6 + 5/6) = 3/4; ICC3k = 18/19.
    ref, rep = np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 5.0])
    by_hand = {
        "ICC1": 13 / 25,
        "ICC2": 3 / 5,
        "ICC3": 9 / 10,
        "ICC1k": 13 / 19,
        "ICC2k": 3 / 4,
        "ICC3k": 18 / 19,
    }
    for form, value in by_hand.items():
        assert icc(ref, rep, form) == pytest.approx([value], abs=1e-12)


def test_icc_constant_feature_is_nan_and_affine_invariant():
    ratings = _repeat_ratings(n=30, k=2, seed=7)
    ref, rep = ratings[:, 0].copy(), ratings[:, 1].copy()
    ref[:, 2] = rep[:, 2] = 4.2
    values = icc(ref, rep)
    assert np.isnan(values[2]) and np.isfinite(values[[0, 1, 3]]).all()
    # Standardising upstream of the filter must not change which features pass.
    scale, shift = np.array([10.0, 0.1, 1.0, -3.0]), np.array([5.0, -2.0, 0.0, 1.0])
    np.testing.assert_allclose(icc(ref * scale + shift, rep * scale + shift), values, atol=1e-12)


def test_icc_rejects_bad_input():
    a = np.ones((5, 3))
    with pytest.raises(ValueError, match="same shape"):
        icc(a, np.ones((4, 3)))
    with pytest.raises(ValueError, match="form must be"):
        icc(a, a, "ICC(2,1)")
    with pytest.raises(ValueError, match="3-D"):
        icc(a)
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        icc(bad, a)


# --------------------------------------------------------------------------------------
# ICCFilter
# --------------------------------------------------------------------------------------


def _icc_data(n_cases: int = 60, n_repeat: int = 30, seed: int = 0):
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


def test_icc_filter_keeps_reproducible_features_in_every_set():
    X, y, pairs = _icc_data()
    sel = ICCFilter().fit(X, y, pairs=pairs)
    assert sel.icc_.shape == (3, 2)
    assert list(sel.icc_.columns) == ["inter", "intra"]
    assert list(sel.icc_.index) == ["stable", "noisy", "inter_only"]
    assert sel.icc_.loc["inter_only", "inter"] > 0.75 > sel.icc_.loc["inter_only", "intra"]
    assert sel.get_support().tolist() == [True, False, False]
    assert sel.get_feature_names_out().tolist() == ["stable"]
    np.testing.assert_array_equal(sel.transform(X), X[["stable"]].to_numpy())
    # Only the inter-reader set: the feature stable between readers passes too.
    inter_only = ICCFilter().fit(X, y, pairs={"inter": pairs["inter"]})
    assert inter_only.get_feature_names_out().tolist() == ["stable", "inter_only"]


def test_icc_filter_aligns_pairs_by_column_and_case():
    X, y, pairs = _icc_data()
    expected = ICCFilter().fit(X, y, pairs=pairs).icc_
    r1, r2 = pairs["inter"]
    shuffled = r2.sample(frac=1.0, random_state=1)[["noisy", "inter_only", "stable"]]
    shuffled = shuffled.assign(case_site="A")  # extra columns are ignored
    got = ICCFilter().fit(X, y, pairs={"inter": (r1, shuffled), "intra": pairs["intra"]}).icc_
    pd.testing.assert_frame_equal(got, expected)
    # Arrays pair rows by position and columns by order.
    arrays = {k: tuple(m.to_numpy() for m in v) for k, v in pairs.items()}
    pd.testing.assert_frame_equal(
        ICCFilter().fit(X.to_numpy(), y, pairs=arrays).icc_.reset_index(drop=True),
        expected.reset_index(drop=True),
    )
    with pytest.raises(ValueError, match="other cases"):
        ICCFilter().fit(X, y, pairs={"inter": (r1, r2.set_axis(r2.index + 1000))})
    with pytest.raises(ValueError, match="lacks 1 of X's columns"):
        ICCFilter().fit(X, y, pairs={"inter": (r1, r2.drop(columns="noisy"))})
    with pytest.raises(ValueError, match="rows must be paired"):
        ICCFilter().fit(X.to_numpy(), y, pairs={"inter": (r1.to_numpy(), r2.to_numpy()[:-1])})


def test_icc_filter_needs_pairs_and_a_surviving_feature():
    X, y, pairs = _icc_data()
    for missing in (None, {}):
        with pytest.raises(ValueError, match="ICCFilter needs repeat measurements"):
            ICCFilter().fit(X, y, pairs=missing)
    with pytest.raises(ValueError, match=r"no feature reaches ICC2 >= 0\.999.*'stable'"):
        ICCFilter(threshold=0.999).fit(X, y, pairs=pairs)
    with pytest.raises(ValueError, match="threshold"):
        ICCFilter(threshold=1.5).fit(X, y, pairs=pairs)


def test_icc_filter_in_pipeline_with_step_prefixed_and_routed_pairs():
    X, y, pairs = _icc_data()
    pipe = Pipeline([("icc", ICCFilter()), ("model", LogisticRegression())])
    pipe.fit(X, y, icc__pairs=pairs)
    assert pipe[:-1].get_feature_names_out().tolist() == ["stable"]
    assert pipe["model"].coef_.shape == (1, 1)
    with sklearn.config_context(enable_metadata_routing=True):
        routed = Pipeline(
            [("icc", ICCFilter().set_fit_request(pairs=True)), ("model", LogisticRegression())]
        )
        routed.fit(X, y, pairs=pairs)
        assert routed[:-1].get_feature_names_out().tolist() == ["stable"]


# --------------------------------------------------------------------------------------
# PearsonFilter
# --------------------------------------------------------------------------------------


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
# LassoSelector
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# the estimator contract
# --------------------------------------------------------------------------------------


class _SelfRepeatedICCFilter(ICCFilter):
    """ICCFilter that fabricates its repeats from X, so that check_estimator can fit it."""

    def fit(self, X, y=None):
        ref = check_array(X, dtype=np.float64)
        rep = ref + 1e-3 * np.random.default_rng(0).standard_normal(ref.shape)
        return super().fit(X, y, pairs={"repeat": (ref, rep)})


def _binary(y):
    if y is None:
        return y
    y = np.asarray(y)
    return y if y.size == 0 else (y != np.unique(y)[0]).astype(int)


class _BinarisedPearsonFilter(PearsonFilter):
    """check_estimator feeds 3-class targets; the outcome here is binary by design."""

    def fit(self, X, y):
        return super().fit(X, _binary(y))


class _BinarisedLassoSelector(LassoSelector):
    """check_estimator feeds 3-class targets; the outcome here is binary by design."""

    def fit(self, X, y):
        return super().fit(X, _binary(y))


@pytest.mark.parametrize(
    "estimator",
    [_SelfRepeatedICCFilter(), _BinarisedPearsonFilter(), _BinarisedLassoSelector(cv=3, Cs=5)],
    ids=["ICCFilter", "PearsonFilter", "LassoSelector"],
)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_check_estimator(estimator):
    # Every sklearn check, run on thin subclasses: ICCFilter needs pairs in fit and the
    # other two a binary y, which check_estimator does not provide. Those inherent
    # differences are tested directly above.
    # on_skip=None: the one skipped check is the array-API one, which needs SCIPY_ARRAY_API.
    check_estimator(estimator, on_skip=None)


@pytest.mark.parametrize(
    "estimator", [ICCFilter(threshold=0.6), PearsonFilter(threshold=0.8), LassoSelector(cv=4)]
)
def test_params_round_trip_and_clone(estimator):
    params = estimator.get_params()
    twin = clone(estimator)
    assert twin is not estimator and twin.get_params() == params
    changed = {key: value for key, value in params.items() if key in ("threshold", "cv")}
    changed = {key: (0.5 if key == "threshold" else 3) for key in changed}
    twin.set_params(**changed)
    assert twin.get_params() == {**params, **changed}
    assert estimator.get_params() == params


def test_fit_returns_self_and_set_output_keeps_names():
    X, y, pairs = _icc_data()
    for est, kwargs in [(ICCFilter(), {"pairs": pairs}), (PearsonFilter(), {})]:
        assert est.fit(X, y, **kwargs) is est
        out = est.set_output(transform="pandas").transform(X)
        assert isinstance(out, pd.DataFrame)
        assert list(out.columns) == list(est.get_feature_names_out())
        assert out.index.equals(X.index)


# --------------------------------------------------------------------------------------
# the whole chain
# --------------------------------------------------------------------------------------


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
