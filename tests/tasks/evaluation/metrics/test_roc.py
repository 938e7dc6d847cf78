"""Discrimination metrics (tasks.evaluation.metrics.roc) against independent references:
hand computations, pROC's test suite on aSAH, brute-force DeLong, bootstraps, scikit-learn.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from tasks.evaluation.metrics import roc
from tests.tasks.evaluation.metrics.reference import simulated


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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_auc_equals_sklearn(seed):
    y, tied, continuous, _ = simulated(seed)
    for score in (tied, continuous):
        auc, var = roc.delong_roc_variance(y, score)
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
    v10, v01 = roc.delong_components(y, score)
    assert v10.tolist() == pytest.approx([1, 5 / 6, 2 / 3], abs=1e-15)
    assert v01.tolist() == pytest.approx([1 / 2, 1, 1], abs=1e-15)
    auc, var = roc.delong_roc_variance(y, score)
    assert Fraction(auc).limit_denominator(1000) == Fraction(5, 6)
    assert Fraction(var).limit_denominator(1000) == Fraction(1, 27)
    assert auc == pytest.approx(5 / 6, abs=1e-15)
    assert var == pytest.approx(1 / 27, abs=1e-15)


def test_delong_components_match_brute_force():
    y, tied, _, _ = simulated(7, n_pos=25, n_neg=31)
    v10, v01 = roc.delong_components(y, tied)
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
        assert roc.delong_roc_variance(y, asah[name])[1] == pytest.approx(var, rel=1e-10)
    # test-ci.auc.R: ci.auc(r.ndka) = (0.501244999271703, 0.611957994579946,
    # 0.722670989888189); pROC's printed s100b CI "0.7314 (0.6301-0.8326)".
    auc, lo, hi = roc.auc_ci(y, asah["ndka"])
    assert [lo, auc, hi] == pytest.approx(
        [0.501244999271703, 0.611957994579946, 0.722670989888189], rel=1e-10
    )
    assert [round(v, 4) for v in roc.auc_ci(y, asah["s100b"])] == [0.7314, 0.6301, 0.8326]


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
    res = roc.delong_test(y, asah[a], asah[b])
    assert res["z"] == pytest.approx(z, rel=1e-10)
    assert res["p"] == pytest.approx(p, rel=1e-10)
    assert res["diff_ci"] == pytest.approx([lo, hi], rel=1e-10)
    assert res["diff"] == pytest.approx(res["auc_a"] - res["auc_b"], abs=1e-15)
    swapped = roc.delong_test(y, asah[b], asah[a])
    assert swapped["z"] == pytest.approx(-z, rel=1e-10)
    assert swapped["p"] == pytest.approx(p, rel=1e-10)


def test_delong_variance_close_to_stratified_bootstrap():
    y, tied, _, rng = simulated(11)
    _, var = roc.delong_roc_variance(y, tied)
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
    y, tied, _, _ = simulated(3)
    res = roc.delong_test(y, tied, tied)
    assert res["diff"] == 0.0 and res["z"] == 0.0 and res["p"] == 1.0
    assert res["auc_a"] == res["auc_b"] == pytest.approx(roc_auc_score(y, tied))
    # A monotone transform keeps every rank, hence every structural component.
    res = roc.delong_test(y, tied, expit(3 * tied))
    assert res["diff"] == 0.0 and res["z"] == 0.0 and res["p"] == 1.0


def test_delong_test_strongly_different_models():
    y, _, informative, rng = simulated(4, shift=2.0)
    noise = rng.normal(size=y.size)
    res = roc.delong_test(y, informative, noise)
    assert res["auc_a"] > 0.85 and abs(res["auc_b"] - 0.5) < 0.15
    assert res["z"] > 5 and res["p"] < 1e-6


def test_delong_test_z_from_brute_force_covariance():
    y, _, a, rng = simulated(5, n_pos=30, n_neg=40)
    b = 0.5 * a + rng.normal(size=y.size)
    comps = [_psi_kernel_components(y, s) for s in (a, b)]
    s10 = np.cov([comps[0][0], comps[1][0]])
    s01 = np.cov([comps[0][1], comps[1][1]])
    cov = s10 / 30 + s01 / 40
    diff = comps[0][0].mean() - comps[1][0].mean()
    z = diff / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    res = roc.delong_test(y, a, b)
    assert res["diff"] == pytest.approx(diff, abs=1e-14)
    assert res["z"] == pytest.approx(z, rel=1e-12)
    assert res["p"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-12)


def test_delong_test_p_close_to_paired_bootstrap():
    y, _, a, rng = simulated(8, n_pos=80, n_neg=120, shift=1.0)
    b = 0.6 * a + 0.8 * rng.normal(size=y.size)
    res = roc.delong_test(y, a, b)
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
    y, tied, _, _ = simulated(9)
    auc, lo, hi = roc.auc_ci(y, tied)
    _, var = roc.delong_roc_variance(y, tied)
    assert (lo, hi) == pytest.approx(
        (auc - 1.959963984540054 * var**0.5, auc + 1.959963984540054 * var**0.5)
    )
    auc_l, lo_l, hi_l = roc.auc_ci(y, tied, transform="logit")
    se_logit = var**0.5 / (auc * (1 - auc))
    assert (lo_l, hi_l) == pytest.approx(
        tuple(expit(logit(auc) + np.array([-1, 1]) * 1.959963984540054 * se_logit))
    )
    assert lo_l < auc_l < hi_l and hi_l - auc_l < auc_l - lo_l  # pulled away from 1
    # Perfect separation: variance 0, interval collapses (no clipping artefact above 1).
    assert roc.auc_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0, 1.0)
    # Near-perfect small set: the Wald interval is clipped at 1.
    _, _, hi_small = roc.auc_ci([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.6, 0.8, 0.9])
    assert hi_small == 1.0
    # One case in a class: AUC defined, DeLong variance not.
    auc1, lo1, hi1 = roc.auc_ci([0, 0, 1], [0.1, 0.5, 0.3])
    assert auc1 == 0.5 and math.isnan(lo1) and math.isnan(hi1)
    # Single class: nothing defined, no exception.
    assert all(math.isnan(v) for v in roc.auc_ci([1, 1, 1], [0.1, 0.5, 0.3]))
    assert math.isnan(roc.delong_test([1, 1], [0.1, 0.2], [0.3, 0.4])["p"])
    with pytest.raises(ValueError):
        roc.delong_roc_variance([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        roc.delong_roc_variance([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError):
        roc.auc_ci(y, tied, transform="probit")
