"""Planning and committing feature work: which cases still need it, and how a chunk is stored.

A case needs radiomics when one of its mask variants has no row for the current
(image hash, mask hash, params hash): new cases, changed files and changed settings are
extracted, everything else is skipped. Embeddings plan the same way with the model
version in place of the params hash. Backfills narrow the cases by ``exam_date`` and
may force re-extraction of the window. With ``perturb`` (``settings.perturb_repeats``) a
case without repeat delineations also needs its ``perturbed`` rows, keyed by the derived
mask id (:func:`tasks.data.schema.case_variants`).

A flow run plans once (:class:`WorkPlan`) and keeps the plan in the store
(``<store>/plans/<run_id>.json``) for the Dask subflow, so flow parameters stay small and
free of file paths; workers return a :class:`ChunkResult`, which the flow process (the one
writer of the tables) commits with :func:`commit_chunk`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import code_version
from tasks.data import uris
from tasks.data.quarantine import quarantine_frame
from tasks.data.schema import case_variants
from tasks.data.store import FeatureStore
from tasks.data.tables import QUARANTINE, TableSpec

Case = dict[str, Any]  # one current ``cohort`` row


@dataclass
class Plan:
    todo: list[Case]  # cohort rows (current versions) to process
    skipped: int  # cases already complete in the store
    window: int  # cases considered (after the exam-date window)

    def chunks(self, chunk_size: int, n_workers: int) -> list[list[Case]]:
        """Chunks of cases, at least two per worker so no worker idles at the end."""
        if not self.todo:
            return []
        size = max(1, min(chunk_size, math.ceil(len(self.todo) / (2 * max(1, n_workers)))))
        return [self.todo[i : i + size] for i in range(0, len(self.todo), size)]


@dataclass(frozen=True)
class Window:
    """Which cases a run considers: an ``exam_date`` window, and whether to redo them."""

    exam_from: str | None = None
    exam_to: str | None = None
    force: bool = False


def in_window(cohort: pd.DataFrame, window: Window) -> pd.DataFrame:
    """Cases whose ISO ``exam_date`` lies in [exam_from, exam_to] (inclusive)."""
    if not window.exam_from and not window.exam_to:
        return cohort
    dates = cohort["exam_date"].fillna("")
    keep = dates != ""
    if window.exam_from:
        keep &= dates >= window.exam_from
    if window.exam_to:
        keep &= dates <= window.exam_to
    return cohort[keep]


def variant_keys(case: Case, perturb: bool = False) -> list[tuple[str, str, str, str]]:
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
    window: Window = Window(),
    perturb: bool = False,
) -> Plan:
    """Cases of ``cohort`` lacking a stored row for ``version`` in any mask variant
    (``perturbed`` included with ``perturb``)."""
    considered = in_window(cohort, window)
    cases = considered.astype(object).where(considered.notna(), None).to_dict("records")
    if window.force or stored.empty:
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


@dataclass
class ChunkResult:
    """What a worker returns for one chunk: feature rows, and the cases it could not do."""

    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]  # entries for the quarantine table
    seconds: float = 0.0  # time the worker spent on the chunk


@dataclass
class CommitCounts:
    """What one kind of feature work stored in a run (summed over its chunks)."""

    rows: int = 0
    cases: int = 0
    failed: int = 0
    chunks: int = 0
    seconds: float = 0.0
    commit_seconds: float = 0.0  # time the flow process spent committing the chunks
    workers: list[str] = field(default_factory=list)

    def add(self, other: CommitCounts) -> None:
        self.rows += other.rows
        self.cases += other.cases
        self.failed += other.failed
        self.chunks += other.chunks
        self.seconds += other.seconds
        self.commit_seconds += other.commit_seconds
        self.workers = sorted(set(self.workers) | set(other.workers))


def commit_chunk(
    spec: TableSpec,
    stage: str,
    result: ChunkResult,
    store: FeatureStore,
    run_id: str,
    force: bool = False,
) -> CommitCounts:
    """Write one chunk of feature rows and its failures: the single writer's commit.

    Rows get their lineage (run id, code version, the spec's timestamp column) and are
    written on the spec's keys (insert-only, or replace with ``force``); failures go to
    ``quarantine`` with ``stage``.
    """
    frame = pd.DataFrame(result.rows)
    if not frame.empty:
        frame["run_id"] = run_id
        frame["code_version"] = code_version()
        frame[spec.timestamp] = pd.Timestamp.now(tz="UTC")
    if force:
        merged = store.upsert(spec, frame)
    else:
        merged = {"inserted": store.insert_new(spec, frame), "updated": 0}
    store.insert_new(QUARANTINE, quarantine_frame(result.failures, stage, None, run_id))
    return CommitCounts(
        rows=merged["inserted"] + merged["updated"],
        cases=int(frame["case_id"].nunique()) if not frame.empty else 0,
        failed=len(result.failures),
        chunks=1,
        seconds=result.seconds,
        workers=sorted({str(row["worker"]) for row in result.rows if "worker" in row}),
    )


# -- one plan per run, kept in the store for the Dask subflow ------------------------------
@dataclass
class EmbeddingWork:
    plan: Plan
    model: str  # fine-tuned model URI or start-weights spec
    version: str
    dual: bool


@dataclass
class WorkPlan:
    """Everything one run will extract: planned once, from one read of ``cohort``."""

    radiomics: Plan | None = None
    params: dict[str, Any] | None = None  # validated pyradiomics params
    embeddings: EmbeddingWork | None = None
    window: Window = Window()

    @property
    def has_work(self) -> bool:
        return bool(
            (self.radiomics and self.radiomics.todo)
            or (self.embeddings and self.embeddings.plan.todo)
        )


PLANS = "plans"


def save_plan(store: FeatureStore, run_id: str, work: WorkPlan) -> str:
    """Keep the run's plan in the store (JSON: no code runs when it is read back)."""
    return store.write_bytes(
        json.dumps(asdict(work), default=_plain).encode(), PLANS, f"{run_id}.json"
    )


def _plain(value: object) -> object:
    # numpy scalars keep their number; anything else (timestamps) becomes its text.
    return value.item() if isinstance(value, np.generic) else str(value)


def load_plan(store: FeatureStore, run_id: str) -> WorkPlan:
    with uris.open_file(store.uri(PLANS, f"{run_id}.json")) as handle:
        raw = json.loads(handle.read())
    embeddings = raw.get("embeddings")
    return WorkPlan(
        radiomics=Plan(**raw["radiomics"]) if raw.get("radiomics") else None,
        params=raw.get("params"),
        embeddings=(
            EmbeddingWork(**{**embeddings, "plan": Plan(**embeddings["plan"])})
            if embeddings
            else None
        ),
        window=Window(**raw.get("window", {})),
    )


def drop_plan(store: FeatureStore, run_id: str) -> None:
    """Remove a finished run's plan: the tables hold what it did."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(store.uri(PLANS, f"{run_id}.json"))
    if fs.exists(path):
        fs.rm(path)
