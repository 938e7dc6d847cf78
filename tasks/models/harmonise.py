"""Scanner harmonisation: the options a retrain compares, and how it chooses one.

The options (``SLN_HARMONISATION``; :data:`OPTIONS`, simplest first): ``none``; ``image``,
intensity normalisation before extraction (a second radiomics pass of the cohort flow with
``radiomics_params_normalised``, :func:`image_pass_settings`); ``combat``,
:class:`~tasks.models.combat.ComBat` on the handcrafted features inside each model
(``FamilyFeatures(combat=True)``). Under ``auto`` retrain fits all three and keeps the one
:func:`choose_option` picks from COMB's AUC on internal testing
(tasks/evaluation/harmonisation.py compares them).

No scikit-learn here: the cohort flow imports this module, and every run's start-up with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tasks.config import Settings

SITE_COLUMN = "meta:site"  # the batch of each row, carried in the feature matrices
# The harmonisation options, simplest first (nothing learned; a fixed per-image transform;
# a learned per-site transform): a tie on internal testing goes to the earlier one.
OPTIONS = ("none", "image", "combat")
CHOICE_SET = "testing"  # internal testing: the external validation set never chooses
TIE = 0.0005  # AUC differences below this (rounding to 3 decimals) are ties


def harmonisation_options(settings: Settings) -> tuple[str, ...]:
    """The options a retrain fits: all three under 'auto', else the one set."""
    return OPTIONS if settings.harmonisation == "auto" else (settings.harmonisation,)


def image_pass_settings(settings: Settings) -> Settings | None:
    """The settings of the image-normalised radiomics pass, when an option needs it."""
    if "image" not in harmonisation_options(settings):
        return None
    return settings.model_copy(update={"radiomics_params": settings.radiomics_params_normalised})


def choose_option(auc: Mapping[str, float]) -> str:
    """The option with the best COMB AUC on internal testing (``auc``: option -> AUC, in
    :data:`OPTIONS` order); within :data:`TIE` of the best, the simplest. An undefined AUC
    (one class) never wins over a defined one."""
    defined = {k: v for k, v in auc.items() if np.isfinite(v)}
    if not defined:
        return next(iter(auc))
    best = max(defined.values())
    return next(k for k in auc if k in defined and defined[k] >= best - TIE)
