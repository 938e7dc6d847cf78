"""Tests for tasks.models.selection.icc: the ICC itself and ICCFilter as an sklearn step."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.utils import check_array
from sklearn.utils.estimator_checks import check_estimator

from tasks.models.selection import ICC_FORMS, ICCFilter, icc
from tests.tasks.models.selection.helpers import (
    assert_fit_returns_self_and_set_output_keeps_names,
    assert_params_round_trip_and_clone,
    icc_data,
)

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


def test_icc_filter_keeps_reproducible_features_in_every_set():
    X, y, pairs = icc_data()
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
    X, y, pairs = icc_data()
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
    X, y, pairs = icc_data()
    for missing in (None, {}):
        with pytest.raises(ValueError, match="ICCFilter needs repeat measurements"):
            ICCFilter().fit(X, y, pairs=missing)
    with pytest.raises(ValueError, match=r"no feature reaches ICC2 >= 0\.999.*'stable'"):
        ICCFilter(threshold=0.999).fit(X, y, pairs=pairs)
    with pytest.raises(ValueError, match="threshold"):
        ICCFilter(threshold=1.5).fit(X, y, pairs=pairs)


def test_icc_filter_in_pipeline_with_step_prefixed_and_routed_pairs():
    X, y, pairs = icc_data()
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
# the estimator contract
# --------------------------------------------------------------------------------------


class _SelfRepeatedICCFilter(ICCFilter):
    """ICCFilter that fabricates its repeats from X, so that check_estimator can fit it."""

    def fit(self, X, y=None):
        ref = check_array(X, dtype=np.float64)
        rep = ref + 1e-3 * np.random.default_rng(0).standard_normal(ref.shape)
        return super().fit(X, y, pairs={"repeat": (ref, rep)})


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_check_estimator():
    # Every sklearn check, run on a thin subclass: ICCFilter needs pairs in fit, which
    # check_estimator does not provide; that inherent difference is tested directly above.
    # on_skip=None: the one skipped check is the array-API one, which needs SCIPY_ARRAY_API.
    check_estimator(_SelfRepeatedICCFilter(), on_skip=None)


def test_params_round_trip_and_clone():
    assert_params_round_trip_and_clone(ICCFilter(threshold=0.6))


def test_fit_returns_self_and_set_output_keeps_names():
    X, y, pairs = icc_data()
    assert_fit_returns_self_and_set_output_keeps_names(ICCFilter(), X, y, pairs=pairs)
