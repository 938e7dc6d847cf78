"""Ingest: validate a manifest, assign splits and store the ``cohort`` and ``quarantine`` rows.

Reads a cohort manifest (through :mod:`tasks.data.validate`) and the stored ``cohort``
table (the splits patients already have); writes new case versions to ``cohort`` and new
problems to ``quarantine``, both insert-only, and returns an :class:`IngestReport`. Also
:func:`with_perturbation`, which every later stage applies to the current cohort
(:func:`tasks.data.tables.current_cohort`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Settings
from tasks.data.schema import REPEAT_COLUMNS
from tasks.data.splits import assign_splits
from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, QUARANTINE
from tasks.data.validate import validate_manifest

log = logging.getLogger(__name__)


def with_perturbation(cohort: pd.DataFrame, settings: Settings) -> Settings:
    """Settings whose ``perturb_repeats`` is on only when the cohort needs it: when no
    current case has a reader-2 or repeat delineation (perturbed masks then stand in for
    them in the ICC filter). A cohort with real repeats is not extracted twice."""
    repeats = [c for c in REPEAT_COLUMNS if c in cohort]
    has_repeats = bool(repeats) and bool(cohort[repeats].notna().any().any())
    return settings.model_copy(
        update={"perturb_repeats": settings.perturb_repeats and not has_repeats}
    )


@dataclass
class IngestReport:
    """What one ingest did: rows read, valid, new versions, quarantined, splits, version."""

    manifest: str
    run_id: str
    rows_in: int
    valid: int
    new_versions: int
    quarantined: int
    quarantine_new: int
    splits: dict[str, int]
    cohort_version: int | None
    problems: dict[str, list[str]]
    unknown_columns: list[str] = field(default_factory=list)  # names, never values

    def summary(self) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in sorted(self.splits.items()))
        unknown = len(self.unknown_columns)
        return (
            f"ingest: {self.rows_in} rows, {self.valid} valid "
            f"({self.new_versions} new case versions), {self.quarantined} quarantined; "
            f"splits: {splits or 'none'}"
            + (f"; {unknown} unknown manifest column(s) not read" if unknown else "")
        )


def ingest(manifest: str, store: FeatureStore, settings: Settings, run_id: str) -> IngestReport:
    """Validate a manifest and write ``cohort`` and ``quarantine`` (both insert-only)."""
    stored = store.read(COHORT)  # patients' splits and case ids are checked against it
    validated = validate_manifest(
        manifest, settings, run_id, progress=_log_progress("validated", every=50), stored=stored
    )
    cohort = assign_splits(validated.cohort, stored, settings)
    new_versions = store.insert_new(COHORT, cohort)
    quarantine_new = store.insert_new(QUARANTINE, validated.quarantine)
    report = IngestReport(
        manifest=validated.manifest,
        run_id=run_id,
        rows_in=validated.rows_in,
        valid=len(cohort),
        new_versions=new_versions,
        quarantined=int(validated.quarantine["manifest_row"].nunique()),
        quarantine_new=quarantine_new,
        splits=cohort["split"].value_counts().to_dict(),
        cohort_version=store.version(COHORT),
        problems=validated.problems_by_case,
        unknown_columns=validated.unknown_columns,
    )
    log.info(report.summary())
    return report


def _log_progress(what: str, every: int) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            log.info("%s %d/%d manifest rows", what, done, total)

    return progress


# -- Prefect wrappers (thin: names, retries; the logic is above) ---------------------------
ingest_task = task(ingest, name="ingest", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
