"""B-mode frame of a synthetic case: echogenicity map, speckle, log compression.

:func:`design_texture` turns the ``texture`` factor into a :class:`Texture` (internal
heterogeneity, microcalcifications, posterior shadowing or enhancement). The frame is then
made in the order a scanner would: an echogenicity (backscatter amplitude) map of the
tissue (:func:`tissue_echogenicity`) with the lesion blended in (:func:`add_lesion`),
posterior and depth gains, complex scatterers plus point reflectors convolved with the
site's PSF (:func:`speckle_envelope`), and finally :func:`log_compress` onto 8 bits.
Reads and writes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft, ndimage
from scipy.special import expit

from tasks.data.sources.synthetic.anatomy import Layers, Margin
from tasks.data.sources.synthetic.latent import SiteProfile, severity
from tasks.data.sources.synthetic.noise import smooth_curve, smooth_noise


@dataclass(frozen=True)
class Texture:
    """Inside the lesion and behind it."""

    level: float  # mean echo amplitude relative to glandular tissue
    heterogeneity: float  # sd of the log echo amplitude inside the lesion
    n_calcifications: int
    posterior: float  # log-amplitude gain below the lesion: < 0 shadow, > 0 enhancement


def design_texture(texture: float, rng: np.random.Generator) -> Texture:
    """Inside and behind the lesion from the ``texture`` factor.

    Higher ``texture``: more heterogeneous internal echoes, more microcalcifications, and
    posterior shadowing instead of enhancement.
    """
    hetero = severity(texture, rng)
    return Texture(
        level=0.08 * math.exp(rng.normal(0.0, 0.25)),
        heterogeneity=0.1 + 1.2 * hetero,
        n_calcifications=int(rng.poisson(10.0 * hetero**3)),
        posterior=float(np.clip(3.0 * (0.45 - hetero) + rng.normal(0.0, 0.25), -2.0, 1.0)),
    )


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
    fat = 0.12 * np.exp(0.3 * smooth_noise(rng, shape, (3 * px_per_mm, 5 * px_per_mm)))
    for _ in range(rng.integers(2, 5)):
        phase = rng.uniform(0, 2 * np.pi)
        period = rng.uniform(15, 40) * px_per_mm
        path = layers.skin + (layers.fat - layers.skin) * (
            0.5 + 0.5 * np.sin(2 * np.pi * np.arange(width) / period + phase)
        )
        strength = rng.uniform(0.4, 0.9) * np.clip(0.3 + smooth_curve(rng, width), 0, 1)
        fat = fat + strength[None, :] * _ridge(rows, path, 1.0)
    # The gel at the transducer face echoes nothing.
    skin = np.where(rows < 0.15 * px_per_mm, 0.02, skin)
    return np.where(rows < layers.skin, skin, fat)


def _gland_echo(shape: tuple[int, int], px_per_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Fibroglandular tissue: heterogeneous, with soft-edged fat lobules, both stretched
    along the layer."""
    gland = np.exp(0.45 * smooth_noise(rng, shape, (1.2 * px_per_mm, 3 * px_per_mm)))
    lobule_field = smooth_noise(rng, shape, (2 * px_per_mm, 4.5 * px_per_mm))
    lobule = expit((lobule_field - 0.9) / 0.15)
    return gland * (1.0 - lobule) + 0.13 * lobule


def _muscle_echo(
    rows: np.ndarray, width: int, px_per_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Pectoral muscle for the bottom rows ``rows``: low echo with bright, oblique, broken
    striations (the perimysium)."""
    cols = np.arange(width, dtype=float)[None, :]
    slope = rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.3)
    period = rng.uniform(1.0, 1.6) * px_per_mm
    warp = 3.0 * smooth_curve(rng, width)[None, :]
    striae = (0.5 + 0.5 * np.sin(2 * np.pi * (rows - slope * cols + warp) / period)) ** 6
    noise = smooth_noise(rng, (len(rows), width), (px_per_mm, 4 * px_per_mm))
    broken = np.clip(0.6 + 0.5 * noise, 0, 1)
    return 0.18 * (1.0 + 3.5 * striae * broken)


def tissue_echogenicity(site: SiteProfile, layers: Layers, rng: np.random.Generator) -> np.ndarray:
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
    het = smooth_noise(rng, echo.shape, 1.5 * px_per_mm)
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


def calcifications(
    mask_margin_px: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point reflectors well inside the lesion (microcalcifications)."""
    rows, cols = np.nonzero(mask_margin_px < -3.0)
    if count == 0 or len(rows) == 0:
        return np.array([], dtype=int), np.array([], dtype=int), np.array([])
    pick = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    return rows[pick], cols[pick], rng.uniform(2.0, 5.0, len(pick))
