"""Planning step: which cases still need work, from what the store already holds.

A case needs radiomics when one of its mask variants has no row for the current
(image hash, mask hash, params hash): new cases, changed files and changed settings are
extracted, everything else is skipped. Embeddings plan the same way with the model
version in place of the params hash. Backfills narrow the cases by ``exam_date`` and
may force re-extraction of the window. With ``perturb`` (``settings.perturb_repeats``) a
case without repeat delineations also needs its ``perturbed`` rows, keyed by the derived
mask id (:func:`tasks.data.ingest.case_variants`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from tasks.config import code_version
from tasks.data.ingest import quarantine_frame
from tasks.data.schema import case_variants
from tasks.data.store import FeatureStore


@dataclass
class Plan:
    todo: list[dict]  # cohort rows (current versions) to process
    skipped: int  # cases already complete in the store
    window: int  # cases considered (after the exam-date window)

    def chunks(self, chunk_size: int, n_workers: int) -> list[list[dict]]:
        """Chunks of cases, at least two per worker so no worker idles at the end."""
        if not self.todo:
            return []
        size = max(1, min(chunk_size, math.ceil(len(self.todo) / (2 * max(1, n_workers)))))
        return [self.todo[i : i + size] for i in range(0, len(self.todo), size)]


def in_window(cohort: pd.DataFrame, exam_from: str | None, exam_to: str | None) -> pd.DataFrame:
    """Cases whose ISO ``exam_date`` lies in [exam_from, exam_to] (inclusive)."""
    if not exam_from and not exam_to:
        return cohort
    dates = cohort["exam_date"].fillna("")
    keep = dates != ""
    if exam_from:
        keep &= dates >= exam_from
    if exam_to:
        keep &= dates <= exam_to
    return cohort[keep]


def variant_keys(case: dict, perturb: bool = False) -> list[tuple[str, str, str, str]]:
    """(case_id, mask_variant, image hash, mask hash) for every mask variant a case has;
    with ``perturb``, its ``perturbed`` variant too when it has no real repeat."""
    return [
        (case["case_id"], variant.name, case["bmus_image_sha256"], variant.mask_sha256)
        for variant in case_variants(case, perturb)
        if variant.mask_sha256
    ]


def plan_cases(
    cohort: pd.DataFrame,
    stored: pd.DataFrame,
    version_column: str,
    version: str,
    exam_from: str | None = None,
    exam_to: str | None = None,
    force: bool = False,
    perturb: bool = False,
) -> Plan:
    """Cases of ``cohort`` lacking a stored row for ``version`` in any mask variant
    (``perturbed`` included with ``perturb``)."""
    window = in_window(cohort, exam_from, exam_to)
    cases = window.astype(object).where(window.notna(), None).to_dict("records")
    if force or stored.empty:
        return Plan(todo=cases, skipped=0, window=len(cases))
    current = stored[stored[version_column] == version]
    done = set(
        zip(
            current["case_id"],
            current["mask_variant"],
            current["image_sha256"],
            current["mask_sha256"],
            strict=True,
        )
    )
    todo = [case for case in cases if not set(variant_keys(case, perturb)) <= done]
    return Plan(todo=todo, skipped=len(cases) - len(todo), window=len(cases))


def commit_rows(
    table: str,
    keys: list[str],
    stage: str,
    rows: list[dict],
    failures: list[dict],
    store: FeatureStore,
    run_id: str,
    force: bool,
    stamp: str,
) -> dict[str, int]:
    """Write one chunk of feature rows and its failures: the single writer's commit.

    Rows get their lineage (run id, code version, a ``stamp`` time column) and are written
    on ``keys`` (insert-only, or replace with ``force``); failures go to ``quarantine``.
    """
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["run_id"] = run_id
        frame["code_version"] = code_version()
        frame[stamp] = pd.Timestamp.now(tz="UTC")
    if force:
        merged = store.upsert(table, frame, keys)
    else:
        merged = {"inserted": store.insert_new(table, frame, keys), "updated": 0}
    store.insert_new(
        "quarantine", quarantine_frame(failures, stage, None, run_id), ["quarantine_id"]
    )
    return {
        "rows": merged["inserted"] + merged["updated"],
        "cases": int(frame["case_id"].nunique()) if not frame.empty else 0,
        "failed": len(failures),
    }
