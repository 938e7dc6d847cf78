"""Ultrasound DICOM: the header checks, one frame's pixels, its spacing and imaging region.

Reads DICOM files (local paths or fsspec URIs) the way scanners and PACS exports write them,
and gives the rest of the pipeline what a PNG would give: a 2D grey B-mode frame or an RGB
colour Doppler frame, plus what only DICOM carries, the physical pixel size and the bounds
of the imaging area (the Sequence of Ultrasound Regions). Writes nothing.

Every file is read header first (``stop_before_pixels``): the frame count, photometric
interpretation, transfer syntax and decoder are checked before any pixel is decoded, and a
problem raises :class:`DicomError` with a reason a user can act on (which manifest column
to add, which export setting to change).

Decoder: pydicom 3 with its plugins, not SimpleITK/GDCM. pydicom decodes one frame of a
cine loop without the others, converts YBR_FULL / YBR_FULL_422 to RGB and applies palette
colour LUTs under our control, and reads the Sequence of Ultrasound Regions, which GDCM's
SimpleITK reader does not expose. Plugins (all permissively licensed): Pillow for JPEG
baseline / extended (8-bit) and JPEG 2000, pyjpegls (CharLS) for JPEG-LS, pydicom itself
for RLE and deflate. JPEG lossless (process 14) has no decoder here: such a file is
quarantined with a reason naming the transfer syntax.

Identifiers: only the technical values of :class:`Header` leave this module; no patient,
study, date, institution or accession value is returned, logged or put in an error message.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.data import uris

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


@functools.cache
def _pydicom() -> ModuleType:
    """pydicom, imported on first use: a PNG cohort's flow process (and every re-run that
    decodes nothing) never needs it, and would otherwise import it on every ``sln run``."""
    import pydicom
    import pydicom.pixels

    # pydicom's reading validation warns with the offending value (a malformed PatientName
    # or date would land in the logs): values are not our business, only their presence.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# What the pipeline turns into grey B-mode or RGB colour Doppler.
PHOTOMETRIC = (
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "PALETTE COLOR",
    "YBR_ICT",  # JPEG 2000, converted by the decoder
    "YBR_RCT",
)
# Files with these endings are never DICOM; anything else (".dcm", no extension, a UID as
# the name, as PACS exports write them) is recognised by its "DICM" marker.
NOT_DICOM = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd")
NOT_DICOM += (".nrrd.gz", ".mha", ".mhd", ".gz")
CM_UNITS = 3  # PhysicalUnitsX/YDirection: 3 = cm (PS3.3 C.8.5.5.1.15)
ANISOTROPY = 0.01  # pixels whose height and width differ by more than 1% are not square


class DicomError(ValueError):
    """A DICOM file the pipeline cannot use as given, with what to do about it."""

    def __init__(self, reason: str, column: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.column = column  # the manifest column to fix, when not the file's own


@dataclass(frozen=True)
class Region:
    """One entry of the Sequence of Ultrasound Regions: its pixel bounds (inclusive, as
    DICOM gives them) and, for a region in cm, its pixel size in mm as ``(row, column)``."""

    left: int
    top: int
    right: int
    bottom: int
    spacing_mm: tuple[float, float] | None
    data_type: int | None  # RegionDataType: 1 tissue, 2 colour flow, ...

    @property
    def area(self) -> int:
        return (self.right - self.left + 1) * (self.bottom - self.top + 1)

    def contains(self, box: tuple[int, int, int, int]) -> bool:
        """True when the box ``(top, left, bottom, right)`` (inclusive) lies inside."""
        top, left, bottom, right = box
        return (
            self.top <= top and self.left <= left and bottom <= self.bottom and right <= self.right
        )


@dataclass(frozen=True)
class Header:
    """The technical header of a DICOM file: nothing that identifies a patient."""

    sop_class: str
    transfer_syntax: str
    transfer_syntax_name: str
    photometric: str
    rows: int
    columns: int
    frames: int
    samples: int
    bits_stored: int
    regions: tuple[Region, ...]
    pixel_spacing_mm: tuple[float, float] | None  # PixelSpacing, else ImagerPixelSpacing
    segments: int  # a SEG's segment count, 0 for an image

    @property
    def is_seg(self) -> bool:
        return self.sop_class == SEG_SOP_CLASS


def _suffix(uri: str) -> str:
    name = PurePosixPath(uri.split("://", 1)[-1]).name.lower()
    for double in (".nii.gz", ".nrrd.gz"):
        if name.endswith(double):
            return double
    return PurePosixPath(name).suffix


def is_dicom(uri: str) -> bool:
    """True for a DICOM file: by its "DICM" marker, unless its ending says another format."""
    if _suffix(str(uri)) in NOT_DICOM:
        return False
    try:
        with uris.open_file(str(uri)) as fh:
            head = fh.read(132)
    except (OSError, ValueError):
        return False
    return head[128:132] == b"DICM"


def _read(uri: str, header_only: bool) -> Dataset:
    pydicom = _pydicom()
    try:
        with uris.open_file(uri) as fh:
            return pydicom.dcmread(fh, stop_before_pixels=header_only)
    except pydicom.errors.InvalidDicomError as exc:
        raise DicomError("not a DICOM file (no DICM marker)") from exc


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def _regions(ds: Dataset) -> tuple[Region, ...]:
    out = []
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        bounds = [item.get(k) for k in ("RegionLocationMinX0", "RegionLocationMinY0")]
        bounds += [item.get(k) for k in ("RegionLocationMaxX1", "RegionLocationMaxY1")]
        if any(b is None for b in bounds):
            continue
        dx, dy = _float(item.get("PhysicalDeltaX")), _float(item.get("PhysicalDeltaY"))
        in_cm = (item.get("PhysicalUnitsXDirection"), item.get("PhysicalUnitsYDirection")) == (
            CM_UNITS,
            CM_UNITS,
        )
        # cm -> mm; rounded so that 0.009 cm gives 0.09 mm, not 0.09000000000000001.
        spacing = (round(dy * 10.0, 12), round(dx * 10.0, 12)) if in_cm and dx and dy else None
        data_type = item.get("RegionDataType")
        out.append(Region(*(int(b) for b in bounds), spacing, data_type))
    return tuple(out)


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            row, col = _float(value[0]), _float(value[1])
            if row and col:
                return row, col
    return None


def header_of(ds: Dataset) -> Header:
    """The :class:`Header` of a dataset (read with or without its pixels)."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    name = _pydicom().uid.UID(syntax).name if syntax else "unknown"
    return Header(
        sop_class=str(ds.get("SOPClassUID", "")),
        transfer_syntax=syntax,
        transfer_syntax_name=name,
        photometric=str(ds.get("PhotometricInterpretation", "")).strip(),
        rows=int(ds.get("Rows") or 0),
        columns=int(ds.get("Columns") or 0),
        frames=int(ds.get("NumberOfFrames") or 1),
        samples=int(ds.get("SamplesPerPixel") or 1),
        bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8),
        regions=_regions(ds),
        pixel_spacing_mm=_pixel_spacing(ds),
        segments=len(ds.get("SegmentSequence", None) or []),
    )


