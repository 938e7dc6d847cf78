"""Cross-fitted deep features: K fold CNNs, so no training case is embedded by a CNN that
learnt from it.

The final CNN is fine-tuned on every labelled training case (it embeds validation, testing
and new cases, and nightly runs use it). Beside it, K fold CNNs: the training cases are split
into K folds by patient (``patient_key``), stratified on the label
(:class:`sklearn.model_selection.StratifiedGroupKFold`, shuffled with ``seed``); fold CNN
``k`` is fine-tuned (:func:`~tasks.features.cnn.train.finetune`: same start weights, its own
early-stopping share drawn from its own training part) on the other K-1 folds and embeds
fold ``k``'s cases, every mask variant of them. Reads ``cohort`` rows; writes the fold
models like any fine-tuned CNN (``models/cnn/<fold version>/``) and the case -> fold model
map next to the final model (``models/cnn/<final version>/crossfit.json``; it holds case
ids, so it stays in the store and never goes to MLflow).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sklearn.model_selection import StratifiedGroupKFold

from tasks.config import Settings
from tasks.data import uris
from tasks.data.store import FeatureStore
from tasks.features.cnn.checkpoints import MODELS, model_uri
from tasks.features.cnn.crops import has_cdus
from tasks.features.cnn.runtime import Logger, worker_name
from tasks.features.cnn.train import finetune
from tasks.features.imaging import case_value

logger = logging.getLogger(__name__)

CROSSFIT = "crossfit"
IN_SAMPLE = "in-sample"
MAP_FILE = "crossfit.json"  # next to the final model's model.pth


# -- folds -----------------------------------------------------------------------------------
def patient_of(case: Mapping[str, Any]) -> str:
    """The case's patient (``patient_key``; the case itself where the key is missing)."""
    return str(case_value(case, "patient_key") or case["case_id"])


