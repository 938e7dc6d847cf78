"""Ingest, step 1 for one row's files: read, hash and check them, and set the pixel size.

:func:`read_files` reads every file a manifest row names (header first, against the run's
limits), hashes it, checks each mask against its image and sets ``pixel_spacing_mm`` and
``pixel_spacing_source``; :func:`unchanged_files` is a re-ingest's fast path, which takes
the files the stored version of the case was validated with without decoding them again.
Both add a :class:`Problem` per file at fault; only a failure of the storage raises.
Called by :func:`tasks.data.validate.validate_row`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import SimpleITK as sitk

from tasks.data import dicom, headers, schema, uris
from tasks.data.headers import Limits
from tasks.data.schema import FILE_COLUMNS, FRAME_COLUMNS, frame_column
from tasks.features.imaging import (
    as_2d,
    check_header,
    check_mask,
    error_reason,
    read_image,
    storage_error,
)


@dataclass
class Problem:
    """One reason a manifest row is held back: the column at fault and, if any, its file."""

    column: str
    reason: str
    file: str | None = None


SPACING_TOLERANCE = 0.05  # a manifest spacing this far from the file's is a wrong value


def _read_image(uri: str, frame: object, frame_col: str, limits: Limits) -> sitk.Image:
    """One 2D frame of an image file, its header checked against ``limits`` first
    (:func:`tasks.features.imaging.read_image`; a one-slice volume loses its slice axis)."""
    return as_2d(read_image(uri, frame, frame_col, limits, at_ingest=True))


FileSpacing = Callable[[], tuple[float | None, str]]  # the B-mode file's mm and its source
FILE_SPACING_SOURCES = ("us_region", "pixel_spacing", "header")


def _spacing(
    record: dict[str, object], file_spacing: FileSpacing, limits: Limits, problems: list[Problem]
) -> None:
    """Set ``pixel_spacing_mm`` and ``pixel_spacing_source``: the manifest's value, else the
    B-mode file's (``file_spacing``: :func:`tasks.data.headers.file_spacing`); a manifest
    value more than 5% off the file's is held back with both values, and the value used must
    lie in ``spacing_range_mm``."""
    given = record.get("pixel_spacing_mm")
    record["pixel_spacing_source"] = "none" if given is None else "manifest"
    image = str(record.get("bmus_image") or "")
    try:
        found, source = file_spacing()
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


def read_files(
    files: Mapping[str, str],
    row: Mapping[str, object],
    record: dict[str, object],
    limits: Limits,
    problems: list[Problem],
) -> None:
    """Read every file of a row (header first), hash it, check each mask against its image,
    and set the pixel size (:func:`_spacing`)."""
    images: dict[str, sitk.Image] = {}
    for col, uri in files.items():
        image_col = FILE_COLUMNS[col]
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
                if not schema.known(row.get(image_col)):
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
        image = str(record["bmus_image"])
        _spacing(record, lambda: headers.file_spacing(image, plane, header_mm), limits, problems)
    else:
        record["pixel_spacing_source"] = None


def unchanged_files(
    files: Mapping[str, str],
    record: dict[str, object],
    previous: Mapping[str, object] | None,
    limits: Limits,
    problems: list[Problem],
) -> bool:
    """A re-ingest's fast path: True when every file of the row is the one the stored
    ``previous`` version was validated with (same columns, paths, frames and sha256), after
    checking each header against today's ``limits``. Their pixels are not decoded again
    (decoding is most of an unchanged re-ingest's time; the same bytes passed the mask and
    grid checks then), and the pixel size read from the file then is used again. Anything
    else, or any error: False, and :func:`read_files` reads the row whole, reporting its
    problems (or raising a storage failure) as a first ingest would."""
    if previous is None or "bmus_image" not in files:
        return False
    if any(files.get(col) != _stored(previous, col) for col in FILE_COLUMNS):
        return False
    if any(record.get(col) != _stored_frame(previous, col) for col in FRAME_COLUMNS.values()):
        return False
    file_spacing = _stored_file_spacing(files["bmus_image"], previous)
    if file_spacing is None:
        return False
    hashes: dict[str, str] = {}
    try:
        for col, uri in files.items():
            if not check_header(uri, limits, at_ingest=True):
                return False  # an object-store raster: its header needs the file read
            hashes[col] = uris.sha256(uri)
    except Exception:  # noqa: BLE001 - the full read reports (or raises) it properly
        return False
    if any(hashes[col] != previous.get(f"{col}_sha256") for col in files):
        return False
    for col, uri in files.items():
        record[col], record[f"{col}_sha256"] = uri, hashes[col]
    _spacing(record, lambda: file_spacing, limits, problems)
    return True


def _stored(previous: Mapping[str, object], col: str) -> str | None:
    value = previous.get(col)
    return str(value) if schema.known(value) else None


def _stored_frame(previous: Mapping[str, object], col: str) -> int | None:
    value = previous.get(col)
    return int(value) if schema.known(value) else None  # type: ignore[arg-type]


def _stored_file_spacing(
    image: str, previous: Mapping[str, object]
) -> tuple[float | None, str] | None:
    """The B-mode file's pixel size as the stored version's validation read it, or None
    when that was not kept: the manifest gave one, and the file (a DICOM or a NIfTI/NRRD
    with a header) may hold its own, which the manifest's was only compared with."""
    source = previous.get("pixel_spacing_source")
    if source in FILE_SPACING_SOURCES:
        return float(previous["pixel_spacing_mm"]), str(source)  # type: ignore[arg-type]
    if source == "none" or not (dicom.is_dicom(image) or headers.suffix(image) in headers.GEOMETRY):
        return None, "none"  # the file has none (PNG, JPEG and BMP never do)
    return None


def _geometry(record: Mapping[str, object]) -> bool:
    return headers.suffix(str(record["bmus_image"])) in headers.GEOMETRY


def _storage_failure(exc: BaseException) -> bool:
    """A failure of the storage (retried), not of the file: see
    :func:`tasks.features.imaging.storage_error`; a file we may not read is the file's."""
    return storage_error(exc) and not isinstance(exc, (PermissionError, IsADirectoryError))
