"""Validation metrics (tasks.evaluation.metrics), each checked against an independent reference.

References used here, none of them the code under test:
- hand computations on tiny cases (written out in comments, exact fractions);
- pROC's own test suite (xrobin/pROC, tests/testthat/test-var.R, test-ci.auc.R,
  test-roc.test.R) on its ``aSAH`` data: DeLong variances, CI and paired tests;
- scikit-learn (roc_auc_score, roc_curve, brier_score_loss, calibration_curve),
  statsmodels (proportion_confint, binomial GLM), brute-force O(n_pos n_neg) DeLong
  and large bootstraps computed in the test;
- dcurves 1.1.7 net-benefit numbers, hard-coded (how they were produced is noted there).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve
from statsmodels.stats.proportion import proportion_confint

from tasks.evaluation import metrics

# ---------------------------------------------------------------------------------------
# pROC's aSAH data (Turck N, et al. Intensive Care Med. 2010;36:107-115), as shipped with
# the R package pROC (data(aSAH)), in its row order: outcome (P = Poor = 1, G = Good = 0),
# wfns (1-5, used as a number), s100b, ndka. 113 patients, 41 poor outcomes. That these
# columns are transcribed right is itself checked: they reproduce nine pROC test-suite
# numbers to 1e-10 below.
# ---------------------------------------------------------------------------------------
ASAH_OUTCOME = (
    "GGGGPPGPGGPGPPGGPGPPPGPGGGGGGGGGPGGPPGPPGGGGGGGGGPPGGGPGGGPGPGGPPPGPPGPPPPGGGPPGPGGG"
    "GGGPGGGGGGGGGGGGPPPPPPGGGPGGG"
)
ASAH_WFNS = (
    "1 1 1 1 3 2 5 4 1 2 5 2 5 5 1 2 5 2 2 5 2 1 1 1 1 2 1 2 1 1 3 4 2 1 4 5 4 1 4 2 5 5 1 1 2 "
    "4 1 1 2 5 5 2 1 2 5 1 2 2 2 1 5 1 1 2 5 2 1 4 5 2 4 4 1 4 1 2 1 4 2 1 2 3 2 4 2 1 4 5 1 1 "
    "5 4 2 2 1 1 1 3 1 2 5 2 2 5 5 5 2 4 4 5 1 1 1"
)
ASAH_S100B = (
    "0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04 "
    "0.07 0.33 0.09 0.09 0.07 0.11 0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 "
    "0.35 0.48 0.09 0.96 0.25 0.5 0.46 0.16 0.07 0.43 0.45 0.11 0.08 0.09 0.86 0.52 0.08 "
    "0.06 0.13 2.07 0.1 0.14 0.15 0.07 0.06 0.77 0.05 0.09 0.3 0.03 0.09 0.04 0.23 0.7 0.09 "
    "0.27 0.71 0.08 0.26 0.08 0.16 0.09 0.13 0.1 0.08 0.11 0.33 0.11 0.28 0.07 0.1 0.32 "
    "0.22 0.07 0.05 0.24 0.38 0.1 0.15 0.08 0.14 0.1 0.07 0.04 0.19 0.56 0.14 0.58 0.32 "
    "0.82 0.74 0.15 0.47 0.17 0.44 0.15 0.5 0.48"
)
ASAH_NDKA = (
    "3.01 8.54 8.09 10.42 17.4 12.75 6.0 13.2 15.54 6.01 15.96 17.86 5.18 8.9 13.41 20.75 "
    "11.6 16.11 32.37 54.82 32.41 49.94 40.34 9.47 6.29 12.53 6.54 6.3 80.3 12.8 9.8 9.81 "
    "9.85 18.21 5.03 14.04 21.93 8.02 7.42 8.38 6.59 9.63 13.12 7.96 14.34 41.43 7.63 7.06 "
    "12.59 13.56 3.87 9.44 7.66 12.98 419.19 27.19 22.27 9.95 21.22 11.73 10.4 58.83 6.39 "
    "11.09 12.22 13.67 17.21 22.63 12.9 9.7 21.57 8.23 72.57 15.54 10.51 10.6 14.57 5.19 "
    "9.63 4.61 21.48 17.3 12.71 9.44 11.07 19.46 10.83 5.37 11.97 7.75 9.83 10.55 28.49 "
    "8.53 12.57 12.9 46.83 11.68 12.67 9.01 9.57 34.06 11.72 14.26 47.61 11.67 24.58 10.33 "
    "13.87 15.89 22.43 6.79 13.45"
)


@pytest.fixture(scope="module")
def asah() -> dict[str, np.ndarray]:
    data = {
        "y": np.array([c == "P" for c in ASAH_OUTCOME], dtype=int),
        "wfns": np.array(ASAH_WFNS.split(), dtype=float),
        "s100b": np.array(ASAH_S100B.split(), dtype=float),
        "ndka": np.array(ASAH_NDKA.split(), dtype=float),
    }
    assert {len(v) for v in data.values()} == {113}
    assert data["y"].sum() == 41
    return data


def _simulated(seed: int, n_pos: int = 60, n_neg: int = 90, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    latent = rng.normal(size=y.size) + shift * y
    # rounding makes ties, which the midrank algorithm must count one half
    return y, np.round(latent, 1), latent, rng


def _psi_kernel_components(y, score):
    """Brute-force structural components from the psi kernel, O(n_pos * n_neg)."""
    pos, neg = score[y == 1], score[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def _rank_auc(y_rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of every row (rows share the label vector y_rows)."""
    m = int(y_rows.sum())
    n = y_rows.size - m
    ranks = stats.rankdata(scores, axis=1)
    return (ranks[:, y_rows == 1].sum(axis=1) - m * (m + 1) / 2) / (m * n)


