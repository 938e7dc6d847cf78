"""Repeat delineations of a synthetic case: reader 2 and the reader-1 repeat.

Reader 1's mask is the true outline. The other two are the same lesion outlined again,
perturbed by :func:`perturb_lesion` (a smooth radial wobble, a centre shift, spicules
traced short): reader 2 by more than reader 1 repeating herself, as in an inter- and
intra-observer study. Masks are uint8 0/255 on the B-mode grid. Reads and writes nothing.
"""

from __future__ import annotations

import math

import numpy as np

from tasks.data.sources.synthetic.anatomy import Lesion, lesion_margin_px
from tasks.data.sources.synthetic.latent import SiteProfile


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


def mask_png(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as the PNG convention: uint8, 0 background / 255 lesion."""
    return np.where(mask, 255, 0).astype(np.uint8)


def repeat_masks(
    lesion: Lesion, site: SiteProfile, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Reader-2 and reader-1 repeat masks of ``lesion`` (uint8 0/255), drawn from ``rng``.

    Reader 2: radial RMS 0.25 mm, centre shift sd 0.15 mm, spicules traced to 40-100 % of
    their length. Reader-1 repeat: 0.1 mm, 0.05 mm, 75-100 %.
    """
    px_per_mm = 1.0 / site.pixel_spacing_mm
    second = perturb_lesion(lesion, rng, 0.25 * px_per_mm, 0.15 * px_per_mm, (0.4, 1.0))
    again = perturb_lesion(lesion, rng, 0.1 * px_per_mm, 0.05 * px_per_mm, (0.75, 1.0))
    reader2 = mask_png(lesion_margin_px(second, site.shape) < 0)
    repeat = mask_png(lesion_margin_px(again, site.shape) < 0)
    return reader2, repeat
