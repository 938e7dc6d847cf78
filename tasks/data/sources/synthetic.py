"""Synthetic cohort step: a stand-in for a two-hospital breast ultrasound export.

Until real data arrive, :func:`generate_cohort` writes a cohort that looks and behaves like
one hospital export: for every patient a B-mode image (BMUS, greyscale PNG), a colour
Doppler image (CDUS, RGB PNG) and a reader-1 lesion mask, plus repeat delineations
(reader 2, reader-1 repeat) for a share of the cases. Under ``out_dir`` it writes

- ``manifest.csv``: one row per case in the cohort manifest schema
  (:data:`tasks.data.ingest.MANIFEST_COLUMNS`), paths relative to ``out_dir``;
- ``images/<case_id>_bmus.png``, ``images/<case_id>_cdus.png``;
- ``masks/<case_id>_bmus_mask.png``, ``masks/<case_id>_cdus_mask.png`` (same geometry) and,
  where a repeat exists, ``masks/<case_id>_bmus_mask_reader2.png`` and
  ``masks/<case_id>_bmus_mask_repeat.png``;
- ``latent.csv``: the latent factors and logit behind every label, for auditing only;
- ``preview.png`` on request: a contact sheet of a few cases.

The label comes from a documented latent model (``docs/synthetic-cohort.md``): three
correlated patient factors, ``morph`` (margin irregularity, spicules, size, orientation),
``texture`` (internal heterogeneity, calcifications, posterior shadowing) and ``vasc``
(Doppler vascularity), drive both the N-stage logit and the images, so that B-mode
morphology, B-mode texture and Doppler flow each carry part of the signal. Everything is
deterministic per seed: the cohort plan and each case draw from their own random streams.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from scipy import fft, ndimage
from scipy.special import expit
from threadpoolctl import threadpool_limits

from tasks.data.schema import MANIFEST_COLUMNS

# ---------------------------------------------------------------------------------------
# The latent label model (documented in docs/synthetic-cohort.md; change both together).
# ---------------------------------------------------------------------------------------
FACTORS = ("morph", "texture", "vasc")
FACTOR_CORRELATION = 0.3
INTERCEPT = -1.2
COEFFICIENTS = (1.5, 1.2, 1.5)
UNEXPLAINED_SD = 0.6
LATENT_COLUMNS = ("case_id", "site", "label", *FACTORS, "unexplained", "logit")

# Cohort shape of the paper (Yang et al. 2025): 450 patients, 105 external validation.
PAPER_PATIENTS = 450
PAPER_VALIDATION = 105
TEST_SHARE = 0.2
FIRST_EXAM = date(2021, 10, 1)
LAST_EXAM = date(2025, 3, 31)

# Independent random streams, so that e.g. changing repeat_share or the vessel model
# leaves every other draw as it was.
_PLAN, _REPEATS, _CASE = 0, 1, 2
_ANATOMY, _SPECKLE, _DOPPLER, _READERS = 0, 1, 2, 3

# Lesion outlines are tabulated on this angle grid and interpolated per pixel.
_THETA = np.linspace(-np.pi, np.pi, 1440, endpoint=False)
# Distance to the lesion edge reported far from it, where nothing depends on its value.
_FAR = 1.0e6


@dataclass(frozen=True)
class SiteProfile:
    """Scanner character of one hospital.

    Attributes
    ----------
    shape : (height, width) of the images in pixels.
    pixel_spacing_mm : isotropic pixel size.
    speckle_sigma_px : (axial, lateral) standard deviation of the Gaussian point-spread
        function; sets the speckle grain.
    dynamic_range_db : log-compression range mapped onto 0..255.
    white_db : echo level shown as white; lower means more gain (a brighter image).
    attenuation_db_per_cm : attenuation left over after time-gain compensation.
    display_smoothing_px : Gaussian smoothing of the log image (speckle reduction and
        persistence in the scanner's post-processing).
    vessel_radius_px : half-width of a Doppler vessel (colour blooming).
    wall_filter : slowest flow (fraction of the colour scale) the scanner shows.
    """

    name: str
    shape: tuple[int, int]
    pixel_spacing_mm: float
    speckle_sigma_px: tuple[float, float]
    dynamic_range_db: float
    white_db: float
    attenuation_db_per_cm: float
    display_smoothing_px: float
    vessel_radius_px: float
    wall_filter: float


SITES = {
    # Site A: finer speckle, wider dynamic range, good TGC, sensitive colour flow.
    "A": SiteProfile(
        name="A",
        shape=(400, 500),
        pixel_spacing_mm=0.10,
        speckle_sigma_px=(1.1, 2.4),
        dynamic_range_db=50.0,
        white_db=15.0,
        attenuation_db_per_cm=1.2,
        display_smoothing_px=0.6,
        vessel_radius_px=2.2,
        wall_filter=0.12,
    ),
    # Site B: higher resolution grid but coarser speckle, harsher contrast, more gain,
    # darker depths, smoother post-processing, blooming colour with a higher wall filter.
    "B": SiteProfile(
        name="B",
        shape=(416, 528),
        pixel_spacing_mm=0.09,
        speckle_sigma_px=(1.6, 3.4),
        dynamic_range_db=44.0,
        white_db=12.0,
        attenuation_db_per_cm=2.2,
        display_smoothing_px=0.9,
        vessel_radius_px=3.0,
        wall_filter=0.22,
    ),
}
# Which site plays external validation (the paper's second hospital).
VALIDATION_SITE = "B"


# ---------------------------------------------------------------------------------------
# Cohort plan: who is in it, their latent factors, label, site, date, split.
# ---------------------------------------------------------------------------------------
def _rng(seed: int, *key: int) -> np.random.Generator:
    """Random generator for one named stream of one seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _round_half_up(value: float) -> int:
    """Round .5 upwards: Python's round() would send 2.5 to 2 and surprise a reader."""
    return int(math.floor(value + 0.5))


def _stratified_pick(labels: np.ndarray, n_pick: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n_pick`` positions keeping each label's share (largest-remainder quotas)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = n_pick * counts / counts.sum()
    quotas = np.floor(exact).astype(int)
    shortfall = n_pick - quotas.sum()
    quotas[np.argsort(-(exact - quotas), kind="stable")[:shortfall]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == cls), size=quota, replace=False)
        for cls, quota in zip(classes, quotas, strict=True)
    ]
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=int)


