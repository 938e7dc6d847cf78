"""Colour Doppler frame of a synthetic case: the colour box, vessels and flow colours.

:func:`design_vessels` turns the ``vasc`` factor into :class:`Vessels` counts and speed;
:func:`render_flow` draws the vessels as curves in the lesion's own polar coordinates (rim,
penetrating with branches) or as random walks (background), as a signed velocity map
inside the :func:`colour_box`; :func:`render_cdus` lays the flow colours over the B-mode
frame. Reads and writes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tasks.data.sources.synthetic.anatomy import Layers, Lesion, lesion_to_image, outline_radius
from tasks.data.sources.synthetic.latent import SiteProfile, severity


@dataclass(frozen=True)
class Vessels:
    """Doppler vascularity: counts of each vessel kind and the flow speed scale."""

    n_rim: int
    n_penetrating: int
    n_background: int
    branch_prob: float
    speed: float


def design_vessels(vasc: float, size_mm: float, rng: np.random.Generator) -> Vessels:
    """Doppler vessels from the ``vasc`` factor.

    Higher ``vasc``: more rim vessels, more vessels penetrating to the centre, more
    branching, faster flow. Counts grow with the lesion's mean diameter ``size_mm`` so that
    the flow fraction around a lesion reflects ``vasc``, not size. A few background vessels
    in the colour box are nuisance.
    """
    flow = severity(vasc, rng)
    per_size = size_mm / 12.0
    return Vessels(
        n_rim=int(rng.poisson(per_size * (0.3 + 8.0 * flow))),
        n_penetrating=int(rng.poisson(per_size * 8.0 * flow**2)),
        n_background=int(rng.poisson(1.0)),
        branch_prob=0.6 * flow,
        speed=0.45 + 0.45 * flow,
    )


def colour_box(mask: np.ndarray, layers: Layers, site: SiteProfile) -> tuple[int, int, int, int]:
    """Doppler region of interest around the lesion: (row0, row1, col0, col1), inclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    radius = 0.25 * (rows[-1] - rows[0] + cols[-1] - cols[0])
    pad = max(0.4 * radius, 3.0 / site.pixel_spacing_mm)
    height, width = mask.shape
    row0 = max(rows[0] - pad, layers.skin.max())
    return (
        int(row0),
        int(min(rows[-1] + pad, height - 1)),
        int(max(cols[0] - pad, 0)),
        int(min(cols[-1] + pad, width - 1)),
    )


def _wander(rng: np.random.Generator, n: int, step_sd: float) -> np.ndarray:
    """A smooth random walk of length ``n`` starting at 0 (vessel tortuosity)."""
    walk = np.cumsum(rng.normal(0.0, step_sd, n))
    return ndimage.gaussian_filter1d(walk, 3.0) - walk[0]


