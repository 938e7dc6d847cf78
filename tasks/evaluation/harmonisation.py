"""Scanner harmonisation compared on one run: the three models fitted under each option
(``none``; ``image``: intensities normalised before extraction; ``combat``: ComBat on the
handcrafted features), each scored on every set, and the option the run keeps.

The choice reads COMB's AUC on the internal testing set only
(:func:`tasks.models.harmonise.choose_option`; within 0.0005 the simpler option wins). The
external validation AUCs are shown so that a reader sees how each option moves them; they
never choose. Reads nothing, writes nothing: the retrain flow fits, this step compares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.evaluation.evaluate import evaluation_sets, predictions
from tasks.evaluation.metrics import auc_ci
from tasks.models.features import FeatureData
from tasks.models.harmonise import CHOICE_SET, OPTIONS, TIE, choose_option
from tasks.models.pipelines import FittedModel

RULE = (
    f"highest COMB AUC on the internal {CHOICE_SET} set; options within {TIE} of it are ties, "
    f"won by the simpler ({' < '.join(OPTIONS)}); external validation never chooses"
)

Fits = Mapping[str, tuple[dict[str, FittedModel], FeatureData]]


def option_metrics(
    models: dict[str, FittedModel], data: FeatureData
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {set: {"auc", "auc_ci", "n", "n_pos"}}}`` on the linear predictor (AUC NaN
    for a set with one class)."""
    sets = evaluation_sets(predictions(models, data), models)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in models:
        out[name] = {}
        for split, rows in sets.items():
            y = rows["label"].astype(int).to_numpy()
            if np.unique(y).size == 2:
                auc, lo, hi = auc_ci(y, rows[f"lp_{name}"].to_numpy())
            else:
                auc, lo, hi = math.nan, math.nan, math.nan
            out[name][split] = {
                "auc": float(auc),
                "auc_ci": (float(lo), float(hi)),
                "n": int(y.size),
                "n_pos": int(y.sum()),
            }
    return out


def compare_harmonisation(
    fits: Fits, setting: str, unavailable: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Every option's AUCs, the chosen option and why (``report.json["harmonisation"]``).

    ``fits``: option -> (fitted models, the feature data they were fitted and scored on),
    in :data:`~tasks.models.harmonise.OPTIONS` order; ``setting``: the run's
    ``harmonisation`` setting; ``unavailable``: options that could not be fitted, with why.
    """
    options = {option: option_metrics(models, data) for option, (models, data) in fits.items()}
    testing = {
        option: by_model["COMB"].get(CHOICE_SET, {}).get("auc", math.nan)
        for option, by_model in options.items()
    }
    chosen = choose_option(testing)
    combat = {}
    if "combat" in fits:
        combat = dict((fits["combat"][0]["COMB"].fit_info or {}).get("harmonisation") or {})
    return {
        "setting": setting,
        "chosen": chosen,
        "rule": RULE if len(fits) > 1 else f"set by SLN_HARMONISATION={setting}",
        "choice_set": CHOICE_SET,
        "options": options,
        "params_hash": {option: data.lineage["params_hash"] for option, (_, data) in fits.items()},
        "combat": combat,
        "unavailable": dict(unavailable or {}),
    }


compare_harmonisation_task = task(
    compare_harmonisation, name="compare-harmonisation", cache_policy=NO_CACHE
)