def draw_latent(n_patients: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw the latent factors, logit and label of ``n_patients`` patients.

    ``(morph, texture, vasc) ~ N(0, R)`` with unit variances and pairwise correlation
    :data:`FACTOR_CORRELATION`; ``logit = INTERCEPT + COEFFICIENTS . factors + u`` with
    ``u ~ N(0, UNEXPLAINED_SD^2)`` (biology no image shows); ``label ~ Bernoulli(expit(logit))``.
    """
    corr = np.full((3, 3), FACTOR_CORRELATION)
    np.fill_diagonal(corr, 1.0)
    factors = rng.multivariate_normal(np.zeros(3), corr, size=n_patients, method="cholesky")
    unexplained = rng.normal(0.0, UNEXPLAINED_SD, n_patients)
    logit = INTERCEPT + factors @ np.asarray(COEFFICIENTS) + unexplained
    label = (rng.random(n_patients) < expit(logit)).astype(int)
    table = pd.DataFrame(factors, columns=list(FACTORS))
    return table.assign(unexplained=unexplained, logit=logit, label=label)


def plan_cohort(
    n_patients: int = PAPER_PATIENTS, seed: int = 0, repeat_share: float = 0.3
) -> pd.DataFrame:
    """Plan the cohort without drawing a pixel: one row per case.

    Site B gets ``round(N * 105 / 450)`` patients and is the external validation set; site
    A is split 80/20 into training/testing, stratified by label. Cases are numbered in exam
    order, as an export would list them. For 450 patients this gives the paper's 276 / 69
    / 105.

    Parameters
    ----------
    n_patients : number of patients (one lesion each).
    seed : cohort seed; the same seed always gives the same plan.
    repeat_share : share of cases that get reader-2 and reader-1 repeat masks.

    Returns
    -------
    pandas.DataFrame
        ``case_index, case_id, patient_id, site, exam_date, label, split,
        pixel_spacing_mm, has_repeat`` and the latent columns of :func:`draw_latent`.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    if not 0.0 <= repeat_share <= 1.0:
        raise ValueError(f"repeat_share must be within [0, 1], got {repeat_share}")
    rng = _rng(seed, _PLAN)
    plan = draw_latent(n_patients, rng)
    span_days = (LAST_EXAM - FIRST_EXAM).days
    exam_day = rng.integers(0, span_days + 1, n_patients)
    site = np.full(n_patients, "A", dtype=object)
    n_validation = _round_half_up(n_patients * PAPER_VALIDATION / PAPER_PATIENTS)
    site[rng.permutation(n_patients)[:n_validation]] = VALIDATION_SITE
    order = np.argsort(exam_day, kind="stable")
    plan = plan.iloc[order].reset_index(drop=True)
    exam_day, site = exam_day[order], site[order]

    split = np.where(site == VALIDATION_SITE, "validation", "training").astype(object)
    development = np.flatnonzero(site != VALIDATION_SITE)
    n_test = _round_half_up(len(development) * TEST_SHARE)
    labels = plan["label"].to_numpy()
    split[development[_stratified_pick(labels[development], n_test, rng)]] = "testing"

    has_repeat = np.zeros(n_patients, dtype=bool)
    n_repeat = _round_half_up(n_patients * repeat_share)
    has_repeat[_rng(seed, _REPEATS).permutation(n_patients)[:n_repeat]] = True

    width = max(4, len(str(n_patients)))
    numbers = [f"{i + 1:0{width}d}" for i in range(n_patients)]
    plan.insert(0, "case_index", np.arange(n_patients))
    plan.insert(1, "case_id", [f"SYN-{n}" for n in numbers])
    plan.insert(2, "patient_id", [f"P{n}" for n in numbers])
    plan.insert(3, "site", site)
    plan.insert(
        4, "exam_date", [(FIRST_EXAM + timedelta(days=int(d))).isoformat() for d in exam_day]
    )
    plan["split"] = split
    plan["pixel_spacing_mm"] = [SITES[s].pixel_spacing_mm for s in site]
    plan["has_repeat"] = has_repeat
    return plan


# ---------------------------------------------------------------------------------------
# How the latent factors show: anatomy, lesion shape, texture, vessels.
# ---------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Texture:
    """Inside the lesion and behind it."""

    level: float  # mean echo amplitude relative to glandular tissue
    heterogeneity: float  # sd of the log echo amplitude inside the lesion
    n_calcifications: int
    posterior: float  # log-amplitude gain below the lesion: < 0 shadow, > 0 enhancement


@dataclass(frozen=True)
class Vessels:
    """Doppler vascularity: counts of each vessel kind and the flow speed scale."""

    n_rim: int
    n_penetrating: int
    n_background: int
    branch_prob: float
    speed: float


def _severity(factor: float, rng: np.random.Generator) -> float:
    """Map a latent factor to [0, 1] with nuisance: how strongly its signs show."""
    return float(expit(1.3 * factor + rng.normal(0.0, 0.5)))


def _smooth_curve(rng: np.random.Generator, n: int) -> np.ndarray:
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


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px) -> np.ndarray:
    """Correlated Gaussian noise (unit sd) with correlation length ``scale_px`` (row, col).

    Coarse white noise smoothed onto the full grid with separable Gaussian weights (two
    small matrix products): far cheaper than a wide filter at full resolution.
    """
    sy, sx = (scale_px, scale_px) if np.isscalar(scale_px) else scale_px
    rows, cols = _upsampling_matrix(shape[0], float(sy)), _upsampling_matrix(shape[1], float(sx))
    field = rows @ rng.standard_normal((rows.shape[1], cols.shape[1])) @ cols.T
    return (field - field.mean()) / max(field.std(), 1e-9)