def read_header(uri: str) -> Header:
    """Read the header only (no pixel data is read or decoded)."""
    return header_of(_read(str(uri), header_only=True))


def frame_index(header: Header, frame: Any, frame_column: str) -> int:
    """The 0-based frame to decode, from the manifest's 1-based ``frame`` (None: not given).

    A cine loop (more than one frame) needs the frame named in ``frame_column``.
    """
    given = frame is not None and not (isinstance(frame, float) and np.isnan(frame))
    given = given and str(frame).strip() != ""
    if not given:
        if header.frames > 1:
            raise DicomError(
                f"cine loop of {header.frames} frames: add a manifest column {frame_column} "
                f"with the frame to measure (1-{header.frames})",
                frame_column,
            )
        return 0
    try:
        number = float(str(frame).strip())
    except ValueError:
        number = float("nan")
    if not number.is_integer() or not 1 <= number <= header.frames:
        raise DicomError(
            f"{frame_column} must be a frame number from 1 to {header.frames}, got {frame!r}",
            frame_column,
        )
    return int(number) - 1


def check_decodable(header: Header) -> None:
    """Raise :class:`DicomError` unless the pixels can be decoded into grey or RGB."""
    if header.rows <= 0 or header.columns <= 0:
        raise DicomError("DICOM file has no image (Rows/Columns missing)")
    if header.is_seg:
        return
    if header.photometric not in PHOTOMETRIC:
        raise DicomError(
            f"photometric interpretation {header.photometric or 'missing'} is not supported "
            f"(supported: {', '.join(PHOTOMETRIC)}): export as RGB or MONOCHROME2"
        )
    if header.samples not in (1, 3):
        raise DicomError(f"{header.samples} samples per pixel: expected 1 (grey) or 3 (colour)")
    try:
        decoder = _pydicom().pixels.get_decoder(header.transfer_syntax)
    except NotImplementedError:  # pydicom's answer for a syntax it has no decoder for at all
        decoder = None
    if decoder is None or not decoder.is_available:
        raise DicomError(
            f"transfer syntax {header.transfer_syntax_name} cannot be decoded here: export "
            "uncompressed, JPEG baseline, JPEG-LS or RLE"
        )


def _to_display(array: np.ndarray, ds: Dataset, header: Header) -> np.ndarray:
    """A decoded frame as a PNG would hold it: grey, or RGB (YBR already converted)."""
    if header.photometric == "MONOCHROME1":  # 0 is white: invert to the usual grey
        return (2**header.bits_stored - 1 - array.astype(np.int64)).astype(array.dtype)
    if header.photometric == "PALETTE COLOR":
        rgb = _pydicom().pixels.apply_color_lut(array, ds)
        # 16-bit LUT entries hold 8-bit colours times 257; some scanners write 0-255 anyway.
        if rgb.dtype != np.uint8:
            rgb = rgb if rgb.max() <= 255 else np.rint(rgb / 257.0)
            rgb = rgb.astype(np.uint8)
        return rgb
    return array


