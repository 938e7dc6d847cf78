"""Helpers shared by the selectors."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.models.selection._base import _binary_target, _check_fraction, _feature_names


class _Fitted:
    n_features_in_ = 3


def test_feature_names_default_to_sklearn_style():
    assert _feature_names(_Fitted()).tolist() == ["x0", "x1", "x2"]
    named = _Fitted()
    named.feature_names_in_ = np.array(["a", "b", "c"], dtype=object)
    assert _feature_names(named).tolist() == ["a", "b", "c"]


def test_binary_target_maps_the_larger_label_to_one():
    assert _binary_target(["N0", "N1", "N1"]).tolist() == [0, 1, 1]
    assert _binary_target([3, 7]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="exactly two classes"):
        _binary_target([1, 1, 1])


def test_fractions_must_lie_in_the_unit_interval():
    _check_fraction("share", 0.5)
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="share must be a number"):
            _check_fraction("share", bad)