def design_layers(site: SiteProfile, rng: np.random.Generator) -> Layers:
    """Skin, fat, gland and muscle boundaries with gently undulating interfaces."""
    height, width = site.shape
    px_per_mm = 1.0 / site.pixel_spacing_mm

    def wave(amplitude_mm: float) -> np.ndarray:
        return amplitude_mm * px_per_mm * _smooth_curve(rng, width)

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


def lesion_to_image(lesion: Lesion, rho: np.ndarray, theta: np.ndarray):
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
    irregular = _severity(morph, rng)
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


def design_texture(texture: float, rng: np.random.Generator) -> Texture:
    """Inside and behind the lesion from the ``texture`` factor.

    Higher ``texture``: more heterogeneous internal echoes, more microcalcifications, and
    posterior shadowing instead of enhancement.
    """
    hetero = _severity(texture, rng)
    return Texture(
        level=0.08 * math.exp(rng.normal(0.0, 0.25)),
        heterogeneity=0.1 + 1.2 * hetero,
        n_calcifications=int(rng.poisson(10.0 * hetero**3)),
        posterior=float(np.clip(3.0 * (0.45 - hetero) + rng.normal(0.0, 0.25), -2.0, 1.0)),
    )


def design_vessels(vasc: float, size_mm: float, rng: np.random.Generator) -> Vessels:
    """Doppler vessels from the ``vasc`` factor.

    Higher ``vasc``: more rim vessels, more vessels penetrating to the centre, more
    branching, faster flow. Counts grow with the lesion's mean diameter ``size_mm`` so that
    the flow fraction around a lesion reflects ``vasc``, not size. A few background vessels
    in the colour box are nuisance.
    """
    flow = _severity(vasc, rng)
    per_size = size_mm / 12.0
    return Vessels(
        n_rim=int(rng.poisson(per_size * (0.3 + 8.0 * flow))),
        n_penetrating=int(rng.poisson(per_size * 8.0 * flow**2)),
        n_background=int(rng.poisson(1.0)),
        branch_prob=0.6 * flow,
        speed=0.45 + 0.45 * flow,
    )


