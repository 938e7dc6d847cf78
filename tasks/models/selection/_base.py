"""Helpers shared by the selectors: input feature names, the binary outcome, fractions."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils.multiclass import check_classification_targets


def _feature_names(est) -> np.ndarray:
    """Input feature names seen in fit, or sklearn's defaults ``x0, x1, ...``."""
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        return np.asarray(names, dtype=object)
    return np.asarray([f"x{i}" for i in range(est.n_features_in_)], dtype=object)


def _binary_target(y) -> np.ndarray:
    """``y`` as 0/1 (the larger label is 1); refuses anything but two classes."""
    check_classification_targets(y)
    classes = np.unique(y)
    if classes.size != 2:
        raise ValueError(
            f"a binary outcome with exactly two classes is required; got {classes.size} "
            f"class(es): {classes.tolist()[:10]}"
        )
    return (np.asarray(y) == classes[1]).astype(np.int64)


def _check_fraction(name: str, value) -> None:
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not 0.0 <= float(value) <= 1.0
    ):
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")
