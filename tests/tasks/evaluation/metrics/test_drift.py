"""Population stability index (tasks.evaluation.metrics.drift) against hand cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tasks.evaluation.metrics import drift


def test_psi_hand_two_bins():
    # expected 1, 2, 3, 4: median edge 2.5, shares (1/2, 1/2).
    # actual 1, 1, 1, 4: shares (3/4, 1/4).
    # PSI = (3/4 - 1/2) ln(3/2) + (1/4 - 1/2) ln(1/2) = 1/4 ln(3/2) + 1/4 ln 2 = ln(3)/4.
    assert drift.psi([1, 2, 3, 4], [1, 1, 1, 4], bins=2) == pytest.approx(math.log(3) / 4)
    # An empty bin gets eps = 1e-4: actual all below the edge, shares (1, 1e-4).
    expected = 0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert drift.psi([1, 2, 3, 4], [1, 1, 1, 1], bins=2) == pytest.approx(expected)
    # Values beyond the training range fall in the open outer bins.
    assert drift.psi([1, 2, 3, 4], [-10, 0, 5, 50], bins=2) == pytest.approx(0.0)


def test_psi_stable_and_shifted():
    rng = np.random.default_rng(0)
    train = rng.normal(size=5000)
    assert drift.psi(train, train) == 0.0
    assert drift.psi(train, rng.normal(size=5000)) < 0.02
    assert drift.psi(train, rng.normal(1.0, 1.0, 5000)) > 0.25
    assert 0.1 > drift.psi(train, rng.normal(0.1, 1.0, 5000))


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
    table = drift.psi_table(train, other)
    assert list(table.index) == list(train.columns)
    for col in train.columns:
        ref = drift.psi(train[col].to_numpy(), other[col].dropna().to_numpy())
        assert table[col] == pytest.approx(ref, abs=1e-12)
    assert table["stable"] < 0.1 < 0.25 < table["shifted"]
    assert table["constant"] > 0.25  # a quarter of values above the constant's only bin
    with pytest.raises(ValueError):
        drift.psi_table(other, train)


def test_no_shift_at_n_69_flags_at_most_5_percent_and_a_planted_shift_is_flagged():
    # The audit's setting: 276 training rows, a site of 69. A fixed PSI > 0.25 cut flagged
    # 21% of unshifted features there; the permutation-calibrated critical value does not.
    from tasks.evaluation.metrics import drift_bins, psi_permutation_test

    rng = np.random.default_rng(11)
    flagged, planted = [], []
    for seed in range(8):
        train = pd.DataFrame(rng.normal(size=(276, 20)), columns=[f"f{i}" for i in range(20)])
        site = pd.DataFrame(rng.normal(size=(69, 20)), columns=train.columns)
        table, critical = psi_permutation_test(train, site, drift_bins(69), 200, 0.05, seed)
        flagged.append(table["flagged"].mean())
        # Fixed 0.25 cut on the same data: noise reads as drift.
        assert critical > 0.25 or table["psi"].gt(0.25).mean() <= 0.05
        site["f3"] += 1.0  # a scanner shift of one SD on one feature
        table, _ = psi_permutation_test(train, site, drift_bins(69), 200, 0.05, seed)
        planted.append(bool(table.at["f3", "flagged"]))
        assert table.drop(index="f3")["flagged"].mean() <= 0.05
    assert np.mean(flagged) <= 0.05 and max(flagged) <= 0.05
    assert all(planted)
