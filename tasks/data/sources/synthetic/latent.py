"""The latent model of the synthetic cohort: patient factors, label, and the two sites.

Three correlated patient factors, ``morph`` (margin irregularity, spicules, size,
orientation), ``texture`` (internal heterogeneity, calcifications, posterior shadowing)
and ``vasc`` (Doppler vascularity), drive both the N-stage logit and, through
:func:`severity`, the images. The two :class:`SiteProfile` entries of :data:`SITES` give
each hospital its scanner character. Documented in ``docs/synthetic-cohort.md``: change
both together. Reads and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit

FACTORS = ("morph", "texture", "vasc")
FACTOR_CORRELATION = 0.3
INTERCEPT = -1.2
COEFFICIENTS = (1.5, 1.2, 1.5)
UNEXPLAINED_SD = 0.6
LATENT_COLUMNS = ("case_id", "site", "label", *FACTORS, "unexplained", "logit")


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


def severity(factor: float, rng: np.random.Generator) -> float:
    """Map a latent factor to [0, 1] with nuisance: how strongly its signs show."""
    return float(expit(1.3 * factor + rng.normal(0.0, 0.5)))