# ---------------------------------------------------------------------------------------
# DeLong
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_auc_equals_sklearn(seed):
    y, tied, continuous, _ = _simulated(seed)
    for score in (tied, continuous):
        auc, var = metrics.delong_roc_variance(y, score)
        assert auc == pytest.approx(roc_auc_score(y, score), abs=1e-14)
        assert var > 0


def test_delong_hand_case_exact():
    # Positives X = (0.8, 0.6, 0.4), negatives Y = (0.6, 0.3, 0.2); psi(x, y) = 1 if x > y,
    # 1/2 if x == y, else 0.
    # V10(0.8) = (1 + 1 + 1)/3 = 1;  V10(0.6) = (1/2 + 1 + 1)/3 = 5/6;
    # V10(0.4) = (0 + 1 + 1)/3 = 2/3.  AUC = mean V10 = (6 + 5 + 4)/18 = 5/6.
    # V01(0.6) = (1 + 1/2 + 0)/3 = 1/2;  V01(0.3) = V01(0.2) = 1.  mean = 5/6 as well.
    # S10 = var(1, 5/6, 2/3; ddof=1) = ((1/6)^2 + 0 + (1/6)^2)/2 = 1/36
    # S01 = var(1/2, 1, 1; ddof=1) = ((1/3)^2 + (1/6)^2 + (1/6)^2)/2 = 1/12
    # Var = S10/3 + S01/3 = 1/108 + 3/108 = 1/27.
    y = np.array([1, 1, 1, 0, 0, 0])
    score = np.array([0.8, 0.6, 0.4, 0.6, 0.3, 0.2])
    v10, v01 = metrics.delong_components(y, score)
    assert v10.tolist() == pytest.approx([1, 5 / 6, 2 / 3], abs=1e-15)
    assert v01.tolist() == pytest.approx([1 / 2, 1, 1], abs=1e-15)
    auc, var = metrics.delong_roc_variance(y, score)
    assert Fraction(auc).limit_denominator(1000) == Fraction(5, 6)
    assert Fraction(var).limit_denominator(1000) == Fraction(1, 27)
    assert auc == pytest.approx(5 / 6, abs=1e-15)
    assert var == pytest.approx(1 / 27, abs=1e-15)


