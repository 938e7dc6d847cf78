"""Ingest, step 2: the training / testing / validation split of every case, by patient.

Reads the validated ``cohort`` rows and the stored ``cohort`` table (the splits patients
already have); writes nothing: returns the rows with every empty ``split`` filled and its
``split_source`` (``manifest``, ``store`` or ``derived``). Also finds patients whose
splits would leak (:func:`check_patient_splits`: two splits in the manifest, or a manifest
split against the store), which validation quarantines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tasks.config import Settings


def stored_splits(stored: pd.DataFrame) -> dict[str, set[str]]:
    """``patient_key`` -> every split its stored case versions carry (one, unless the store
    already leaks)."""
    if stored is None or stored.empty:
        return {}
    rows = stored.dropna(subset=["split"])
    return {
        str(k): set(map(str, v)) for k, v in rows.groupby("patient_key")["split"].unique().items()
    }


def check_patient_splits(
    records: Sequence[Mapping[str, object]], stored: pd.DataFrame | None = None
) -> list[str | None]:
    """Per record (``patient_key``, ``split``), why it cannot be kept without a leak, or None.

    A patient's cases share one split, across the manifest and the store. A record is held
    back when its patient, in this manifest, gives two splits, or gives a split for some
    cases and none for others (which split the empty ones belong to would be a guess); when
    the manifest's split differs from the split the patient's stored cases have; or when
    the patient's stored cases already span splits. Never resolved silently: the caller
    quarantines every such record with the reason.
    """
    known = stored_splits(stored) if stored is not None else {}
    given: dict[str, set[str]] = {}
    empty: set[str] = set()
    for record in records:
        key = str(record["patient_key"])
        if record.get("split"):
            given.setdefault(key, set()).add(str(record["split"]))
        else:
            empty.add(key)
    out: list[str | None] = []
    for record in records:
        key = str(record["patient_key"])
        mine, theirs = given.get(key, set()), known.get(key, set())
        if len(mine) > 1:
            out.append(f"patient's cases in this manifest span splits {_names(mine)} (leakage)")
        elif mine and key in empty:
            out.append(
                f"patient's cases in this manifest mix split {_names(mine)} with empty splits "
                "(give all of them the same split, or none)"
            )
        elif len(theirs) > 1:
            out.append(f"patient's stored cases already span splits {_names(theirs)} (leakage)")
        elif mine and theirs and mine != theirs:
            out.append(
                f"manifest split {_names(mine)} conflicts with the patient's stored split "
                f"{_names(theirs)} (leakage)"
            )
        else:
            out.append(None)
    return out


def _names(splits: set[str]) -> str:
    return ", ".join(sorted(splits))


def assign_splits(cohort: pd.DataFrame, stored: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Fill empty splits, grouped by patient, without ever moving an assigned patient.

    Manifest splits win. A patient already in the store keeps its split (a nightly run must
    not move yesterday's training patient into testing). New patients at a configured
    external site go to ``validation``; the others are split ``1 - test_share`` /
    ``test_share`` into training/testing, stratified by label, grouped by patient, seeded.
    """
    cohort = cohort.copy()
    known: dict[str, str] = {}
    if not stored.empty:
        latest = stored.dropna(subset=["split"]).sort_values("ingested_at")
        known = dict(zip(latest["patient_key"], latest["split"], strict=True))
    external = set(
        cohort.loc[cohort["site"].isin(settings.validation_sites), "patient_key"].astype(str)
    )
    todo = cohort["split"].isna()
    for i in cohort.index[todo]:
        key = cohort.at[i, "patient_key"]
        if key in known:
            cohort.at[i, "split"] = known[key]
            cohort.at[i, "split_source"] = "store"
        elif key in external:  # a patient seen at an external site is external throughout
            cohort.at[i, "split"] = "validation"
            cohort.at[i, "split_source"] = "derived"
    todo = cohort["split"].isna()
    if todo.any():
        cohort.loc[todo, "split"] = _train_test(cohort.loc[todo], settings)
        cohort.loc[todo, "split_source"] = "derived"
    leaking = cohort.groupby("patient_key")["split"].nunique()
    if (leaking > 1).any():  # validation quarantines these first; reaching here is a bug
        raise ValueError(f"{int((leaking > 1).sum())} patient(s) would span splits")
    return cohort


def _train_test(rows: pd.DataFrame, settings: Settings) -> list[str]:
    """``training`` or ``testing`` per row: stratified by label, grouped by patient, seeded."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_folds = max(2, round(1 / settings.test_share))
    labels = rows["label"].fillna(-1).astype(int).to_numpy()
    # Patients numbered by first appearance: the folds must not depend on the pseudonym
    # key's values (a secret, different per store), or the same cohort would split differently.
    groups = pd.factorize(rows["patient_key"])[0]
    counts = np.bincount(labels + 1)
    if len(np.unique(groups)) >= n_folds and counts[counts > 0].min() >= n_folds:
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=settings.seed)
        _, test_idx = next(folds.split(np.zeros(len(rows)), labels, groups))
        out = np.full(len(rows), "training", dtype=object)
        out[test_idx] = "testing"
        return list(out)
    # Too few new patients to stratify (a quiet night): a seeded hash per patient.
    return [
        "testing"
        if int(hashlib.sha256(f"{settings.seed}:{g}".encode()).hexdigest(), 16) % 1000
        < settings.test_share * 1000
        else "training"
        for g in groups
    ]
