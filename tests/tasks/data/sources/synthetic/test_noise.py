"""Tests for tasks.data.sources.synthetic.noise: smooth random curves and fields."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.data.sources.synthetic.noise import smooth_curve, smooth_noise


def _lag_correlation(field: np.ndarray, lag: int, axis: int) -> float:
    a = np.take(field, np.arange(field.shape[axis] - lag), axis=axis)
    b = np.take(field, np.arange(lag, field.shape[axis]), axis=axis)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_smooth_curve_spans_minus_one_to_one_and_is_smooth():
    curve = smooth_curve(np.random.default_rng(0), 500)
    assert curve.shape == (500,)
    assert np.abs(curve).max() == pytest.approx(1.0)
    assert np.abs(np.diff(curve)).max() < 0.05


def test_smooth_noise_is_standardised_and_correlated_at_its_scale():
    field = smooth_noise(np.random.default_rng(0), (300, 400), (4.0, 16.0))
    assert field.shape == (300, 400)
    assert field.mean() == pytest.approx(0.0, abs=1e-9)
    assert field.std() == pytest.approx(1.0)
    # Longer correlation laterally (16 px) than axially (4 px).
    assert _lag_correlation(field, 8, axis=1) > _lag_correlation(field, 8, axis=0) + 0.2


def test_smooth_noise_takes_one_scale_for_both_axes():
    one = smooth_noise(np.random.default_rng(1), (64, 80), 6.0)
    both = smooth_noise(np.random.default_rng(1), (64, 80), (6.0, 6.0))
    np.testing.assert_array_equal(one, both)
