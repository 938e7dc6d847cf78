"""Cohort step: the manifest schema, row validation with quarantine, and splits.

Reads a cohort manifest (CSV or Parquet, local or ``s3://``), checks every row and every
file it names, and returns two tables: ``cohort`` (one row per valid case version, with
resolved paths and content hashes) and ``quarantine`` (one row per problem: case, column,
file, reason). A bad row never stops the run. :func:`ingest` writes both to the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import SimpleITK as sitk
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Settings
from tasks.data import uris
from tasks.data.schema import (
    FILE_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
)
from tasks.data.store import FeatureStore

log = logging.getLogger(__name__)

COHORT_SCHEMA = {
    "case_id": "string",
    "case_version": "string",
    "patient_key": "string",
    "site": "string",
    "exam_date": "string",
    "label": "Int8",
    "split": "string",
    "split_source": "string",
    **{col: "string" for col in FILE_COLUMNS},
    **{f"{col}_sha256": "string" for col in FILE_COLUMNS},
    "pixel_spacing_mm": "float64",
    "manifest": "string",
    "run_id": "string",
    "ingested_at": "datetime64[us, UTC]",
}
QUARANTINE_SCHEMA = {
    "quarantine_id": "string",
    "stage": "string",
    "case_id": "string",
    "manifest_row": "Int64",
    "column": "string",
    "file": "string",
    "reason": "string",
    "manifest": "string",
    "run_id": "string",
    "detected_at": "datetime64[us, UTC]",
}


class ManifestError(ValueError):
    """The manifest itself cannot be read (not a single row can be judged)."""


@dataclass
class Problem:
    column: str
    reason: str
    file: str | None = None


@dataclass
class Validated:
    """Result of validating a manifest: the good case versions and the problems."""

    cohort: pd.DataFrame
    quarantine: pd.DataFrame
    rows_in: int
    manifest: str
    problems_by_case: dict[str, list[str]] = field(default_factory=dict)


def _empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def read_manifest(manifest: str) -> pd.DataFrame:
    """Read a CSV or Parquet manifest as strings (no type guessing: we validate ourselves)."""
    try:
        with uris.open_file(manifest) as fh:
            if manifest.endswith(".parquet"):
                frame = pd.read_parquet(fh).astype("string")
            else:
                frame = pd.read_csv(fh, dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest {manifest}: file not found") from exc
    except Exception as exc:  # a broken CSV/Parquet names the file and the parser's reason
        raise ManifestError(f"manifest {manifest}: cannot be read: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def pseudonymise(patient_id: str, seed: int) -> str:
    """A stable key for grouping splits by patient that does not reveal the patient id."""
    return hashlib.sha256(f"sln-patient:{seed}:{patient_id}".encode()).hexdigest()[:16]


def _parse_label(value: object) -> int | None:
    if _empty(value):
        return None
    text = str(value).strip()
    if text in {"0", "0.0"}:
        return 0
    if text in {"1", "1.0"}:
        return 1
    raise ValueError(f"label must be 0 (N0), 1 (N>=1) or empty, got {text!r}")


def _parse_date(value: object) -> str | None:
    if _empty(value):
        return None
    text = str(value).strip()
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise ValueError(f"exam_date must be an ISO date (YYYY-MM-DD), got {text!r}") from exc


def _parse_spacing(value: object) -> float | None:
    if _empty(value):
        return None
    spacing = float(str(value).strip())
    if not np.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"pixel_spacing_mm must be a positive number, got {value!r}")
    return spacing


def _read_array(uri: str) -> np.ndarray:
    """Read an image file into a numpy array (SimpleITK; object stores via a temp copy)."""
    from tasks.features.imaging import read_image  # imaging owns the one way to read pixels

    return sitk.GetArrayFromImage(read_image(uri))


def _grid(array: np.ndarray) -> tuple[int, ...]:
    # A colour image carries its channels last; the grid is what a mask must match.
    return array.shape[:-1] if array.ndim == 3 and array.shape[-1] in (3, 4) else array.shape


def check_mask(mask: np.ndarray, image_grid: tuple[int, ...]) -> str | None:
    """Reason a mask is unusable, or None: same grid, binary (0 + one value), not empty."""
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[-1])):
            return "mask is a colour image, not a binary mask"
        mask = mask[..., 0]
    if mask.shape != tuple(image_grid):
        return f"mask size {mask.shape[::-1]} does not match the image size {image_grid[::-1]}"
    values = np.unique(mask)
    if values.size > 2 or values[0] != 0 and values.size == 2:
        shown = ", ".join(str(v) for v in values[:6])
        return f"mask is not binary (values: {shown}{'...' if values.size > 6 else ''})"
    if not np.any(mask):
        return "mask is empty (no foreground pixel)"
    return None


def validate_row(
    row: dict[str, object], base: str, roots: list[str]
) -> tuple[dict[str, object], list[Problem]]:
    """Check one manifest row: values, paths, files. Returns the resolved record and problems."""
    problems: list[Problem] = []
    record: dict[str, object] = {}
    for col in REQUIRED_COLUMNS:
        if _empty(row.get(col)):
            problems.append(Problem(col, f"missing value for required column {col}"))
    record["case_id"] = None if _empty(row.get("case_id")) else str(row["case_id"]).strip()
    record["site"] = None if _empty(row.get("site")) else str(row["site"]).strip()
    patient = row.get("patient_id")
    record["patient_id"] = record["case_id"] if _empty(patient) else str(patient).strip()
    for col, parse in (("label", _parse_label), ("exam_date", _parse_date)):
        try:
            record[col] = parse(row.get(col))
        except ValueError as exc:
            problems.append(Problem(col, str(exc)))
    try:
        record["pixel_spacing_mm"] = _parse_spacing(row.get("pixel_spacing_mm"))
    except ValueError:
        problems.append(
            Problem(
                "pixel_spacing_mm",
                f"pixel_spacing_mm must be a positive number, got {row.get('pixel_spacing_mm')!r}",
            )
        )
    split = row.get("split")
    if _empty(split):
        record["split"] = None
    elif str(split).strip().lower() in SPLITS:
        record["split"] = str(split).strip().lower()
    else:
        problems.append(
            Problem("split", f"split must be one of {', '.join(SPLITS)} or empty, got {split!r}")
        )

    arrays: dict[str, np.ndarray] = {}
    for col, image_col in FILE_COLUMNS.items():
        raw = row.get(col)
        record[col] = record[f"{col}_sha256"] = None
        if _empty(raw):
            continue
        uri = uris.resolve(str(raw).strip(), base)
        if not uris.within(uri, roots):
            problems.append(Problem(col, "path outside the configured data roots", uri))
            continue
        try:
            if not uris.exists(uri):
                problems.append(Problem(col, "file not found", uri))
                continue
            array = _read_array(uri)
        except Exception as exc:
            problems.append(Problem(col, f"unreadable image: {exc}".splitlines()[0][:300], uri))
            continue
        if image_col is not None:
            if image_col not in arrays:
                if _empty(row.get(image_col)):
                    problems.append(Problem(col, f"mask given without {image_col}", uri))
                continue  # the image's own problem is reported once, under its column
            reason = check_mask(array, _grid(arrays[image_col]))
            if reason:
                problems.append(Problem(col, reason, uri))
                continue
        arrays[col] = array
        record[col] = uri
        record[f"{col}_sha256"] = uris.sha256(uri)
    return record, problems


def case_version(record: dict[str, object]) -> str:
    """Identity of one version of a case: its files' content and its clinical fields."""
    keys = ["site", "patient_id", "exam_date", "label", "split", "pixel_spacing_mm"]
    keys += [f"{col}_sha256" for col in FILE_COLUMNS]
    payload = json.dumps({k: record.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def quarantine_frame(
    entries: Iterable[dict[str, object]], stage: str, manifest: str | None, run_id: str
) -> pd.DataFrame:
    """Quarantine rows (stage, case, column, file, reason) with a stable id for dedup."""
    now = pd.Timestamp(datetime.now(UTC))
    rows = []
    for entry in entries:
        key = "|".join(
            str(entry.get(k)) for k in ("case_id", "manifest_row", "column", "file", "reason")
        )
        rows.append(
            {
                "quarantine_id": hashlib.sha256(f"{stage}|{manifest}|{key}".encode()).hexdigest()[
                    :24
                ],
                "stage": stage,
                "case_id": entry.get("case_id"),
                "manifest_row": entry.get("manifest_row"),
                "column": entry.get("column"),
                "file": entry.get("file"),
                "reason": entry.get("reason"),
                "manifest": manifest,
                "run_id": run_id,
                "detected_at": now,
            }
        )
    return typed(pd.DataFrame(rows, columns=list(QUARANTINE_SCHEMA)), QUARANTINE_SCHEMA)


def typed(frame: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    for col, dtype in schema.items():
        if col not in frame:
            frame[col] = pd.Series([None] * len(frame), dtype=dtype)
        elif dtype.startswith("datetime64"):
            frame[col] = pd.to_datetime(frame[col], utc=True).astype(dtype)
        else:
            frame[col] = frame[col].astype(dtype)
    return frame[list(schema)].reset_index(drop=True)


def validate_manifest(
    manifest: str,
    settings: Settings,
    run_id: str,
    progress: Callable[[int, int], None] | None = None,
) -> Validated:
    """Validate every row of a manifest; never raises for a bad row, only for an unreadable
    manifest."""
    manifest = manifest if uris.is_uri(manifest) else uris.resolve(manifest, ".")
    frame = read_manifest(manifest)
    base = uris.parent(manifest)
    roots = [uris.normalise_root(r) for r in (settings.data_roots or [base])]
    entries: list[dict[str, object]] = []

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    rows = frame.to_dict("records")
    if missing:
        # Every row is unusable; each still gets its quarantine entry so nothing is silent.
        for i, row in enumerate(rows, start=1):
            entries.append(
                {
                    "case_id": row.get("case_id") or None,
                    "manifest_row": i,
                    "column": missing[0],
                    "file": manifest,
                    "reason": f"manifest has no column {', '.join(missing)}",
                }
            )
        return Validated(
            cohort=typed(pd.DataFrame(), COHORT_SCHEMA),
            quarantine=quarantine_frame(entries, "ingest", manifest, run_id),
            rows_in=len(rows),
            manifest=manifest,
        )

    results: list[tuple[dict[str, object], list[Problem]]] = [None] * len(rows)  # type: ignore[list-item]
    done = 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {pool.submit(validate_row, row, base, roots): i for i, row in enumerate(rows)}
        for fut, i in futures.items():
            results[i] = fut.result()
            done += 1
            if progress:
                progress(done, len(rows))

    # Duplicate case_id: identical rows collapse to one; conflicting rows are all held back,
    # since we cannot know which one is right.
    by_case: dict[str, list[int]] = {}
    for i, (record, _) in enumerate(results):
        if record["case_id"]:
            by_case.setdefault(str(record["case_id"]), []).append(i)
    for case, idx in by_case.items():
        if len(idx) < 2:
            continue
        versions = {case_version(results[i][0]) for i in idx}
        held = idx[1:] if len(versions) == 1 else idx
        for i in held:
            what = "repeats" if len(versions) == 1 else "conflicts with"
            others = ", ".join(str(j + 1) for j in idx if j != i)
            results[i][1].append(
                Problem("case_id", f"duplicate case_id {case}: row {what} manifest row(s) {others}")
            )

    _check_patient_splits(results)

    good = []
    problems_by_case: dict[str, list[str]] = {}
    for i, (record, problems) in enumerate(results, start=1):
        if problems:
            problems_by_case.setdefault(str(record["case_id"]), []).extend(
                p.reason for p in problems
            )
            for p in problems:
                entries.append(
                    {
                        "case_id": record["case_id"],
                        "manifest_row": i,
                        "column": p.column,
                        "file": p.file,
                        "reason": p.reason,
                    }
                )
            continue
        record["case_version"] = case_version(record)
        record["patient_key"] = pseudonymise(str(record.pop("patient_id")), settings.seed)
        record["split_source"] = "manifest" if record["split"] else None
        good.append(record)

    cohort = pd.DataFrame(good)
    cohort["manifest"] = manifest
    cohort["run_id"] = run_id
    cohort["ingested_at"] = pd.Timestamp(datetime.now(UTC))
    return Validated(
        cohort=typed(cohort, COHORT_SCHEMA),
        quarantine=quarantine_frame(entries, "ingest", manifest, run_id),
        rows_in=len(rows),
        manifest=manifest,
        problems_by_case=problems_by_case,
    )


def _check_patient_splits(results: list[tuple[dict[str, object], list[Problem]]]) -> None:
    """A patient whose cases sit in different splits would leak between them."""
    splits: dict[str, set[str]] = {}
    for record, _ in results:
        if record.get("split"):
            splits.setdefault(str(record["patient_id"]), set()).add(str(record["split"]))
    for record, problems in results:
        seen = splits.get(str(record["patient_id"]), set())
        if len(seen) > 1:
            problems.append(
                Problem("split", f"patient's cases span splits {', '.join(sorted(seen))} (leakage)")
            )


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


def current_cohort(cohort: pd.DataFrame) -> pd.DataFrame:
    """The latest version of every case (older versions stay stored for lineage)."""
    if cohort.empty:
        return cohort
    ordered = cohort.sort_values(["ingested_at", "case_version"])
    return (
        ordered.drop_duplicates("case_id", keep="last")
        .sort_values("case_id")
        .reset_index(drop=True)
    )


@dataclass
class IngestReport:
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

    def summary(self) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in sorted(self.splits.items()))
        return (
            f"ingest {self.manifest}: {self.rows_in} rows, {self.valid} valid "
            f"({self.new_versions} new case versions), {self.quarantined} quarantined; "
            f"splits: {splits or 'none'}"
        )


def ingest(manifest: str, store: FeatureStore, settings: Settings, run_id: str) -> IngestReport:
    """Validate a manifest and write ``cohort`` and ``quarantine`` (both insert-only)."""
    validated = validate_manifest(
        manifest, settings, run_id, progress=_log_progress("validated", every=50)
    )
    stored = store.read("cohort")
    cohort = assign_splits(validated.cohort, stored, settings)
    new_versions = store.insert_new("cohort", cohort, keys=["case_id", "case_version"])
    quarantine_new = store.insert_new("quarantine", validated.quarantine, keys=["quarantine_id"])
    report = IngestReport(
        manifest=validated.manifest,
        run_id=run_id,
        rows_in=validated.rows_in,
        valid=len(cohort),
        new_versions=new_versions,
        quarantined=int(validated.quarantine["manifest_row"].nunique()),
        quarantine_new=quarantine_new,
        splits=cohort["split"].value_counts().to_dict(),
        cohort_version=store.version("cohort"),
        problems=validated.problems_by_case,
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


def with_perturbation(cohort: pd.DataFrame, settings: Settings) -> Settings:
    """Settings whose ``perturb_repeats`` is on only when the cohort needs it: when no
    current case has a reader-2 or repeat delineation (perturbed masks then stand in for
    them in the ICC filter). A cohort with real repeats is not extracted twice."""
    repeats = [c for c in ("bmus_mask_reader2", "bmus_mask_repeat") if c in cohort]
    has_repeats = bool(repeats) and bool(cohort[repeats].notna().any().any())
    return settings.model_copy(
        update={"perturb_repeats": settings.perturb_repeats and not has_repeats}
    )
