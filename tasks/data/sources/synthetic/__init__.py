"""Synthetic two-hospital breast ultrasound cohort (``docs/synthetic-cohort.md``).

One module per step: :mod:`.streams` (random streams), :mod:`.latent` (latent label model,
site profiles), :mod:`.plan` (the cohort plan), :mod:`.noise` (smooth random fields),
:mod:`.anatomy` (layers, lesion outline), :mod:`.bmode` (texture, speckle, log
compression), :mod:`.doppler` (colour box, vessels, flow colours), :mod:`.masks`
(repeat delineations), :mod:`.case` (one case end to end), :mod:`.cohort` (writing the
export) and :mod:`.preview` (contact sheet).
"""

from tasks.data.sources.synthetic.cohort import generate_cohort
from tasks.data.sources.synthetic.latent import (
    FACTORS,
    LATENT_COLUMNS,
    SITES,
    VALIDATION_SITE,
    SiteProfile,
)
from tasks.data.sources.synthetic.plan import plan_cohort

__all__ = [
    "FACTORS",
    "LATENT_COLUMNS",
    "SITES",
    "VALIDATION_SITE",
    "SiteProfile",
    "generate_cohort",
    "plan_cohort",
]
