"""Smooth random curves and fields shared by the anatomy and B-mode steps.

Interfaces that undulate, ligaments that fade in and out, tissue that is mottled at a
given grain: all are drawn from the two generators here. Reads and writes nothing.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def smooth_curve(rng: np.random.Generator, n: int) -> np.ndarray:
    """A smooth random curve of length ``n`` within [-1, 1] (a few long sinusoids)."""
    x = np.arange(n) / n
    periods = rng.uniform(0.4, 2.0, 3)
    curve = sum(
        rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * x / p + rng.uniform(0, 2 * np.pi))
        for p in periods
    )
    return curve / max(np.abs(curve).max(), 1e-9)


@lru_cache(maxsize=64)
def _upsampling_matrix(n_out: int, scale: float) -> np.ndarray:
    """Gaussian smoothing weights from a coarse grid to ``n_out`` samples.

    Nodes every ``scale / 2`` and a kernel 1.2 node spacings wide: with fewer nodes or a
    narrower kernel the grid shows through as boxy, axis-aligned blobs.
    """
    spacing = 0.5 * scale
    n_coarse = math.ceil(n_out / spacing) + 8
    offsets = np.arange(n_out)[:, None] / spacing - (np.arange(n_coarse)[None, :] - 4)
    return np.exp(-0.5 * (offsets / 1.2) ** 2)


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], scale_px: float | tuple[float, float]
) -> np.ndarray:
    """Correlated Gaussian noise (unit sd) with correlation length ``scale_px`` (row, col).

    Coarse white noise smoothed onto the full grid with separable Gaussian weights (two
    small matrix products): far cheaper than a wide filter at full resolution.
    """
    sy, sx = (scale_px, scale_px) if np.isscalar(scale_px) else scale_px
    rows, cols = _upsampling_matrix(shape[0], float(sy)), _upsampling_matrix(shape[1], float(sx))
    field = rows @ rng.standard_normal((rows.shape[1], cols.shape[1])) @ cols.T
    return (field - field.mean()) / max(field.std(), 1e-9)
