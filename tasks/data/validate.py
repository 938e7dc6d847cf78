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
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import SimpleITK as sitk

from tasks.config import Settings
from tasks.data import dicom, uris
from tasks.data.quarantine import quarantine_frame
from tasks.data.schema import FILE_COLUMNS, FRAME_COLUMNS, REQUIRED_COLUMNS, SPLITS, frame_column
from tasks.data.secrets import pseudonym_key
from tasks.data.splits import check_patient_splits
from tasks.data.tables import COHORT


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


Result = tuple[dict[str, object], list[Problem]]  # one row's resolved record and problems


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


def _read_array(uri: str, frame: object = None, frame_col: str = "bmus_frame") -> np.ndarray:
    """Read an image file into a numpy array (SimpleITK; object stores via a temp copy;
    DICOM: the manifest's frame, colour models converted)."""
    from tasks.features.imaging import read_image  # imaging owns the one way to read pixels

    return sitk.GetArrayFromImage(read_image(uri, frame, frame_col))


def _spacing(record: dict[str, object], mask: np.ndarray | None, problems: list[Problem]) -> None:
    """Set ``pixel_spacing_mm`` and ``pixel_spacing_source``: the manifest's value, else the
    B-mode DICOM file's (the ultrasound region holding the lesion, else PixelSpacing)."""
    given = record.get("pixel_spacing_mm")
    record["pixel_spacing_source"] = "none" if given is None else "manifest"
    image = record.get("bmus_image")
    if not image or not dicom.is_dicom(str(image)):
        return
    try:
        header = dicom.read_header(str(image))
        pair, source = dicom.file_spacing(header, None if mask is None else dicom.mask_box(mask))
        found = None if pair is None else dicom.square_spacing(pair)
    except dicom.DicomError as exc:
        if given is None:  # non-square pixels matter only when the file's spacing is used
            problems.append(Problem(exc.column or "bmus_image", exc.reason, str(image)))
        return
    if found is None:
        return
    if given is None:
        record["pixel_spacing_mm"], record["pixel_spacing_source"] = found, source
    elif abs(float(given) - found) > SPACING_TOLERANCE * found:
        where = "ultrasound region" if source == "us_region" else "PixelSpacing"
        problems.append(
            Problem(
                "pixel_spacing_mm",
                f"pixel_spacing_mm {given:g} disagrees with the file's {found:.6g} mm "
                f"({where}) by more than {SPACING_TOLERANCE:.0%}: correct the manifest value "
                "or leave it empty to use the file's",
                str(image),
            )
        )


def _unreadable(exc: BaseException) -> str:
    from tasks.features.imaging import error_reason  # one wording for every stage's errors

    return f"unreadable image: {error_reason(exc)}"[:300]


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


def validate_row(row: Mapping[str, object], base: str, roots: list[str]) -> Result:
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
            frame_col = frame_column(col) or "bmus_frame"
            frame = record.get(frame_col)
            one_frame = image_col is None and not dicom.is_dicom(uri)
            if frame is not None and frame != 1 and one_frame:
                problems.append(Problem(frame_col, f"{frame_col} given for a one-frame file", uri))
                continue
            array = _read_array(uri, frame, frame_col)
        except dicom.DicomError as exc:
            problems.append(Problem(exc.column or col, exc.reason[:300], uri))
            continue
        except uris.StorageError:
            raise  # the storage failed, not the file: the ingest task retries
        except Exception as exc:
            problems.append(Problem(col, _unreadable(exc), uri))
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
    if "bmus_image" in arrays:
        _spacing(record, arrays.get("bmus_mask"), problems)
    else:
        record["pixel_spacing_source"] = None
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
            cohort=COHORT.typed(pd.DataFrame()),
            quarantine=quarantine_frame(entries, "ingest", manifest, run_id),
            rows_in=len(rows),
            manifest=manifest,
        )

    results: list[Result] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(validate_row, row, base, roots) for row in rows]
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
                        "reason": p.reason,
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
    )
