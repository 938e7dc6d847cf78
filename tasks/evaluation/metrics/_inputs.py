"""Input checks shared by the metric families: labels 0/1, finite scores, probabilities.

Bad input raises ``ValueError``; every public metric calls these first.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats


def _labels(y: ArrayLike) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int8)
    try:
        values = arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError("labels must be 0/1") from exc
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1 (1 = positive), without missing values")
    return values.astype(np.int8)


def _scores(score: ArrayLike, n: int, name: str = "score") -> np.ndarray:
    arr = np.asarray(score, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values for {n} labels")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return arr


def _probabilities(prob: ArrayLike, n: int) -> np.ndarray:
    arr = _scores(prob, n, "prob")
    if ((arr < 0) | (arr > 1)).any():
        raise ValueError("prob must lie in [0, 1]")
    return arr


def _z(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(stats.norm.isf(alpha / 2))
