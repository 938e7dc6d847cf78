"""Anatomy of a synthetic case: tissue layers and the lesion's outline and margin.

:func:`design_layers` draws the skin, fat, gland and muscle boundaries;
:func:`design_lesion` turns the ``morph`` factor into a :class:`Lesion` outline (size,
orientation, lobulation, spicules) and its :class:`Margin`. :func:`lesion_margin_px` is the
geometry every later step uses: the signed distance of each pixel to the lesion edge.
Reads and writes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tasks.data.sources.synthetic.latent import SiteProfile, severity
from tasks.data.sources.synthetic.noise import smooth_curve

# Lesion outlines are tabulated on this angle grid and interpolated per pixel.
_THETA = np.linspace(-np.pi, np.pi, 1440, endpoint=False)
# Distance to the lesion edge reported far from it, where nothing depends on its value.
_FAR = 1.0e6


@dataclass(frozen=True)
class Layers:
    """Tissue layer boundaries, one row index per image column (top to bottom)."""

    skin: np.ndarray  # end of the dermis
    fat: np.ndarray  # end of the subcutaneous fat
    gland: np.ndarray  # end of the fibroglandular tissue (retromammary fat below)
    muscle: np.ndarray  # start of the pectoral muscle


@dataclass(frozen=True)
class Lesion:
    """A star-shaped lesion outline around a tilted ellipse.

    A point at normalised polar coordinates (rho, theta) of the ellipse is inside when
    ``rho < r(theta)``, ``r = 1 + sum(amp * cos(order * theta + phase)) + spicules``.
    """

    center: tuple[float, float]  # (row, col) in pixels
    semi_axes: tuple[float, float]  # (lateral, axial) of the base ellipse, pixels
    tilt: float  # radians
    harmonics: np.ndarray  # rows (order, amplitude, phase); amplitude relative to 1
    spicules: np.ndarray  # rows (angle, length, angular width); length relative to 1


@dataclass(frozen=True)
class Margin:
    """How the lesion edge looks: blur (indistinct margin) and an echogenic halo."""

    blur_px: float
    halo: float  # relative echo gain of the rim just outside the lesion
    halo_px: float
    edge_shadow: float  # refraction shadows below the lateral edges (smooth lesions)


def design_layers(site: SiteProfile, rng: np.random.Generator) -> Layers:
    """Skin, fat, gland and muscle boundaries with gently undulating interfaces."""
    height, width = site.shape
    px_per_mm = 1.0 / site.pixel_spacing_mm

    def wave(amplitude_mm: float) -> np.ndarray:
        return amplitude_mm * px_per_mm * smooth_curve(rng, width)

    skin = (1.6 + rng.uniform(0.0, 0.6)) * px_per_mm + wave(0.15)
    fat = skin + rng.uniform(3.0, 8.0) * px_per_mm + wave(1.5)
    muscle = height - rng.uniform(5.0, 8.0) * px_per_mm + wave(1.0)
    gland = muscle - rng.uniform(1.5, 3.0) * px_per_mm + wave(0.5)
    return Layers(skin=skin, fat=fat, gland=gland, muscle=muscle)


def outline_radius(lesion: Lesion, theta: np.ndarray) -> np.ndarray:
    """Normalised outline radius r(theta) of a lesion (see :class:`Lesion`)."""
    radius = np.ones_like(theta)
    for order, amplitude, phase in lesion.harmonics:
        radius += amplitude * np.cos(order * theta + phase)
    for angle, length, width in lesion.spicules:
        offset = np.angle(np.exp(1j * (theta - angle)))  # wrapped to [-pi, pi]
        radius += length * np.exp(-0.5 * (offset / width) ** 2)
    return np.maximum(radius, 0.3)


def lesion_to_image(
    lesion: Lesion, rho: np.ndarray, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Image (row, col) of normalised polar points of the lesion ellipse."""
    a, b = lesion.semi_axes
    u, v = a * rho * np.cos(theta), b * rho * np.sin(theta)
    cos_t, sin_t = math.cos(lesion.tilt), math.sin(lesion.tilt)
    return lesion.center[0] + u * sin_t + v * cos_t, lesion.center[1] + u * cos_t - v * sin_t


