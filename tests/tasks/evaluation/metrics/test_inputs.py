"""Input checks shared by the metric families."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.metrics._inputs import _labels, _probabilities, _scores, _z


def test_labels_accept_0_1_and_booleans_only():
    assert _labels([0, 1, 1]).tolist() == [0, 1, 1]
    assert _labels(np.array([True, False])).tolist() == [1, 0]
    for bad in ([0, 2], [0, np.nan], ["a", "b"]):
        with pytest.raises(ValueError, match="0/1"):
            _labels(bad)
    with pytest.raises(ValueError, match="one-dimensional"):
        _labels([[0, 1]])


def test_scores_and_probabilities_are_finite_and_sized():
    assert _scores([0.2, 5.0], 2).tolist() == [0.2, 5.0]
    with pytest.raises(ValueError, match="3 values for 2 labels"):
        _scores([1, 2, 3], 2)
    with pytest.raises(ValueError, match="finite"):
        _scores([1, np.inf], 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _probabilities([0.5, 1.2], 2)


def test_z_is_the_two_sided_normal_quantile():
    assert _z(0.05) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        _z(1.5)