def test_delong_components_match_brute_force():
    y, tied, _, _ = _simulated(7, n_pos=25, n_neg=31)
    v10, v01 = metrics.delong_components(y, tied)
    b10, b01 = _psi_kernel_components(y, tied)
    np.testing.assert_allclose(v10, b10, atol=1e-13)
    np.testing.assert_allclose(v01, b01, atol=1e-13)


def test_delong_matches_proc_on_asah(asah):
    # pROC tests/testthat/test-var.R: var(r.wfns), var(r.ndka), var(r.s100b) (DeLong).
    y = asah["y"]
    for name, var in (
        ("wfns", 0.00146991470882363),
        ("ndka", 0.0031908105493913),
        ("s100b", 0.00266868245717244),
    ):
        assert metrics.delong_roc_variance(y, asah[name])[1] == pytest.approx(var, rel=1e-10)
    # test-ci.auc.R: ci.auc(r.ndka) = (0.501244999271703, 0.611957994579946,
    # 0.722670989888189); pROC's printed s100b CI "0.7314 (0.6301-0.8326)".
    auc, lo, hi = metrics.auc_ci(y, asah["ndka"])
    assert [lo, auc, hi] == pytest.approx(
        [0.501244999271703, 0.611957994579946, 0.722670989888189], rel=1e-10
    )
    assert [round(v, 4) for v in metrics.auc_ci(y, asah["s100b"])] == [0.7314, 0.6301, 0.8326]


# pROC tests/testthat/test-roc.test.R: roc.test(r.wfns, r.s100b), roc.test(r.wfns, r.ndka),
# roc.test(r.ndka, r.s100b): DeLong, paired, two-sided; statistic Z, p.value, conf.int.
PROC_ROC_TESTS = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    (
        "ndka",
        "s100b",
        -1.39077002573558,
        0.164295175223054,
        -0.2876917446341914,
        0.0488706064228094,
    ),
]


@pytest.mark.parametrize("a, b, z, p, lo, hi", PROC_ROC_TESTS)
def test_delong_test_matches_proc_on_asah(asah, a, b, z, p, lo, hi):
    y = asah["y"]
    res = metrics.delong_test(y, asah[a], asah[b])
    assert res["z"] == pytest.approx(z, rel=1e-10)
    assert res["p"] == pytest.approx(p, rel=1e-10)
    assert res["diff_ci"] == pytest.approx([lo, hi], rel=1e-10)
    assert res["diff"] == pytest.approx(res["auc_a"] - res["auc_b"], abs=1e-15)
    swapped = metrics.delong_test(y, asah[b], asah[a])
    assert swapped["z"] == pytest.approx(-z, rel=1e-10)
    assert swapped["p"] == pytest.approx(p, rel=1e-10)


def test_delong_variance_close_to_stratified_bootstrap():
    y, tied, _, rng = _simulated(11)
    _, var = metrics.delong_roc_variance(y, tied)
    pos, neg = tied[y == 1], tied[y == 0]
    b = 4000
    boot = np.hstack(
        [
            pos[rng.integers(0, pos.size, (b, pos.size))],
            neg[rng.integers(0, neg.size, (b, neg.size))],
        ]
    )
    boot_var = _rank_auc(y, boot).var(ddof=1)
    # DeLong targets the variance of the AUC with n_pos and n_neg fixed, as the stratified
    # bootstrap resamples; 4000 resamples leave ~2% Monte Carlo error on a variance.
    assert var == pytest.approx(boot_var, rel=0.15)


def test_delong_test_identical_scores():
    y, tied, _, _ = _simulated(3)
    res = metrics.delong_test(y, tied, tied)
    assert res["diff"] == 0.0 and res["z"] == 0.0 and res["p"] == 1.0
    assert res["auc_a"] == res["auc_b"] == pytest.approx(roc_auc_score(y, tied))
    # A monotone transform keeps every rank, hence every structural component.
    res = metrics.delong_test(y, tied, expit(3 * tied))
    assert res["diff"] == 0.0 and res["z"] == 0.0 and res["p"] == 1.0


