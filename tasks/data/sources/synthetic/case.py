"""One synthetic case: from its row of the cohort plan to the arrays ready to write.

:func:`synthesize_case` orchestrates the steps: anatomy and lesion
(:mod:`~tasks.data.sources.synthetic.anatomy`), the B-mode frame
(:mod:`~tasks.data.sources.synthetic.bmode`), the colour Doppler frame
(:mod:`~tasks.data.sources.synthetic.doppler`) and, where planned, the repeat
delineations (:mod:`~tasks.data.sources.synthetic.masks`). Anatomy, speckle, Doppler and
readers each draw from their own stream of (seed, case index). Reads and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tasks.data.sources.synthetic.anatomy import design_layers, design_lesion, lesion_margin_px
from tasks.data.sources.synthetic.bmode import (
    add_lesion,
    calcifications,
    depth_gain,
    design_texture,
    log_compress,
    posterior_gain,
    speckle_envelope,
    tissue_echogenicity,
)
from tasks.data.sources.synthetic.doppler import (
    colour_box,
    design_vessels,
    render_cdus,
    render_flow,
)
from tasks.data.sources.synthetic.latent import SITES
from tasks.data.sources.synthetic.masks import mask_png, repeat_masks
from tasks.data.sources.synthetic.streams import (
    ANATOMY,
    CASE,
    DOPPLER,
    READERS,
    SPECKLE,
    stream,
)


class PlannedCase(Protocol):
    """The fields of a :func:`~tasks.data.sources.synthetic.plan.plan_cohort` row that a
    case is drawn from (a row of ``plan.itertuples(index=False)`` has them)."""

    @property
    def case_index(self) -> int: ...
    @property
    def site(self) -> str: ...
    @property
    def morph(self) -> float: ...
    @property
    def texture(self) -> float: ...
    @property
    def vasc(self) -> float: ...


@dataclass(frozen=True)
class CaseImages:
    """Everything drawn for one case (arrays ready to write)."""

    bmus: np.ndarray  # uint8 (H, W)
    cdus: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # uint8 (H, W), 0/255
    mask_reader2: np.ndarray | None
    mask_repeat: np.ndarray | None


def synthesize_case(case: PlannedCase, seed: int, with_repeats: bool) -> CaseImages:
    """Draw one case from its row of the cohort plan (``case_index``, ``site`` and the
    latent factors are used).

    Anatomy, speckle, Doppler and readers use separate streams of (seed, case index).
    """
    site = SITES[case.site]
    index = int(case.case_index)
    rng = stream(seed, CASE, index, ANATOMY)
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
    reflectors = calcifications(margin_px, texture.n_calcifications, rng)
    envelope = speckle_envelope(echo, site, stream(seed, CASE, index, SPECKLE), reflectors)
    bmus = log_compress(envelope, site)

    box = colour_box(mask, layers, site)
    velocity = render_flow(lesion, vessels, box, site, stream(seed, CASE, index, DOPPLER))
    cdus = render_cdus(bmus, velocity, box)

    reader2 = repeat = None
    if with_repeats:
        reader2, repeat = repeat_masks(lesion, site, stream(seed, CASE, index, READERS))
    return CaseImages(bmus, cdus, mask_png(mask), reader2, repeat)