def _vessel_paths(
    lesion: Lesion, vessels: Vessels, box: tuple[int, int, int, int], rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centre lines (rows, cols) of rim, penetrating (with branches) and background vessels.

    Rim and penetrating vessels are laid out in the lesion's own polar coordinates, so they
    hug or cross its outline whatever its shape.
    """
    size = float(np.mean(lesion.semi_axes))
    paths = []
    for _ in range(vessels.n_rim):
        span = rng.uniform(0.3, 0.9)
        n = max(int(2.5 * span * size), 4)
        theta = rng.uniform(-np.pi, np.pi) + np.linspace(0.0, span, n) * rng.choice([-1, 1])
        rho = outline_radius(lesion, theta) * (1.08 + np.abs(_wander(rng, n, 0.01)))
        paths.append(lesion_to_image(lesion, rho, theta))
    for _ in range(vessels.n_penetrating):
        start = rng.uniform(-np.pi, np.pi)
        trunk = _penetrating(lesion, rng, start, 1.35, rng.uniform(0.05, 0.5))
        paths.append(trunk)
        if rng.random() < vessels.branch_prob:
            fork = rng.uniform(0.2, 0.6)
            side = start + rng.choice([-1, 1]) * rng.uniform(0.3, 0.7)
            paths.append(
                _penetrating(lesion, rng, side, 1.35 - fork, rng.uniform(0.2, 0.7), fork_from=start)
            )
    row0, row1, col0, col1 = box
    for _ in range(vessels.n_background):
        n = max(int(rng.uniform(0.3, 0.8) * size * 2), 4)
        heading = rng.uniform(0, 2 * np.pi) + _wander(rng, n, 0.06)
        rows = rng.uniform(row0, row1) + np.cumsum(0.5 * np.sin(heading))
        cols = rng.uniform(col0, col1) + np.cumsum(0.5 * np.cos(heading))
        paths.append((rows, cols))
    return paths


def _penetrating(
    lesion: Lesion,
    rng: np.random.Generator,
    theta_end: float,
    rho_start: float,
    rho_end: float,
    fork_from: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A vessel running from outside (or a fork) towards the lesion centre."""
    size = float(np.mean(lesion.semi_axes))
    n = max(int(2.5 * abs(rho_start - rho_end) * size), 4)
    t = np.linspace(0.0, 1.0, n)
    theta_start = theta_end if fork_from is None else fork_from
    theta = theta_start + (theta_end - theta_start) * t + _wander(rng, n, 0.02)
    # Scaled by the outline where the vessel ends, not along it, so spicules put no kinks in it.
    rho = (rho_start + (rho_end - rho_start) * t) * outline_radius(lesion, np.array([theta_end]))
    return lesion_to_image(lesion, rho, theta)


def render_flow(
    lesion: Lesion,
    vessels: Vessels,
    box: tuple[int, int, int, int],
    site: SiteProfile,
    rng: np.random.Generator,
) -> np.ndarray:
    """Signed flow velocity map (fraction of the colour scale, 0 = no flow shown).

    Each vessel has one direction (red towards, blue away from the probe), a speed that
    pulses along its length and a parabolic profile across it; flow slower than the
    site's wall filter is not shown, which leaves realistic gaps.
    """
    velocity = np.zeros(site.shape)
    row0, row1, col0, col1 = box
    for rows, cols in _vessel_paths(lesion, vessels, box, rng):
        radius = site.vessel_radius_px * rng.uniform(0.8, 1.4)
        reach = int(math.ceil(radius))
        dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
        disc = dy**2 + dx**2 <= radius**2
        dy, dx = dy[disc], dx[disc]
        profile = 1.0 - 0.5 * (dy**2 + dx**2) / radius**2
        t = np.linspace(0.0, 1.0, len(rows))
        pulse = 0.75 + 0.25 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6.3))
        # Sensitivity drop-outs break a vessel into segments, as on a real colour frame.
        seen = _wander(rng, len(rows), 0.4) + rng.normal(0.0, 0.3) > -0.6
        speed = rng.choice([-1.0, 1.0]) * vessels.speed * rng.uniform(0.6, 1.2) * pulse * seen
        r = np.rint(rows[:, None] + dy[None, :]).astype(int).ravel()
        c = np.rint(cols[:, None] + dx[None, :]).astype(int).ravel()
        v = np.clip((speed[:, None] * profile[None, :]).ravel(), -1.0, 1.0)
        keep = (
            (r >= row0) & (r <= row1) & (c >= col0) & (c <= col1) & (np.abs(v) > site.wall_filter)
        )
        velocity[r[keep], c[keep]] = v[keep]
    # Flash artefacts: a few tiny colour blobs from tissue motion.
    for _ in range(rng.poisson(1.5)):
        r, c = int(rng.integers(row0, row1)), int(rng.integers(col0, col1))
        velocity[r : r + 2, c : c + 2] = rng.choice([-1, 1]) * rng.uniform(0.2, 0.4)
    return velocity


def flow_colours(velocity: np.ndarray) -> np.ndarray:
    """Conventional colour-flow map: red to yellow towards, blue to cyan away (uint8 RGB)."""
    speed = np.abs(velocity)
    bright = 100.0 + 155.0 * np.minimum(1.0, 1.6 * speed)
    tint = 230.0 * np.clip((speed - 0.55) / 0.45, 0.0, 1.0)
    towards = velocity > 0
    rgb = np.stack([np.where(towards, bright, 0.0), tint, np.where(towards, 0.0, bright)], axis=-1)
    return np.rint(rgb).astype(np.uint8)


def render_cdus(
    bmus: np.ndarray, velocity: np.ndarray, box: tuple[int, int, int, int]
) -> np.ndarray:
    """Colour Doppler frame: B-mode in grey, flow in colour, a thin outline round the box."""
    rgb = np.repeat(bmus[..., None], 3, axis=2)
    flow = velocity != 0
    rgb[flow] = flow_colours(velocity[flow])
    row0, row1, col0, col1 = box
    outline = np.array([170, 170, 170], dtype=np.uint8)
    rgb[[row0, row1], col0 : col1 + 1] = outline
    rgb[row0 : row1 + 1, [col0, col1]] = outline
    return rgb