def test_delong_test_strongly_different_models():
    y, _, informative, rng = _simulated(4, shift=2.0)
    noise = rng.normal(size=y.size)
    res = metrics.delong_test(y, informative, noise)
    assert res["auc_a"] > 0.85 and abs(res["auc_b"] - 0.5) < 0.15
    assert res["z"] > 5 and res["p"] < 1e-6


def test_delong_test_z_from_brute_force_covariance():
    y, _, a, rng = _simulated(5, n_pos=30, n_neg=40)
    b = 0.5 * a + rng.normal(size=y.size)
    comps = [_psi_kernel_components(y, s) for s in (a, b)]
    s10 = np.cov([comps[0][0], comps[1][0]])
    s01 = np.cov([comps[0][1], comps[1][1]])
    cov = s10 / 30 + s01 / 40
    diff = comps[0][0].mean() - comps[1][0].mean()
    z = diff / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    res = metrics.delong_test(y, a, b)
    assert res["diff"] == pytest.approx(diff, abs=1e-14)
    assert res["z"] == pytest.approx(z, rel=1e-12)
    assert res["p"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-12)


def test_delong_test_p_close_to_paired_bootstrap():
    y, _, a, rng = _simulated(8, n_pos=80, n_neg=120, shift=1.0)
    b = 0.6 * a + 0.8 * rng.normal(size=y.size)
    res = metrics.delong_test(y, a, b)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    idx = np.hstack(
        [
            pos[rng.integers(0, pos.size, (4000, pos.size))],
            neg[rng.integers(0, neg.size, (4000, neg.size))],
        ]
    )
    diffs = _rank_auc(y, a[idx]) - _rank_auc(y, b[idx])
    z_boot = res["diff"] / diffs.std(ddof=1)
    p_boot = 2 * stats.norm.sf(abs(z_boot))
    assert res["z"] == pytest.approx(z_boot, rel=0.1)
    assert 0.5 < res["p"] / p_boot < 2


