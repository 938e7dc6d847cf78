"""Ingest, step 2: the training / testing / validation split of every case, by patient.

Reads the validated ``cohort`` rows and the stored ``cohort`` table (the splits patients
already have); writes nothing: returns the rows with every empty ``split`` filled and its
``split_source`` (``manifest``, ``store`` or ``derived``). Also finds patients whose
manifest splits disagree (a leak between splits), which validation quarantines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tasks.config import Settings


def _check_patient_splits(records: Sequence[Mapping[str, object]]) -> list[str | None]:
    """Per record, why it cannot be kept when its patient's cases span different splits
    (they would leak between them); None for a record whose patient is in one split."""
    splits: dict[str, set[str]] = {}
    for record in records:
        if record.get("split"):
            splits.setdefault(str(record["patient_id"]), set()).add(str(record["split"]))
    out: list[str | None] = []
    for record in records:
        seen = splits.get(str(record["patient_id"]), set())
        leak = f"patient's cases span splits {', '.join(sorted(seen))} (leakage)"
        out.append(leak if len(seen) > 1 else None)
    return out


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
    todo = cohort["split"].isna()
    for i in cohort.index[todo]:
        key = cohort.at[i, "patient_key"]
        if key in known:
            cohort.at[i, "split"] = known[key]
            cohort.at[i, "split_source"] = "store"
        elif cohort.at[i, "site"] in settings.validation_sites:
            cohort.at[i, "split"] = "validation"
            cohort.at[i, "split_source"] = "derived"
    todo = cohort["split"].isna()
    if todo.any():
        cohort.loc[todo, "split"] = _train_test(cohort.loc[todo], settings)
        cohort.loc[todo, "split_source"] = "derived"
    return cohort


def _train_test(rows: pd.DataFrame, settings: Settings) -> list[str]:
    """``training`` or ``testing`` per row: stratified by label, grouped by patient, seeded."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_folds = max(2, round(1 / settings.test_share))
    labels = rows["label"].fillna(-1).astype(int).to_numpy()
    groups = rows["patient_key"].to_numpy()
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