def assign_folds(cases: Sequence[Mapping[str, Any]], k: int, seed: int) -> list[int]:
    """Fold (0..k-1) of every case: grouped by patient, stratified on the label, seeded.

    Patients are numbered by first appearance (the callers' case order), so the folds do not
    depend on the secret pseudonym key's values.

    Raises
    ------
    ValueError
        Fewer patients than folds, or a fold left empty.
    """
    if k < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, not {k}")
    labels = np.array([int(case_value(c, "label")) for c in cases])
    groups = pd.factorize(pd.Series([patient_of(c) for c in cases]))[0]
    n_patients = len(set(groups.tolist()))
    if n_patients < k:
        raise ValueError(
            f"{k} CNN folds need at least {k} patients; the training rows have {n_patients}"
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = np.full(len(cases), -1)
    for i, (_, held) in enumerate(splitter.split(np.zeros((len(cases), 1)), labels, groups)):
        folds[held] = i
    empty = sorted(set(range(k)) - set(folds.tolist()))
    if empty or (folds < 0).any():
        raise ValueError(f"CNN folds {[f + 1 for f in empty]} of {k} hold no case")
    return folds.tolist()


def fold_parts(
    cases: Sequence[Mapping[str, Any]], fold: int, k: int, seed: int
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """``(training part, held-out part)`` of fold ``fold`` (1..k)."""
    if not 1 <= fold <= k:
        raise ValueError(f"fold {fold} is not in 1..{k}")
    folds = assign_folds(cases, k, seed)
    train = [c for c, f in zip(cases, folds, strict=True) if f != fold - 1]
    held = [c for c, f in zip(cases, folds, strict=True) if f == fold - 1]
    return train, held


def finetune_fold(
    cases: Sequence[Mapping[str, Any]],
    fold: int,
    settings: Settings,
    store: FeatureStore,
    start: str,
    table_versions: Mapping[str, int | None] | None = None,
    log: Logger | None = None,
) -> dict[str, Any]:
    """Fine-tune fold CNN ``fold`` (1..``cnn_folds``) on the other folds' cases; save it.

    ``cases`` are all labelled training rows (the final model's); the fold's own are held
    out. Returns the fold model's meta: :func:`~tasks.features.cnn.train.finetune`'s, with
    ``crossfit`` (fold, folds, seed) and ``held_out_case_ids`` (which stay in the store).
    """
    out = log or logger
    k, seed = settings.cnn_folds, settings.seed
    train, held = fold_parts(cases, fold, k, seed)
    out.info("cnn fold %d/%d: %d fit cases, %d held out", fold, k, len(train), len(held))
    extra = {
        "crossfit": {"fold": fold, "folds": k, "seed": seed},
        "held_out_case_ids": [str(c["case_id"]) for c in held],
    }
    # The final model's streams (all training cases), so every deep column has one width.
    dual = has_cdus(cases)
    return finetune(train, settings, store, start, table_versions, out, extra, dual)


# -- the case -> fold model map ----------------------------------------------------------------
def _trained_on(meta: Mapping[str, Any]) -> set[str]:
    return {*meta.get("fit_case_ids", ()), *meta.get("early_stopping_case_ids", ())}


def crossfit_map(final: Mapping[str, Any], folds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The case -> fold model map of a final model and its fold models, checked.

    Raises
    ------
    ValueError
        A fold model learnt from a case it holds out, a case is held out twice, or the
        held-out cases are not exactly the final model's training cases.
    """
    cases: dict[str, str] = {}
    for meta in folds:
        version, held = meta["version"], [str(c) for c in meta["held_out_case_ids"]]
        leaked = sorted(_trained_on(meta) & set(held))
        if leaked:
            raise ValueError(f"fold model {version} was trained on held-out cases {leaked[:5]}")
        twice = sorted(set(held) & set(cases))
        if twice:
            raise ValueError(f"cases {twice[:5]} are held out by two fold models")
        cases |= dict.fromkeys(held, version)
    expected = _trained_on(final)
    if set(cases) != expected:
        missing, extra = sorted(expected - set(cases)), sorted(set(cases) - expected)
        raise ValueError(
            f"fold models of {final['version']} hold out other cases than it trained on "
            f"(missing {missing[:5]}, extra {extra[:5]})"
        )
    return {
        "mode": CROSSFIT,
        "folds": len(folds),
        "final_model": final["version"],
        "fold_models": [meta["version"] for meta in folds],
        "cases": dict(sorted(cases.items())),
    }


def map_path(final_version: str) -> str:
    """Store-relative path of the map (what the CNN meta and a model bundle carry)."""
    return "/".join((*MODELS, final_version, MAP_FILE))


def save_crossfit(store: FeatureStore, mapping: Mapping[str, Any]) -> str:
    """Write the map next to its final model; returns its store-relative path."""
    path = map_path(mapping["final_model"])
    store.write_bytes(json.dumps(mapping, indent=2).encode(), *path.split("/"))
    return path


def load_crossfit(store: FeatureStore, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The map a CNN meta's ``crossfit`` summary points to (its ``mapping`` path)."""
    uri = store.uri(*str(summary["mapping"]).split("/"))
    if not uris.exists(uri):
        raise FileNotFoundError(f"cross-fitting map {uri} not found")
    with uris.open_file(uri) as handle:
        return json.loads(handle.read().decode())


def record_crossfit(
    store: FeatureStore,
    final: Mapping[str, Any],
    folds: Sequence[Mapping[str, Any]],
    settings: Settings,
) -> dict[str, Any]:
    """The final model's meta with its ``crossfit`` summary (mode, folds, fold model
    versions, the map's store-relative path); in cross-fit mode the map is written first.
    The summary holds no case id: it may go to MLflow and into a model bundle."""
    if settings.cnn_crossfit == IN_SAMPLE:
        summary: dict[str, Any] = {"mode": IN_SAMPLE, "folds": None, "fold_models": []}
    else:
        mapping = crossfit_map(final, folds)
        summary = {
            "mode": CROSSFIT,
            "folds": mapping["folds"],
            "fold_models": mapping["fold_models"],
            "mapping": save_crossfit(store, mapping),
        }
    return {**final, "crossfit": summary}


def held_out_cohorts(
    cohort: pd.DataFrame, mapping: Mapping[str, Any], store: FeatureStore
) -> list[tuple[str, pd.DataFrame]]:
    """``(fold model URI, its held-out rows of cohort)`` for every fold model: what it embeds."""
    by_version: dict[str, list[str]] = {}
    for case, version in mapping["cases"].items():
        by_version.setdefault(version, []).append(case)
    return [
        (model_uri(store, version), cohort[cohort["case_id"].astype(str).isin(by_version[version])])
        for version in mapping["fold_models"]
        if version in by_version
    ]


def fold_numbers(settings: Settings) -> list[int]:
    """The folds a retrain fine-tunes: 1..K in cross-fit mode, none in-sample."""
    return list(range(1, settings.cnn_folds + 1)) if settings.cnn_crossfit == CROSSFIT else []


# -- Prefect wrappers ------------------------------------------------------------------------
@task(name="finetune-cnn-fold", cache_policy=NO_CACHE)
def finetune_fold_task(
    cases: list[dict[str, Any]],
    fold: int,
    settings: Settings,
    start: str,
    table_versions: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """One fold CNN on a GPU-resource worker (CUDA when present); returns its meta."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)  # fine-tunes run one at a time per GPU worker
    meta = finetune_fold(
        cases,
        fold,
        settings,
        FeatureStore(settings.store),
        start,
        table_versions,
        log=get_run_logger(),
    )
    meta["worker"] = worker_name()
    return meta


record_crossfit_task = task(record_crossfit, name="record-crossfit", cache_policy=NO_CACHE)