def read_pixels(uri: str, frame: Any = None, frame_column: str = "bmus_frame") -> np.ndarray:
    """What a DICOM file holds for the pipeline: an image's frame (:func:`read_frame`) or a
    SEG's lesion mask for that frame (:func:`read_seg`)."""
    header = read_header(uri)
    if header.is_seg:
        return read_seg(uri, frame, frame_column)
    return read_frame(uri, frame, frame_column, header)


def read_frame(
    uri: str, frame: Any = None, frame_column: str = "bmus_frame", header: Header | None = None
) -> np.ndarray:
    """One frame's pixels: ``[rows, columns]`` grey or ``[rows, columns, 3]`` RGB.

    The header is read and checked first (:func:`frame_index`, :func:`check_decodable`);
    only then are the pixels decoded, and of a cine loop only the chosen frame.
    """
    header = header or read_header(uri)
    if header.is_seg:
        raise DicomError("a DICOM SEG is a mask, not an image")
    index = frame_index(header, frame, frame_column)
    check_decodable(header)
    ds = _read(str(uri), header_only=False)
    array = _pydicom().pixels.pixel_array(ds, index=index, as_rgb=True)
    return _to_display(array, ds, header)


# -- masks: DICOM SEG ----------------------------------------------------------------------
def _referenced_frame(item: Dataset) -> list[int]:
    out = []
    for derivation in item.get("DerivationImageSequence", None) or []:
        for source in derivation.get("SourceImageSequence", None) or []:
            for number in np.atleast_1d(source.get("ReferencedFrameNumber", []) or []):
                out.append(int(number))
    return out


def read_seg(uri: str, frame: Any = None, frame_column: str = "bmus_frame") -> np.ndarray:
    """A DICOM SEG's lesion mask (uint8 0/1) for one frame of its source image.

    The SEG must hold one segment. Of a SEG drawn on a cine loop, the frames whose source
    frame (``ReferencedFrameNumber``) is the manifest's ``frame`` are used; a SEG with a
    single frame is that frame's mask.
    """
    ds = _read(str(uri), header_only=False)
    header = header_of(ds)
    if not header.is_seg:
        raise DicomError("not a DICOM SEG (nor a PNG/NRRD mask)")
    if header.segments != 1:
        raise DicomError(f"SEG has {header.segments} segments: the lesion mask needs exactly one")
    pydicom = _pydicom()
    frames = pydicom.pixels.pixel_array(ds)
    frames = frames[None] if frames.ndim == 2 else frames
    unlabelled = [pydicom.Dataset()] * len(frames)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None) or unlabelled
    wanted = None if frame is None or str(frame).strip() in ("", "nan") else int(float(frame))
    picked = [
        i
        for i, item in enumerate(per_frame)
        if wanted is None or not _referenced_frame(item) or wanted in _referenced_frame(item)
    ]
    if len(frames) > 1 and wanted is None:
        raise DicomError(
            f"SEG of {len(frames)} frames: add a manifest column {frame_column} naming the "
            "image frame it delineates",
            frame_column,
        )
    if not picked:
        raise DicomError(f"SEG has no segmentation of frame {wanted} ({frame_column})")
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        peak = float(ds.get("MaximumFractionalValue") or 255)
        return (frames[picked] > peak / 2).any(axis=0).astype(np.uint8)
    return (frames[picked] != 0).any(axis=0).astype(np.uint8)


# -- geometry: where the image is, and how big its pixels are ------------------------------
def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The mask's bounding box ``(top, left, bottom, right)``, inclusive; None when empty."""
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    cols = np.flatnonzero(np.asarray(mask).any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def imaging_region(
    header: Header, box: tuple[int, int, int, int] | None, with_spacing: bool = False
) -> Region | None:
    """The imaging area holding ``box``: the largest ultrasound region that contains it
    (a colour-flow box lies inside the tissue region). None without such a region."""
    if box is None:
        return None
    inside = [r for r in header.regions if r.contains(box) and (r.spacing_mm or not with_spacing)]
    return max(inside, key=lambda r: r.area, default=None)


def file_spacing(
    header: Header, box: tuple[int, int, int, int] | None
) -> tuple[tuple[float, float] | None, str]:
    """The file's pixel size ``(row, column)`` in mm and where it came from: ``us_region``
    (the region holding the lesion), ``pixel_spacing`` (PixelSpacing or
    ImagerPixelSpacing), or ``none``."""
    region = imaging_region(header, box, with_spacing=True)
    if region is not None:
        return region.spacing_mm, "us_region"
    if header.pixel_spacing_mm is not None:
        return header.pixel_spacing_mm, "pixel_spacing"
    return None, "none"


def square_spacing(spacing: tuple[float, float]) -> float:
    """One pixel size in mm; :class:`DicomError` when the pixels are not square."""
    row, col = spacing
    if abs(row - col) > ANISOTROPY * max(row, col):
        raise DicomError(
            f"pixels are not square ({col:.4g} x {row:.4g} mm): resample the frame to square "
            "pixels before export",
            "pixel_spacing_mm",
        )
    return (row + col) / 2.0 if row != col else row
