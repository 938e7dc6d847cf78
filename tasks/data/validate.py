"""Ingest, step 1: read a cohort manifest and check every row and every file it names.

Reads a manifest (CSV or Parquet, local or ``s3://``) and the images and masks its rows
name (under the configured data roots; a row's files: :mod:`tasks.data.row_files`).
Writes nothing: returns a :class:`Validated`, the typed ``cohort`` rows (one per valid
case version, with resolved paths and content hashes) and the ``quarantine`` rows (one per
problem: case, column, file, reason). A bad row never stops the run; only a manifest that
cannot be read at all raises :class:`ManifestError`.

DICOM images (:mod:`tasks.data.dicom`) are checked header first: a cine loop needs its
frame column (``bmus_frame``, ``cdus_frame``), and the pixel size comes from the file
when the manifest has none (the ultrasound region holding the lesion, else PixelSpacing);
``pixel_spacing_source`` records which. A manifest value more than 5% off the file's is
held back with both values.

Hostile input: every file's header is checked against the settings' limits before its
pixels are decoded (:mod:`tasks.data.headers`); ids are NFC; unknown columns are warned
about by name; a failure of the storage (an errno ``OSError`` other than a file gone or
forbidden) raises so the ingest task retries, a file gone mid-ingest quarantines its case.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from tasks.config import Settings
from tasks.data import schema, uris
from tasks.data.headers import Limits
from tasks.data.quarantine import quarantine_frame
from tasks.data.row_files import Problem, read_files, unchanged_files
from tasks.data.schema import (
    FILE_COLUMNS,
    FRAME_COLUMNS,
    ID_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
    normalise_id,
)
from tasks.data.secrets import pseudonym_key
from tasks.data.splits import check_patient_splits
from tasks.data.tables import COHORT, current_cohort

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """The manifest itself cannot be read (not a single row can be judged)."""


@dataclass
class Validated:
    """Result of validating a manifest: the good case versions and the problems."""

    cohort: pd.DataFrame
    quarantine: pd.DataFrame
    rows_in: int
    manifest: str
    problems_by_case: dict[str, list[str]] = field(default_factory=dict)
    unknown_columns: list[str] = field(default_factory=list)  # names only, never values


Result = tuple[dict[str, object], list[Problem]]  # one row's resolved record and problems


def _empty(value: object) -> bool:
    # None, NaN, pd.NA (a Parquet manifest's missing string) or blank: schema.known's "no".
    return not schema.known(value)


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


def pseudonymise(patient_id: str, key: bytes) -> str:
    """A stable key for grouping splits by patient that does not reveal the patient id.

    HMAC-SHA256 with the secret pseudonymisation key (:mod:`tasks.data.secrets`): without
    the key, a short id (a 7-digit MRN) cannot be found by hashing every candidate.
    """
    return hmac.new(key, f"sln-patient:{patient_id}".encode(), hashlib.sha256).hexdigest()[:32]


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


def _parse_frame(value: object, column: str) -> int | None:
    if _empty(value):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        number = float("nan")
    if not number.is_integer() or number < 1:
        raise ValueError(f"{column} must be a frame number (1 = first), got {value!r}")
    return int(number)


def validate_row(
    row: Mapping[str, object],
    base: str,
    roots: list[str],
    limits: Limits | None = None,
    previous: Mapping[str, object] | None = None,
) -> Result:
    """Check one manifest row: values, paths, files (each file's header against ``limits``,
    default the settings' defaults, before its pixels are decoded). ``previous``: the stored
    latest version of this case; when every file is the one it was validated with, the
    pixels are not decoded again (:func:`tasks.data.row_files.unchanged_files`). Returns
    the resolved record and problems; raises only for a failure of the storage (retried)."""
    limits = limits or Limits.defaults()
    problems: list[Problem] = []
    record: dict[str, object] = {}
    for col in REQUIRED_COLUMNS:
        if _empty(row.get(col)):
            problems.append(Problem(col, f"missing value for required column {col}"))
    for col in ID_COLUMNS:
        record[col] = normalise_id(row.get(col))
        if reason := schema.id_problem(col, record[col]):
            problems.append(Problem(col, reason))
    record["patient_id"] = record["patient_id"] or record["case_id"]
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
    for col in FRAME_COLUMNS.values():
        try:
            record[col] = _parse_frame(row.get(col), col)
        except ValueError as exc:
            problems.append(Problem(col, str(exc)))
            record[col] = None
    split = row.get("split")
    if _empty(split):
        record["split"] = None
    elif str(split).strip().lower() in SPLITS:
        record["split"] = str(split).strip().lower()
    else:
        problems.append(
            Problem("split", f"split must be one of {', '.join(SPLITS)} or empty, got {split!r}")
        )

    files: dict[str, str] = {}  # column -> resolved URI, once its path passed the checks
    for col in FILE_COLUMNS:
        raw = row.get(col)
        record[col] = record[f"{col}_sha256"] = None
        if _empty(raw):
            continue
        if any(unicodedata.category(ch) == "Cc" for ch in str(raw).strip()):
            problems.append(Problem(col, "path holds control characters (a NUL, a newline)"))
            continue
        uri = uris.resolve(str(raw).strip(), base)
        if not uris.within(uri, roots):
            problems.append(Problem(col, "path outside the configured data roots", uri))
            continue
        files[col] = uri
    if not unchanged_files(files, record, previous, limits, problems):
        read_files(files, row, record, limits, problems)
    return record, problems


def _version_payload(record: Mapping[str, object]) -> str:
    keys = ["site", "patient_id", "exam_date", "label", "split", "pixel_spacing_mm"]
    # Frames only when given, so a PNG case keeps the version it had before they existed.
    keys += [col for col in FRAME_COLUMNS.values() if record.get(col) is not None]
    keys += [f"{col}_sha256" for col in FILE_COLUMNS]
    return json.dumps({k: record.get(k) for k in keys}, sort_keys=True, default=str)


def case_version(record: Mapping[str, object], key: bytes) -> str:
    """Identity of one version of a case: its files' content and its clinical fields.

    Keyed (HMAC) like the pseudonym: the payload holds the raw ``patient_id``, which the
    other fields of a stored row would otherwise let anyone recover by trial.
    """
    payload = _version_payload(record)
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()[:20]


def _check_duplicates(results: list[Result]) -> None:
    """Duplicate case_id: identical rows collapse to one; conflicting rows are all held back,
    since we cannot know which one is right."""
    by_case: dict[str, list[int]] = {}
    for i, (record, _) in enumerate(results):
        if record["case_id"]:
            by_case.setdefault(str(record["case_id"]), []).append(i)
    for case, idx in by_case.items():
        if len(idx) < 2:
            continue
        versions = {_version_payload(results[i][0]) for i in idx}
        held = idx[1:] if len(versions) == 1 else idx
        for i in held:
            what = "repeats" if len(versions) == 1 else "conflicts with"
            others = ", ".join(str(j + 1) for j in idx if j != i)
            results[i][1].append(
                Problem("case_id", f"duplicate case_id {case}: row {what} manifest row(s) {others}")
            )


def _latest_versions(
    stored: pd.DataFrame | None, rows: list[dict[str, object]]
) -> dict[str, dict[str, object]]:
    """The stored latest version of each case the manifest names (case id -> row)."""
    if stored is None or stored.empty:
        return {}
    ids = {normalise_id(row.get("case_id")) for row in rows}
    latest = current_cohort(stored[stored["case_id"].isin(ids)])
    return latest.set_index("case_id").to_dict("index")


def _check_stored_cases(
    results: list[Result], latest: Mapping[str, Mapping[str, object]], key: bytes
) -> None:
    """A ``case_id`` the store already holds for another patient or another site is held
    back: a new version of a case may change its files or clinical fields, not whose or
    where it is (two different cases under one id would mix their features and splits).
    ``latest``: :func:`_latest_versions`."""
    for record, problems in results:
        held = latest.get(str(record["case_id"])) if record["case_id"] else None
        if held is None:
            continue
        if held["patient_key"] != pseudonymise(str(record["patient_id"]), key):
            what = "another patient"
        elif record["site"] is not None and held["site"] != record["site"]:
            what = f"site {held['site']}"
        else:
            continue
        problems.append(
            Problem("case_id", f"case_id {record['case_id']} is already stored for {what}")
        )


def _unknown_columns(columns: Iterable[object]) -> list[str]:
    """Columns validation does not read, warned about by name (never by value: an extra
    column may hold identifiers such as PatientName), with the known one each is near."""
    unknown = schema.unknown_columns(columns)
    if unknown:
        shown = [ascii(n[:60]) + (f" (did you mean {c}?)" if c else "") for n, c in unknown.items()]
        log.warning(
            "manifest has %d unknown column(s), not read: %s", len(shown), ", ".join(shown[:20])
        )
    return list(unknown)


def validate_manifest(
    manifest: str,
    settings: Settings,
    run_id: str,
    progress: Callable[[int, int], None] | None = None,
    stored: pd.DataFrame | None = None,
) -> Validated:
    """Validate every row of a manifest; never raises for a bad row, only for an unreadable
    manifest. ``stored``: the ``cohort`` table so far (its patients' splits and its case ids
    are checked against; None: a manifest judged on its own)."""
    key = pseudonym_key(settings.store)  # before anything is read: no key, no run
    manifest = manifest if uris.is_uri(manifest) else uris.resolve(manifest, ".")
    frame = read_manifest(manifest)
    base = uris.parent(manifest)
    roots = [uris.normalise_root(r) for r in (settings.data_roots or [base])]
    entries: list[dict[str, object]] = []
    unknown = _unknown_columns(frame.columns)

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    rows = frame.to_dict("records")
    if missing:
        # Every row is unusable; each still gets its quarantine entry so nothing is silent.
        for i, row in enumerate(rows, start=1):
            entries.append(
                {
                    "case_id": normalise_id(row.get("case_id")),
                    "manifest_row": i,
                    "column": missing[0],
                    "file": manifest,
                    "reason": f"manifest has no column {', '.join(missing)}",
                }
            )
        return Validated(
            cohort=COHORT.typed(pd.DataFrame()),
            quarantine=quarantine_frame(entries, "ingest", manifest, run_id),
            rows_in=len(rows),
            manifest=manifest,
            unknown_columns=unknown,
        )

    results: list[Result] = []
    latest = _latest_versions(stored, rows)  # unchanged files of these are not decoded again
    with ThreadPoolExecutor(max_workers=4) as pool:
        limits = Limits.of(settings)
        futures = [
            pool.submit(
                validate_row, row, base, roots, limits, latest.get(normalise_id(row.get("case_id")))
            )
            for row in rows
        ]
        for done, fut in enumerate(futures, start=1):
            results.append(fut.result())
            if progress:
                progress(done, len(rows))

    _check_duplicates(results)
    _check_stored_cases(results, latest, key)
    keyed = [
        {"patient_key": pseudonymise(str(r["patient_id"]), key), "split": r.get("split")}
        for r, _ in results
    ]
    leaks = check_patient_splits(keyed, stored)
    for (_, problems), leak in zip(results, leaks, strict=True):
        if leak:
            problems.append(Problem("split", leak))

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
                        "reason": p.reason[:500],
                    }
                )
            continue
        record["case_version"] = case_version(record, key)
        record["patient_key"] = pseudonymise(str(record.pop("patient_id")), key)
        record["split_source"] = "manifest" if record["split"] else None
        good.append(record)

    cohort = pd.DataFrame(good)
    cohort["manifest"] = manifest
    cohort["run_id"] = run_id
    cohort["ingested_at"] = pd.Timestamp(datetime.now(UTC))
    return Validated(
        cohort=COHORT.typed(cohort),
        quarantine=quarantine_frame(entries, "ingest", manifest, run_id),
        rows_in=len(rows),
        manifest=manifest,
        problems_by_case=problems_by_case,
        unknown_columns=unknown,
    )