# ---------------------------------------------------------------------------------------
# B-mode: echogenicity map -> complex scatterers -> PSF -> envelope -> log compression.
# ---------------------------------------------------------------------------------------
def _ridge(rows: np.ndarray, centre: np.ndarray, width_px: float) -> np.ndarray:
    """A thin bright line along ``centre`` (one row per column), Gaussian across."""
    return np.exp(-0.5 * ((rows - centre[None, :]) / width_px) ** 2)


def _superficial_echo(
    rows: np.ndarray, layers: Layers, px_per_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Skin over subcutaneous fat, for the top rows ``rows`` (a column vector)."""
    width = len(layers.skin)
    # Skin: bright entry line and dermis-fat interface around a moderately bright dermis.
    skin = 0.6 + 2.0 * _ridge(rows, np.full(width, 0.3 * px_per_mm), 1.0)
    skin = skin + 1.2 * _ridge(rows, layers.skin, 1.2)
    # Fat: dark, faintly mottled, crossed by a few Cooper's ligaments that come and go.
    shape = (len(rows), width)
    fat = 0.12 * np.exp(0.3 * _smooth_noise(rng, shape, (3 * px_per_mm, 5 * px_per_mm)))
    for _ in range(rng.integers(2, 5)):
        phase = rng.uniform(0, 2 * np.pi)
        period = rng.uniform(15, 40) * px_per_mm
        path = layers.skin + (layers.fat - layers.skin) * (
            0.5 + 0.5 * np.sin(2 * np.pi * np.arange(width) / period + phase)
        )
        strength = rng.uniform(0.4, 0.9) * np.clip(0.3 + _smooth_curve(rng, width), 0, 1)
        fat = fat + strength[None, :] * _ridge(rows, path, 1.0)
    # The gel at the transducer face echoes nothing.
    skin = np.where(rows < 0.15 * px_per_mm, 0.02, skin)
    return np.where(rows < layers.skin, skin, fat)


def _gland_echo(shape: tuple[int, int], px_per_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Fibroglandular tissue: heterogeneous, with soft-edged fat lobules, both stretched
    along the layer."""
    gland = np.exp(0.45 * _smooth_noise(rng, shape, (1.2 * px_per_mm, 3 * px_per_mm)))
    lobule_field = _smooth_noise(rng, shape, (2 * px_per_mm, 4.5 * px_per_mm))
    lobule = expit((lobule_field - 0.9) / 0.15)
    return gland * (1.0 - lobule) + 0.13 * lobule


def _muscle_echo(rows: np.ndarray, width: int, px_per_mm: float, rng: np.random.Generator):
    """Pectoral muscle for the bottom rows ``rows``: low echo with bright, oblique, broken
    striations (the perimysium)."""
    cols = np.arange(width, dtype=float)[None, :]
    slope = rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.3)
    period = rng.uniform(1.0, 1.6) * px_per_mm
    warp = 3.0 * _smooth_curve(rng, width)[None, :]
    striae = (0.5 + 0.5 * np.sin(2 * np.pi * (rows - slope * cols + warp) / period)) ** 6
    noise = _smooth_noise(rng, (len(rows), width), (px_per_mm, 4 * px_per_mm))
    broken = np.clip(0.6 + 0.5 * noise, 0, 1)
    return 0.18 * (1.0 + 3.5 * striae * broken)