def test_auc_ci_transforms_and_degenerate_sets():
    y, tied, _, _ = _simulated(9)
    auc, lo, hi = metrics.auc_ci(y, tied)
    _, var = metrics.delong_roc_variance(y, tied)
    assert (lo, hi) == pytest.approx(
        (auc - 1.959963984540054 * var**0.5, auc + 1.959963984540054 * var**0.5)
    )
    auc_l, lo_l, hi_l = metrics.auc_ci(y, tied, transform="logit")
    se_logit = var**0.5 / (auc * (1 - auc))
    assert (lo_l, hi_l) == pytest.approx(
        tuple(expit(logit(auc) + np.array([-1, 1]) * 1.959963984540054 * se_logit))
    )
    assert lo_l < auc_l < hi_l and hi_l - auc_l < auc_l - lo_l  # pulled away from 1
    # Perfect separation: variance 0, interval collapses (no clipping artefact above 1).
    assert metrics.auc_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0, 1.0)
    # Near-perfect small set: the Wald interval is clipped at 1.
    _, _, hi_small = metrics.auc_ci([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.6, 0.8, 0.9])
    assert hi_small == 1.0
    # One case in a class: AUC defined, DeLong variance not.
    auc1, lo1, hi1 = metrics.auc_ci([0, 0, 1], [0.1, 0.5, 0.3])
    assert auc1 == 0.5 and math.isnan(lo1) and math.isnan(hi1)
    # Single class: nothing defined, no exception.
    assert all(math.isnan(v) for v in metrics.auc_ci([1, 1, 1], [0.1, 0.5, 0.3]))
    assert math.isnan(metrics.delong_test([1, 1], [0.1, 0.2], [0.3, 0.4])["p"])
    with pytest.raises(ValueError):
        metrics.delong_roc_variance([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        metrics.delong_roc_variance([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError):
        metrics.auc_ci(y, tied, transform="probit")


# ---------------------------------------------------------------------------------------
# Wilson
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
def test_wilson_matches_statsmodels(alpha):
    counts = [(0, 1), (1, 1), (0, 7), (7, 7), (3, 7), (1, 20), (19, 20), (50, 105), (0, 450)]
    for x, n in counts:
        lo, hi = metrics.wilson_ci(x, n, alpha)
        ref_lo, ref_hi = proportion_confint(x, n, alpha=alpha, method="wilson")
        assert lo == pytest.approx(ref_lo, abs=1e-12)
        assert hi == pytest.approx(ref_hi, abs=1e-12)
    xs, ns = np.array(counts).T
    lo, hi = metrics.wilson_ci(xs, ns, alpha)
    ref_lo, ref_hi = proportion_confint(xs, ns, alpha=alpha, method="wilson")
    np.testing.assert_allclose(lo, ref_lo, atol=1e-12)
    np.testing.assert_allclose(hi, ref_hi, atol=1e-12)


def test_wilson_edges():
    lo, hi = metrics.wilson_ci(0, 10)
    assert lo == 0.0 and 0 < hi < 1
    lo, hi = metrics.wilson_ci(10, 10)
    assert hi == 1.0 and 0 < lo < 1
    lo, hi = metrics.wilson_ci(0, 0)
    assert math.isnan(lo) and math.isnan(hi)
    lo, hi = metrics.wilson_ci(np.array([0, 1]), np.array([0, 2]))
    assert math.isnan(lo[0]) and lo[1] > 0
    assert isinstance(metrics.wilson_ci(3, 7)[0], float)
    with pytest.raises(ValueError):
        metrics.wilson_ci(5, 4)


# ---------------------------------------------------------------------------------------
# Youden threshold and classification metrics
# ---------------------------------------------------------------------------------------
def test_youden_hand_case_with_tie():
    # Positive if score >= t. Sorted down: 0.8(+) 0.6(+) 0.4(-) 0.3(+) 0.2(-) 0.1(-),
    # 3 positives, 3 negatives. J(t) = tp/3 - fp/3:
    # t=0.8: 1/3; t=0.6: 2/3; t=0.4: 1/3; t=0.3: 3/3 - 1/3 = 2/3; t=0.2: 1/3; t=0.1: 0.
    # Maximum 2/3 at 0.6 and 0.3: the tie goes to the lowest threshold, 0.3.
    y = [0, 0, 1, 0, 1, 1]
    score = [0.1, 0.2, 0.3, 0.4, 0.6, 0.8]
    assert metrics.youden_threshold(y, score) == 0.3
    # Flip the case at 0.3 to negative: 0.6 is then the unique maximum (J = 1).
    assert metrics.youden_threshold([0, 0, 0, 0, 1, 1], score) == 0.6
    with pytest.raises(ValueError):
        metrics.youden_threshold([1, 1, 1], [0.1, 0.2, 0.3])


def test_youden_matches_sklearn_roc_curve_and_proc(asah):
    y, s = asah["y"], asah["s100b"]
    t = metrics.youden_threshold(y, s)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    best = thr[np.isclose(j, j.max(), atol=1e-12, rtol=0)].min()
    assert t == best
    # pROC coords(roc(aSAH$outcome, aSAH$s100b), "best") gives threshold 0.205 (the
    # midpoint between the observed 0.19 and 0.22), specificity 0.8055556, sensitivity
    # 0.6341463: the same partition as our observed-score threshold.
    assert t == 0.22 and 0.19 < 0.205 <= t
    res = metrics.classification_metrics(y, s, t)
    assert res["specificity"] == pytest.approx(0.8055556, abs=1e-7)
    assert res["sensitivity"] == pytest.approx(0.6341463, abs=1e-7)


def test_classification_metrics_hand_case():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    score = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.5]
    # threshold 0.75: called positive 0.9(+), 0.8(+) -> tp 2, fp 0;
    # called negative 0.3(+), 0.5(+) -> fn 2; 0.7, 0.2, 0.1, 0.4 (-) -> tn 4.
    res = metrics.classification_metrics(y, score, 0.75)
    assert (res["n"], res["tp"], res["fp"], res["tn"], res["fn"]) == (8, 2, 0, 4, 2)
    assert res["accuracy"] == 6 / 8
    assert res["sensitivity"] == 2 / 4
    assert res["specificity"] == 4 / 4
    assert res["ppv"] == 2 / 2
    assert res["npv"] == 4 / 6
    assert res["npv_ci"] == pytest.approx(
        list(proportion_confint(4, 6, method="wilson")), abs=1e-12
    )
    assert res["auc"] == pytest.approx(roc_auc_score(y, score))
    # ">=": at threshold 0.5 the case scored exactly 0.5 is called positive.
    assert metrics.classification_metrics(y, score, 0.5)["tp"] == 3


def test_classification_metrics_undefined_values_are_nan():
    y = [1, 0, 1, 0]
    score = [0.2, 0.1, 0.3, 0.4]
    res = metrics.classification_metrics(y, score, 0.9)  # nothing called positive
    assert res["tp"] == res["fp"] == 0
    assert math.isnan(res["ppv"]) and all(math.isnan(v) for v in res["ppv_ci"])
    assert res["sensitivity"] == 0.0 and res["npv"] == 0.5
    single = metrics.classification_metrics([0, 0, 0], [0.2, 0.6, 0.9], 0.5)
    assert math.isnan(single["auc"]) and all(math.isnan(v) for v in single["auc_ci"])
    assert math.isnan(single["sensitivity"]) and single["specificity"] == 1 / 3
    empty = metrics.classification_metrics([], [], 0.5)
    assert empty["n"] == 0 and math.isnan(empty["accuracy"]) and math.isnan(empty["auc"])


def test_model_set_metrics_report_shape():
    y, _, latent, _ = _simulated(12)
    prob = expit(latent - 0.5)
    res = metrics.model_set_metrics(y, prob, 0.4)
    for key in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "brier"):
        assert type(res[key]) is float
    assert type(res["n"]) is int and res["n"] == y.size
    assert isinstance(res["auc_ci"], list) and len(res["auc_ci"]) == 2
    assert all(type(v) is float for v in res["auc_ci"])
    assert res["brier"] == pytest.approx(brier_score_loss(y, prob), abs=1e-15)
    assert json.loads(json.dumps(res))["n"] == y.size
    single = metrics.model_set_metrics([1, 1], [0.3, 0.9], 0.5)
    json.dumps(single)  # NaN is allowed by json.dumps
    assert math.isnan(single["auc"])


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------
def _calibration_sample(seed: int, n: int, spread: float = 1.0, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    true_lp = rng.normal(-0.4, 1.3, n)
    y = rng.binomial(1, expit(true_lp))
    prob = expit(shift + spread * true_lp)  # spread > 1: over-confident predictions
    return y, prob


def test_calibration_matches_statsmodels_glm():
    y, prob = _calibration_sample(0, 800, spread=1.4, shift=0.3)
    res = metrics.calibration(y, prob)
    lp = np.log(prob / (1 - prob))
    glm_int = sm.GLM(y, np.ones((y.size, 1)), family=sm.families.Binomial(), offset=lp).fit()
    glm_slope = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    assert res["intercept"] == pytest.approx(glm_int.params[0], abs=1e-9)
    assert res["slope"] == pytest.approx(glm_slope.params[1], abs=1e-9)
    assert res["brier"] == pytest.approx(brier_score_loss(y, prob), abs=1e-15)
    assert res["n"] == y.size


def test_calibration_perfect_and_overconfident():
    y, prob = _calibration_sample(1, 20000)
    perfect = metrics.calibration(y, prob)
    assert perfect["slope"] == pytest.approx(1.0, abs=0.05)
    assert perfect["intercept"] == pytest.approx(0.0, abs=0.05)
    over = metrics.calibration(y, expit(2.0 * logit(prob)))
    assert over["slope"] == pytest.approx(0.5, abs=0.03)
    under = metrics.calibration(y, expit(0.5 * logit(prob)))
    assert under["slope"] == pytest.approx(2.0, abs=0.1)


def test_reliability_curve_matches_sklearn():
    y, prob = _calibration_sample(2, 500, spread=1.2)
    rel = metrics.calibration(y, prob, n_bins=10)["reliability"]
    prob_true, prob_pred = calibration_curve(y, prob, n_bins=10, strategy="quantile")
    np.testing.assert_allclose(rel["observed_fraction"], prob_true, atol=1e-12)
    np.testing.assert_allclose(rel["mean_predicted"], prob_pred, atol=1e-12)
    assert rel["count"].sum() == y.size and list(rel.columns) == [
        "bin",
        "mean_predicted",
        "observed_fraction",
        "count",
    ]
    # Heavy ties: tied quantile edges leave empty bins, which are dropped (as sklearn).
    tied = np.repeat([0.2, 0.5, 0.8], [50, 30, 20])
    y_tied = (np.arange(100) % 3 == 0).astype(int)
    rel_tied = metrics.calibration(y_tied, tied, n_bins=10)["reliability"]
    ref_true, ref_pred = calibration_curve(y_tied, tied, n_bins=10, strategy="quantile")
    np.testing.assert_allclose(rel_tied["observed_fraction"], ref_true, atol=1e-12)
    np.testing.assert_allclose(rel_tied["mean_predicted"], ref_pred, atol=1e-12)


def test_calibration_undefined_fits_are_nan():
    single = metrics.calibration([1, 1, 1], [0.2, 0.5, 0.7])
    assert math.isnan(single["intercept"]) and math.isnan(single["slope"])
    # Outcome perfectly separated by logit(p): the slope MLE does not exist.
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sep = metrics.calibration([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    assert math.isnan(sep["slope"]) and math.isfinite(sep["intercept"])
    with pytest.raises(ValueError):
        metrics.calibration([0, 1], [0.2, 1.2])


# ---------------------------------------------------------------------------------------
# Decision curve
# ---------------------------------------------------------------------------------------
def test_decision_curve_hand_case():
    # n = 6, 3 events (prevalence 1/2).
    y = [1, 1, 0, 0, 1, 0]
    prob = [0.9, 0.6, 0.55, 0.3, 0.2, 0.1]
    dc = metrics.decision_curve(y, prob, thresholds=[0.25, 0.5, 0.6])
    assert list(dc.columns) == [
        "threshold",
        "net_benefit_model",
        "net_benefit_all",
        "net_benefit_none",
    ]
    # pt = 0.25 (odds 1/3): treated 0.9+, 0.6+, 0.55-, 0.3-: TP 2, FP 2;
    #   NB = 2/6 - 2/6 * 1/3 = 2/9; all: 1/2 - 1/2 * 1/3 = 1/3.
    # pt = 0.5 (odds 1): treated 0.9+, 0.6+, 0.55-: NB = 2/6 - 1/6 = 1/6; all: 0.
    # pt = 0.6 (odds 3/2): treated 0.9+, 0.6+ (prob >= pt): NB = 2/6; all: 1/2 - 3/4 = -1/4.
    np.testing.assert_allclose(dc["net_benefit_model"], [2 / 9, 1 / 6, 1 / 3], atol=1e-15)
    np.testing.assert_allclose(dc["net_benefit_all"], [1 / 3, 0.0, -1 / 4], atol=1e-15)
    assert (dc["net_benefit_none"] == 0).all()


def test_decision_curve_treat_all_formula_and_default_grid():
    y, prob = _calibration_sample(3, 300)
    dc = metrics.decision_curve(y, prob)
    assert len(dc) == 98 and dc["threshold"].iloc[0] == 0.01
    prev = y.mean()
    pt = dc["threshold"].to_numpy()
    np.testing.assert_allclose(dc["net_benefit_all"], prev - (1 - prev) * pt / (1 - pt))
    # Treat-all is the model that treats everyone, treat-none the one that treats nobody.
    everyone = metrics.decision_curve(y, np.ones_like(prob), thresholds=pt)
    np.testing.assert_allclose(everyone["net_benefit_model"], dc["net_benefit_all"], atol=1e-15)
    nobody = metrics.decision_curve(y, np.zeros_like(prob), thresholds=pt)
    assert (nobody["net_benefit_model"] == 0).all()
    with pytest.raises(ValueError):
        metrics.decision_curve(y, prob, thresholds=[0.0, 0.5])


def test_decision_curve_matches_dcurves(asah):
    # Reference produced once, outside the project venv, with dcurves 1.1.7
    # (pip install dcurves into /tmp; pandas 2.3.3, numpy 2.4.6):
    #   df = pd.DataFrame({"poor": y, "risk": s100b / 2.1})   # aSAH as above
    #   out = dcurves.dca(data=df, outcome="poor", modelnames=["risk"],
    #                     thresholds=[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4])
    #   out[out.model == m]["net_benefit"] for m in ("risk", "all")
    thresholds = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4]
    nb_model = [
        0.26595249184909175,
        0.21632251720747295,
        0.15825091098386257,
        0.12389380530973451,
        0.09734513274336284,
        0.07964601769911504,
        0.02654867256637168,
    ]
    nb_all = [
        0.32929669306008386,
        0.2920353982300885,
        0.25039042165538783,
        0.20353982300884957,
        0.1504424778761062,
        0.08975979772439946,
        -0.0619469026548673,
    ]
    dc = metrics.decision_curve(asah["y"], asah["s100b"] / 2.1, thresholds=thresholds)
    np.testing.assert_allclose(dc["net_benefit_model"], nb_model, atol=1e-12)
    np.testing.assert_allclose(dc["net_benefit_all"], nb_all, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Population stability index
# ---------------------------------------------------------------------------------------
def test_psi_hand_two_bins():
    # expected 1, 2, 3, 4: median edge 2.5, shares (1/2, 1/2).
    # actual 1, 1, 1, 4: shares (3/4, 1/4).
    # PSI = (3/4 - 1/2) ln(3/2) + (1/4 - 1/2) ln(1/2) = 1/4 ln(3/2) + 1/4 ln 2 = ln(3)/4.
    assert metrics.psi([1, 2, 3, 4], [1, 1, 1, 4], bins=2) == pytest.approx(math.log(3) / 4)
    # An empty bin gets eps = 1e-4: actual all below the edge, shares (1, 1e-4).
    expected = 0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert metrics.psi([1, 2, 3, 4], [1, 1, 1, 1], bins=2) == pytest.approx(expected)
    # Values beyond the training range fall in the open outer bins.
    assert metrics.psi([1, 2, 3, 4], [-10, 0, 5, 50], bins=2) == pytest.approx(0.0)


def test_psi_stable_and_shifted():
    rng = np.random.default_rng(0)
    train = rng.normal(size=5000)
    assert metrics.psi(train, train) == 0.0
    assert metrics.psi(train, rng.normal(size=5000)) < 0.02
    assert metrics.psi(train, rng.normal(1.0, 1.0, 5000)) > 0.25
    assert 0.1 > metrics.psi(train, rng.normal(0.1, 1.0, 5000))


def test_psi_table_matches_psi_per_column():
    rng = np.random.default_rng(1)
    train = pd.DataFrame(
        {
            "stable": rng.normal(size=400),
            "shifted": rng.normal(size=400),
            "discrete": rng.integers(0, 3, 400).astype(float),
            "constant": np.ones(400),
        }
    )
    other = pd.DataFrame(
        {
            "constant": np.r_[np.ones(150), np.full(50, 2.0)],
            "stable": rng.normal(size=200),
            "shifted": rng.normal(1.5, 1.0, 200),
            "discrete": rng.integers(0, 3, 200).astype(float),
            "extra": np.zeros(200),
        }
    )
    other.loc[:9, "stable"] = np.nan  # missing values are ignored
    table = metrics.psi_table(train, other)
    assert list(table.index) == list(train.columns)
    for col in train.columns:
        ref = metrics.psi(train[col].to_numpy(), other[col].dropna().to_numpy())
        assert table[col] == pytest.approx(ref, abs=1e-12)
    assert table["stable"] < 0.1 < 0.25 < table["shifted"]
    assert table["constant"] > 0.25  # a quarter of values above the constant's only bin
    with pytest.raises(ValueError):
        metrics.psi_table(other, train)