def lesion_margin_px(lesion: Lesion, shape: tuple[int, int], pad_px: int = 64) -> np.ndarray:
    """Approximate signed distance (pixels) of every pixel to the lesion edge, < 0 inside.

    Measured along the ray from the centre: (rho - r(theta)) times the ellipse radius in
    that direction, exact for the plain ellipse and close enough for soft edges and rings.
    Only a window ``pad_px`` around the outline is computed (the costly part); beyond it the
    distance is reported as :data:`_FAR`.
    """
    up, down, left, right = _outline_extent(lesion)
    row0 = max(int(lesion.center[0] - up) - pad_px, 0)
    row1 = min(int(lesion.center[0] + down) + pad_px + 1, shape[0])
    col0 = max(int(lesion.center[1] - left) - pad_px, 0)
    col1 = min(int(lesion.center[1] + right) + pad_px + 1, shape[1])
    a, b = lesion.semi_axes
    rows = np.arange(row0, row1, dtype=float)[:, None] - lesion.center[0]
    cols = np.arange(col0, col1, dtype=float)[None, :] - lesion.center[1]
    cos_t, sin_t = math.cos(lesion.tilt), math.sin(lesion.tilt)
    u = (cols * cos_t + rows * sin_t) / a
    v = (rows * cos_t - cols * sin_t) / b
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    table = outline_radius(lesion, _THETA)
    scale = np.hypot(a * np.cos(_THETA), b * np.sin(_THETA))
    radius = np.interp(theta, _THETA, table, period=2 * np.pi)
    margin = np.full(shape, _FAR)
    margin[row0:row1, col0:col1] = (rho - radius) * np.interp(
        theta, _THETA, scale, period=2 * np.pi
    )
    return margin


def _outline_extent(lesion: Lesion) -> tuple[float, float, float, float]:
    """Extent of the outline around its centre: (up, down, left, right) in pixels."""
    rows, cols = lesion_to_image(lesion, outline_radius(lesion, _THETA), _THETA)
    dy, dx = rows - lesion.center[0], cols - lesion.center[1]
    return -dy.min(), dy.max(), -dx.min(), dx.max()


def design_lesion(
    morph: float, site: SiteProfile, layers: Layers, rng: np.random.Generator
) -> tuple[Lesion, Margin]:
    """Shape and margin of the lesion from the ``morph`` factor.

    Higher ``morph``: larger, taller-than-wide, angular/microlobulated (high-order
    harmonics), spiculated, with an indistinct margin and an echogenic halo. Gentle
    lobulation (orders 2-3) is nuisance common to every lesion.


    """
    irregular = severity(morph, rng)
    px_per_mm = 1.0 / site.pixel_spacing_mm
    diameter_mm = float(np.clip(12.0 * math.exp(0.2 * morph + rng.normal(0.0, 0.18)), 6, 22))
    radius = 0.5 * diameter_mm * px_per_mm
    aspect = float(np.clip(0.62 + 0.35 * irregular + rng.normal(0.0, 0.08), 0.45, 1.3))
    semi_axes = (radius / math.sqrt(aspect), radius * math.sqrt(aspect))

    lobulation = [(k, rng.uniform(0.0, 0.07), rng.uniform(0, 2 * np.pi)) for k in (2, 3)]
    angular = [
        (k, irregular * rng.uniform(0.06, 0.14) / math.sqrt(k - 3), rng.uniform(0, 2 * np.pi))
        for k in range(4, 13)
    ]
    n_spicules = rng.poisson(10.0 * irregular**2)
    spicules = np.column_stack(
        [
            rng.uniform(-np.pi, np.pi, n_spicules),
            rng.uniform(0.15, 0.45, n_spicules),
            rng.uniform(0.025, 0.06, n_spicules),
        ]
    ).reshape(-1, 3)
    lesion = Lesion(
        (0.0, 0.0), semi_axes, rng.normal(0.0, 0.2), np.array(lobulation + angular), spicules
    )
    lesion = _place_lesion(lesion, site, layers, rng)
    margin = Margin(
        blur_px=0.6 + 2.5 * irregular,
        halo=0.9 * max(0.0, irregular - 0.4),
        halo_px=rng.uniform(1.0, 2.0) * px_per_mm,
        edge_shadow=(1.0 - irregular) * rng.uniform(0.2, 0.6),
    )
    return lesion, margin


def _place_lesion(
    lesion: Lesion, site: SiteProfile, layers: Layers, rng: np.random.Generator
) -> Lesion:
    """Centre the lesion in the glandular layer, shrinking it if it cannot fit the image."""
    height, width = site.shape
    px_per_mm = 1.0 / site.pixel_spacing_mm
    top_limit = layers.skin.max() + 1.0 * px_per_mm
    bottom_limit = height - 3.0 * px_per_mm
    up, down, left, right = _outline_extent(lesion)
    fit = min(
        1.0,
        0.95 * (bottom_limit - top_limit) / (up + down),
        0.95 * (width - 4.0 * px_per_mm) / (left + right),
    )
    if fit < 1.0:
        semi = (lesion.semi_axes[0] * fit, lesion.semi_axes[1] * fit)
        lesion = Lesion(lesion.center, semi, lesion.tilt, lesion.harmonics, lesion.spicules)
        up, down, left, right = (fit * e for e in (up, down, left, right))
    col = width * rng.uniform(0.35, 0.65)
    col = float(np.clip(col, left + 2.0 * px_per_mm, width - right - 2.0 * px_per_mm))
    mid_gland = 0.5 * (layers.fat[int(col)] + layers.gland[int(col)])
    row = mid_gland + rng.normal(0.0, 2.0) * px_per_mm
    row = float(np.clip(row, top_limit + up, bottom_limit - down))
    return Lesion((row, col), lesion.semi_axes, lesion.tilt, lesion.harmonics, lesion.spicules)