def tissue_echogenicity(site: SiteProfile, layers: Layers, rng: np.random.Generator):
    """Echo amplitude of the breast without the lesion, relative to glandular tissue.

    Skin and fat are drawn only down to the deepest fat boundary, muscle only from the
    shallowest muscle boundary: the thin-line features cost a pass over every row drawn.
    """
    height, width = site.shape
    px_per_mm = 1.0 / site.pixel_spacing_mm
    rows = np.arange(height, dtype=float)[:, None]
    echo = np.where(rows < layers.gland, _gland_echo(site.shape, px_per_mm, rng), 0.12)

    top = min(int(math.ceil(layers.fat.max())) + 1, height)
    superficial = _superficial_echo(rows[:top], layers, px_per_mm, rng)
    echo[:top] = np.where(rows[:top] < layers.fat, superficial, echo[:top])

    bottom = max(int(layers.muscle.min()), 0)
    muscle = _muscle_echo(rows[bottom:], width, px_per_mm, rng)
    echo[bottom:] = np.where(rows[bottom:] >= layers.muscle, muscle, echo[bottom:])
    return echo


def add_lesion(
    echo: np.ndarray,
    margin_px: np.ndarray,
    margin: Margin,
    texture: Texture,
    site: SiteProfile,
    rng: np.random.Generator,
) -> np.ndarray:
    """Blend the hypoechoic lesion, its halo and internal texture into the echo map."""
    px_per_mm = 1.0 / site.pixel_spacing_mm
    inside = expit(-margin_px / margin.blur_px)
    het = _smooth_noise(rng, echo.shape, 1.5 * px_per_mm)
    lesion_echo = texture.level * np.exp(texture.heterogeneity * het)
    half = 0.5 * margin.halo_px
    halo = 1.0 + margin.halo * np.exp(-0.5 * ((margin_px - half) / half) ** 2)
    return (echo * halo) * (1.0 - inside) + lesion_echo * inside


def posterior_gain(
    mask: np.ndarray, texture: Texture, margin: Margin, site: SiteProfile
) -> np.ndarray:
    """Amplitude factor below the lesion: shadowing or enhancement, and edge shadows.

    The effect follows the lesion's thickness in each column (thicker = stronger), starts
    at its lower edge and persists to the bottom, as attenuation along a beam does.
    """
    height, width = mask.shape
    px_per_mm = 1.0 / site.pixel_spacing_mm
    rows = np.arange(height, dtype=float)[:, None]
    chord = mask.sum(axis=0).astype(float)
    lesion_cols = np.flatnonzero(chord)
    bottom_rows = height - 1 - np.argmax(mask[::-1], axis=0)
    bottom = np.interp(np.arange(width), lesion_cols, bottom_rows[lesion_cols])
    profile = ndimage.gaussian_filter1d(chord / chord.max(), 0.5 * px_per_mm)
    onset = np.clip((rows - bottom[None, :]) / px_per_mm + 0.5, 0.0, 1.0)
    log_gain = texture.posterior * profile[None, :] * onset

    # Refraction at the smooth lateral edges throws thin shadows straight down.
    edges = np.array([lesion_cols[0], lesion_cols[-1]], dtype=float)
    middle = np.flatnonzero(mask.any(axis=1)).mean()
    streaks = np.exp(-0.5 * ((np.arange(width)[None, :, None] - edges) / 2.5) ** 2).sum(-1)
    below_middle = np.clip((rows - middle) / px_per_mm, 0.0, 1.0)
    return np.exp(log_gain) * (1.0 - margin.edge_shadow * streaks * below_middle)


