"""Ingest, step 1: read a cohort manifest and check every row and every file it names.

Reads a manifest (CSV or Parquet, local or ``s3://``) and the images and masks its rows
name (under the configured data roots). Writes nothing: returns a :class:`Validated`, the
typed ``cohort`` rows (one per valid case version, with resolved paths and content hashes)
and the ``quarantine`` rows (one per problem: case, column, file, reason). A bad row never
stops the run; only a manifest that cannot be read at all raises :class:`ManifestError`.

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
import SimpleITK as sitk

from tasks.config import Settings
from tasks.data import dicom, headers, schema, uris
from tasks.data.headers import Limits
from tasks.data.quarantine import quarantine_frame
from tasks.data.schema import (
    FILE_COLUMNS,
    FRAME_COLUMNS,
    ID_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
    frame_column,
    normalise_id,
)
from tasks.data.secrets import pseudonym_key
from tasks.data.splits import check_patient_splits
from tasks.data.tables import COHORT
from tasks.features.imaging import as_2d, check_mask, error_reason, read_image, storage_error

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """The manifest itself cannot be read (not a single row can be judged)."""


@dataclass
class Problem:
    """One reason a manifest row is held back: the column at fault and, if any, its file."""

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


SPACING_TOLERANCE = 0.05  # a manifest spacing this far from the file's is a wrong value


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


def _read_image(uri: str, frame: object, frame_col: str, limits: Limits) -> sitk.Image:
    """One 2D frame of an image file, its header checked against ``limits`` first
    (:func:`tasks.features.imaging.read_image`; a one-slice volume loses its slice axis)."""
    return as_2d(read_image(uri, frame, frame_col, limits, at_ingest=True))


def _spacing(
    record: dict[str, object],
    mask: np.ndarray | None,
    header_mm: tuple[float, float] | None,
    limits: Limits,
    problems: list[Problem],
) -> None:
    """Set ``pixel_spacing_mm`` and ``pixel_spacing_source``: the manifest's value, else the
    B-mode file's (:func:`_file_spacing`); a manifest value more than 5% off the file's is
    held back with both values, and the value used must lie in ``spacing_range_mm``."""
    given = record.get("pixel_spacing_mm")
    record["pixel_spacing_source"] = "none" if given is None else "manifest"
    image = str(record.get("bmus_image") or "")
    try:
        found, source = headers.file_spacing(image, mask, header_mm)
    except dicom.DicomError as exc:  # non-square pixels matter only when the file's are used
        found, source = None, "none"
        if given is None:
            problems.append(Problem(exc.column or "bmus_image", exc.reason, image))
    if found is not None and given is None:
        record["pixel_spacing_mm"], record["pixel_spacing_source"] = found, source
    elif found is not None and abs(float(given) - found) > SPACING_TOLERANCE * found:
        where = {"us_region": "ultrasound region", "header": "image header"}.get(source)
        problems.append(
            Problem(
                "pixel_spacing_mm",
                f"pixel_spacing_mm {given:g} disagrees with the file's {found:.6g} mm "
                f"({where or 'PixelSpacing'}) by more than {SPACING_TOLERANCE:.0%}: correct "
                "the manifest value or leave it empty to use the file's",
                image,
            )
        )
    used = record.get("pixel_spacing_mm")
    where = str(record["pixel_spacing_source"]).replace("_", " ")
    if reason := headers.check_spacing(None if used is None else float(used), limits, where):
        problems.append(Problem("pixel_spacing_mm", reason, image))


def _unreadable(exc: BaseException) -> str:
    return f"unreadable image: {error_reason(exc)}"[:300]


def validate_row(
    row: Mapping[str, object], base: str, roots: list[str], limits: Limits | None = None
) -> Result:
    """Check one manifest row: values, paths, files (each file's header against ``limits``,
    default the settings' defaults, before its pixels are decoded). Returns the resolved
    record and problems; raises only for a failure of the storage (retried)."""
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

    images: dict[str, sitk.Image] = {}
    for col, image_col in FILE_COLUMNS.items():
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
        try:
            if not uris.exists(uri):
                problems.append(Problem(col, "file not found", uri))
                continue
            frame_col = frame_column(col) or "bmus_frame"
            frame = record.get(frame_col)
            one_frame = image_col is None and not dicom.is_dicom(uri)
            if frame is not None and frame != 1 and one_frame:
                problems.append(Problem(frame_col, f"{frame_col} given for a one-frame file", uri))
                continue
            image = _read_image(uri, frame, frame_col, limits)
            sha = uris.sha256(uri)
        except (dicom.DicomError, headers.HeaderError) as exc:
            problems.append(Problem(exc.column or col, exc.reason[:300], uri))
            continue
        except FileNotFoundError:  # there at the check, gone at the read or the hash
            problems.append(Problem(col, "file vanished during ingest (found, then gone)", uri))
            continue
        except Exception as exc:
            if _storage_failure(exc):
                raise  # the storage failed, not the file: the ingest task retries
            problems.append(Problem(col, _unreadable(exc), uri))
            continue
        if image_col is not None:
            if image_col not in images:
                if _empty(row.get(image_col)):
                    problems.append(Problem(col, f"mask given without {image_col}", uri))
                continue  # the image's own problem is reported once, under its column
            grid = sitk.GetArrayViewFromImage(images[image_col]).shape[:2]
            array = sitk.GetArrayViewFromImage(image)
            if reason := check_mask(array, grid, image.GetNumberOfComponentsPerPixel()):
                problems.append(Problem(col, reason, uri))
                continue
        images[col] = image
        record[col], record[f"{col}_sha256"] = uri, sha
    if "bmus_image" in images:
        mask = images.get("bmus_mask")
        plane = None if mask is None else sitk.GetArrayViewFromImage(mask)
        if plane is not None and plane.ndim == 3:
            plane = plane[..., 0]
        header_mm = images["bmus_image"].GetSpacing()[:2] if _geometry(record) else None
        _spacing(record, plane, header_mm, limits, problems)
    else:
        record["pixel_spacing_source"] = None
    return record, problems


def _geometry(record: Mapping[str, object]) -> bool:
    return headers.suffix(str(record["bmus_image"])) in headers.GEOMETRY


def _storage_failure(exc: BaseException) -> bool:
    """A failure of the storage (retried), not of the file: see
    :func:`tasks.features.imaging.storage_error`; a file we may not read is the file's."""
    return storage_error(exc) and not isinstance(exc, (PermissionError, IsADirectoryError))


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


def _check_stored_cases(results: list[Result], stored: pd.DataFrame | None, key: bytes) -> None:
    """A ``case_id`` the store already holds for another patient or another site is held
    back: a new version of a case may change its files or clinical fields, not whose or
    where it is (two different cases under one id would mix their features and splits)."""
    if stored is None or stored.empty:
        return
    latest = stored.sort_values("ingested_at").drop_duplicates("case_id", keep="last")
    owner = latest.set_index("case_id")[["patient_key", "site"]].to_dict("index")
    for record, problems in results:
        held = owner.get(str(record["case_id"])) if record["case_id"] else None
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
    with ThreadPoolExecutor(max_workers=4) as pool:
        limits = Limits.of(settings)
        futures = [pool.submit(validate_row, row, base, roots, limits) for row in rows]
        for done, fut in enumerate(futures, start=1):
            results.append(fut.result())
            if progress:
                progress(done, len(rows))

    _check_duplicates(results)
    _check_stored_cases(results, stored, key)
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