def depth_gain(site: SiteProfile, rng: np.random.Generator) -> np.ndarray:
    """Column vector of residual attenuation after TGC, with slight TGC slider ripple."""
    depth_mm = np.arange(site.shape[0])[:, None] * site.pixel_spacing_mm
    attenuation_db = site.attenuation_db_per_cm * depth_mm / 10.0
    ripple_db = 1.0 * np.sin(2 * np.pi * depth_mm / rng.uniform(12, 20) + rng.uniform(0, 6.3))
    return 10.0 ** ((ripple_db - attenuation_db) / 20.0)


@lru_cache(maxsize=8)
def _psf_transfer(shape: tuple[int, int], sigma_px: tuple[float, float]) -> np.ndarray:
    """Gaussian PSF transfer function, scaled so unit echo gives unit mean power."""
    fy = fft.fftfreq(shape[0])[:, None]
    fx = fft.fftfreq(shape[1])[None, :]
    transfer = np.exp(-2 * np.pi**2 * ((sigma_px[0] * fy) ** 2 + (sigma_px[1] * fx) ** 2))
    # Parseval: sum(h^2) = mean(|H|^2) with numpy's unnormalised forward FFT.
    return (transfer / math.sqrt(np.mean(transfer**2))).astype(np.float32)


def speckle_envelope(
    echo: np.ndarray,
    site: SiteProfile,
    rng: np.random.Generator,
    reflectors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Envelope of fully developed speckle for an echo amplitude map.

    Complex Gaussian scatterers (many sub-resolution scatterers per cell) scaled by the echo
    amplitude are convolved with the site's PSF; the modulus is Rayleigh distributed with
    RMS ``echo``. ``reflectors`` (rows, cols, amplitudes) add strong point targets, e.g.
    microcalcifications, which show as bright specks of PSF size.
    """
    # Single precision halves the FFT cost; 8-bit output needs no more.
    noise = rng.standard_normal((2, *echo.shape), dtype=np.float32)
    scatterers = (noise[0] + 1j * noise[1]) * (echo / math.sqrt(2.0)).astype(np.float32)
    if reflectors is not None:
        rows, cols, amplitude = reflectors
        scatterers[rows, cols] += amplitude * np.exp(1j * rng.uniform(0, 2 * np.pi, len(rows)))
    transfer = _psf_transfer(echo.shape, site.speckle_sigma_px)
    return np.abs(fft.ifft2(fft.fft2(scatterers) * transfer))


def log_compress(envelope: np.ndarray, site: SiteProfile) -> np.ndarray:
    """Scanner display: 20 log10, post-processing, gain and dynamic range, onto 8 bits."""
    level_db = 20.0 * np.log10(envelope + 1e-6)
    # Smoothing after the log, as scanners do, softens the deep speckle nulls.
    level_db = ndimage.gaussian_filter(level_db, site.display_smoothing_px)
    floor_db = site.white_db - site.dynamic_range_db
    grey = 255.0 * (level_db - floor_db) / site.dynamic_range_db
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def _calcifications(
    mask_margin_px: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point reflectors well inside the lesion (microcalcifications)."""
    rows, cols = np.nonzero(mask_margin_px < -3.0)
    if count == 0 or len(rows) == 0:
        return np.array([], dtype=int), np.array([], dtype=int), np.array([])
    pick = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    return rows[pick], cols[pick], rng.uniform(2.0, 5.0, len(pick))


# ---------------------------------------------------------------------------------------
# Colour Doppler: vessels as curves, coloured by signed velocity inside the colour box.
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# Readers: repeat delineations as perturbed outlines.
# ---------------------------------------------------------------------------------------
def perturb_lesion(
    lesion: Lesion,
    rng: np.random.Generator,
    radial_sd_px: float,
    shift_sd_px: float,
    spicule_traced: tuple[float, float],
) -> Lesion:
    """Another reader's outline of the same lesion.

    A smooth random radial perturbation (orders 1-6, RMS ``radial_sd_px``), a small shift
    of the centre, and spicules traced only to a random fraction of their length.
    """
    orders = np.arange(1, 7)
    relative_sd = radial_sd_px / float(np.mean(lesion.semi_axes))
    amplitudes = rng.normal(0.0, relative_sd * math.sqrt(2.0 / len(orders)), len(orders))
    extra = np.column_stack([orders, amplitudes, rng.uniform(0, 2 * np.pi, len(orders))])
    spicules = lesion.spicules.copy()
    spicules[:, 1] *= rng.uniform(*spicule_traced, len(spicules))
    center = (
        lesion.center[0] + rng.normal(0.0, shift_sd_px),
        lesion.center[1] + rng.normal(0.0, shift_sd_px),
    )
    return Lesion(
        center, lesion.semi_axes, lesion.tilt, np.vstack([lesion.harmonics, extra]), spicules
    )


def _mask_png(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 255, 0).astype(np.uint8)


@dataclass(frozen=True)
class CaseImages:
    """Everything drawn for one case (arrays ready to write)."""

    bmus: np.ndarray  # uint8 (H, W)
    cdus: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # uint8 (H, W), 0/255
    mask_reader2: np.ndarray | None
    mask_repeat: np.ndarray | None


def synthesize_case(case, seed: int, with_repeats: bool) -> CaseImages:
    """Draw one case from its row of :func:`plan_cohort` (a namedtuple from ``itertuples``:
    ``case_index``, ``site`` and the latent factors are used).

    Anatomy, speckle, Doppler and readers use separate streams of (seed, case index).
    """
    site = SITES[case.site]
    index = int(case.case_index)
    rng = _rng(seed, _CASE, index, _ANATOMY)
    layers = design_layers(site, rng)
    lesion, margin = design_lesion(case.morph, site, layers, rng)
    texture = design_texture(case.texture, rng)
    size_mm = 2.0 * float(np.mean(lesion.semi_axes)) * site.pixel_spacing_mm
    vessels = design_vessels(case.vasc, size_mm, rng)

    margin_px = lesion_margin_px(lesion, site.shape)
    mask = margin_px < 0
    echo = tissue_echogenicity(site, layers, rng)
    echo = add_lesion(echo, margin_px, margin, texture, site, rng)
    echo = echo * posterior_gain(mask, texture, margin, site) * depth_gain(site, rng)
    reflectors = _calcifications(margin_px, texture.n_calcifications, rng)
    envelope = speckle_envelope(echo, site, _rng(seed, _CASE, index, _SPECKLE), reflectors)
    bmus = log_compress(envelope, site)

    box = colour_box(mask, layers, site)
    velocity = render_flow(lesion, vessels, box, site, _rng(seed, _CASE, index, _DOPPLER))
    cdus = render_cdus(bmus, velocity, box)

    reader2 = repeat = None
    if with_repeats:
        readers = _rng(seed, _CASE, index, _READERS)
        px_per_mm = 1.0 / site.pixel_spacing_mm
        second = perturb_lesion(lesion, readers, 0.25 * px_per_mm, 0.15 * px_per_mm, (0.4, 1.0))
        again = perturb_lesion(lesion, readers, 0.1 * px_per_mm, 0.05 * px_per_mm, (0.75, 1.0))
        reader2 = _mask_png(lesion_margin_px(second, site.shape) < 0)
        repeat = _mask_png(lesion_margin_px(again, site.shape) < 0)
    return CaseImages(bmus, cdus, _mask_png(mask), reader2, repeat)


# ---------------------------------------------------------------------------------------
# Writing: images, manifest, latent table, preview.
# ---------------------------------------------------------------------------------------
def _save_png(array: np.ndarray, path: Path) -> None:
    # Speckle barely compresses; the fastest zlib level keeps writing cheap.
    Image.fromarray(array).save(path, compress_level=1)


def write_case(out_dir: Path, case_id: str, images: CaseImages) -> dict[str, str]:
    """Write one case's PNGs; return its manifest path cells (relative, '' when absent)."""
    files = {
        "bmus_image": (f"images/{case_id}_bmus.png", images.bmus),
        "bmus_mask": (f"masks/{case_id}_bmus_mask.png", images.mask),
        "cdus_image": (f"images/{case_id}_cdus.png", images.cdus),
        # The CDUS frame shares the B-mode geometry, so its mask is the same delineation.
        "cdus_mask": (f"masks/{case_id}_cdus_mask.png", images.mask),
        "bmus_mask_reader2": (f"masks/{case_id}_bmus_mask_reader2.png", images.mask_reader2),
        "bmus_mask_repeat": (f"masks/{case_id}_bmus_mask_repeat.png", images.mask_repeat),
    }
    cells = {}
    for column, (relative, array) in files.items():
        if array is None:
            cells[column] = ""
            continue
        _save_png(array, out_dir / relative)
        cells[column] = relative
    return cells


def _preview_cases(manifest: pd.DataFrame, n_cases: int) -> pd.DataFrame:
    """A few cases covering both labels and both sites, in case order."""
    groups = manifest.groupby(["site", "label"], sort=True)
    per_group = max(1, n_cases // max(groups.ngroups, 1))
    picked = groups.head(per_group)
    if len(picked) < n_cases:
        rest = manifest.drop(picked.index).head(n_cases - len(picked))
        picked = pd.concat([picked, rest])
    return picked.sort_index().head(n_cases)


def _contour(mask: np.ndarray) -> np.ndarray:
    """Outline pixels of a 0/255 mask, two pixels wide so it survives downscaling."""
    inside = mask > 0
    return ndimage.binary_dilation(inside & ~ndimage.binary_erosion(inside))


def write_preview(out_dir: Path, manifest: pd.DataFrame, n_cases: int = 8) -> Path:
    """Contact sheet: per case the B-mode with its mask contour, then the CDUS frame.

    Four columns (two cases per row); each pair is captioned with case, label and site.
    """
    tile_w, tile_h, caption_h = 250, 200, 16
    cases = _preview_cases(manifest, n_cases)
    n_rows = math.ceil(len(cases) / 2)
    sheet = Image.new("RGB", (4 * tile_w, n_rows * (tile_h + caption_h)), "black")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, case in enumerate(cases.itertuples(index=False)):
        bmus = np.asarray(Image.open(out_dir / case.bmus_image).convert("RGB")).copy()
        bmus[_contour(np.asarray(Image.open(out_dir / case.bmus_mask)))] = (0, 255, 0)
        cdus = Image.open(out_dir / case.cdus_image).convert("RGB")
        x = (k % 2) * 2 * tile_w
        y = (k // 2) * (tile_h + caption_h)
        for j, tile in enumerate((Image.fromarray(bmus), cdus)):
            sheet.paste(
                tile.resize((tile_w, tile_h), Image.Resampling.BILINEAR),
                (x + j * tile_w, y + caption_h),
            )
        stage = "N>=1" if case.label == 1 else "N0"
        draw.text(
            (x + 4, y + 2),
            f"{case.case_id}  {stage}  site {case.site}  {case.split}",
            fill="white",
            font=font,
        )
    path = out_dir / "preview.png"
    sheet.save(path)
    return path


def generate_cohort(
    out_dir: str | Path,
    n_patients: int = PAPER_PATIENTS,
    seed: int = 0,
    repeat_share: float = 0.3,
    preview: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write out_dir/manifest.csv plus the images it names; return the manifest path.

    Parameters
    ----------
    out_dir : folder to write into (created; files of an earlier run are overwritten).
    n_patients : cohort size; 450 reproduces the paper's 276 / 69 / 105 split.
    seed : the same seed gives byte-identical files.
    repeat_share : share of cases with reader-2 and reader-1 repeat masks.
    preview : also write ``preview.png``, a contact sheet of a few cases.
    progress : called as ``progress(done, total)`` after every case.
    """
    out_dir = Path(out_dir)
    for folder in ("images", "masks"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    plan = plan_cohort(n_patients, seed, repeat_share)
    cells = []
    # The matrix products are tiny: BLAS threads only add contention (measured 1.7x slower).
    with threadpool_limits(limits=1, user_api="blas"):
        for done, case in enumerate(plan.itertuples(index=False), start=1):
            images = synthesize_case(case, seed, with_repeats=bool(case.has_repeat))
            cells.append(write_case(out_dir, case.case_id, images))
            if progress is not None:
                progress(done, len(plan))
    manifest = pd.concat([plan, pd.DataFrame(cells, index=plan.index)], axis=1)
    manifest_path = out_dir / "manifest.csv"
    manifest.to_csv(manifest_path, columns=list(MANIFEST_COLUMNS), index=False)
    plan.to_csv(
        out_dir / "latent.csv", columns=list(LATENT_COLUMNS), index=False, float_format="%.6f"
    )
    if preview:
        write_preview(out_dir, manifest)
    return manifest_path
