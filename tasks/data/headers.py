"""Image headers, read before any pixel is decoded: size, frames, channels, spacing, and
whether the file is whole, checked against the limits in settings.

Reads only headers and file structure (SimpleITK's ``ReadImageInformation``, pydicom with
``stop_before_pixels`` through :mod:`tasks.data.dicom`, the PNG chunk list, the JPEG end
marker, the size a NIfTI or BMP header promises); writes nothing. A file over a limit
(``max_image_pixels``, ``max_image_side``, ``max_frames``), with a strange channel count,
or cut short is refused with a :class:`HeaderError` whose reason names the limit and the
setting that raises it, so a 30000 x 30000 PNG of a few KB is never decoded into 900 MB
and a JPEG cut in half is never measured as a half-grey frame.

Filesystem errors (``OSError`` with an ``errno``: a file that vanished, EIO) are not
caught here: they are the storage's, not the file's, and propagate to the caller.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import SimpleITK as sitk

from tasks.data import dicom

if TYPE_CHECKING:
    import numpy as np

    from tasks.config import Settings

MAX_CHANNELS = 4  # grey, grey + alpha, RGB, RGBA
# Formats whose header carries a pixel size (raster formats report SimpleITK's 1.0).
GEOMETRY = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8"
JPEG_TAIL = 64  # bytes searched for the end-of-image marker (padding after it is common)


class HeaderError(ValueError):
    """A file refused on its header or structure: the reason, never the file's content."""

    def __init__(self, reason: str, column: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.column = column


def _default(name: str) -> Any:
    from tasks.config import Settings  # the defaults live in one place

    return Settings.model_fields[name].default


@dataclass(frozen=True)
class Limits:
    """What a header may promise before its pixels are decoded (see ``tasks.config``)."""

    max_pixels: int
    max_side: int
    max_frames: int
    spacing_range: tuple[float, float]

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_image_pixels,
            settings.max_image_side,
            settings.max_frames,
            tuple(settings.spacing_range_mm),
        )

    @classmethod
    def defaults(cls) -> Limits:
        """The settings' defaults, without reading the environment (workers' default)."""
        return cls(
            _default("max_image_pixels"),
            _default("max_image_side"),
            _default("max_frames"),
            tuple(_default("spacing_range_mm")),
        )


@dataclass(frozen=True)
class ImageInfo:
    """What a header says: size per axis (x, y, then slices or frames), channels, the
    in-plane pixel size when the format carries one, and whether it is a DICOM file (of a
    cine loop only the frame the manifest names is decoded)."""

    size: tuple[int, ...]
    channels: int
    spacing: tuple[float, float] | None = None
    dicom: bool = False

    @property
    def frames(self) -> int:
        return math.prod(self.size[2:]) if len(self.size) > 2 else 1


def suffix(uri: str) -> str:
    name = PurePosixPath(str(uri).split("://", 1)[-1]).name.lower()
    for double in (".nii.gz", ".nrrd.gz"):
        if name.endswith(double):
            return double
    return PurePosixPath(name).suffix


def redact(message: str, path: str) -> str:
    """A reader's message without the file's path (quarantine reasons reach the logs; a
    path may hold a patient's name): the path, and any quoted path, become "the file"."""
    message = re.sub(r"\"[^\"]*[/\\][^\"]*\"", "the file", message)
    return message.replace(path, "the file").replace(os.path.basename(path), "the file")


def sitk_info(path: str) -> ImageInfo:
    """The header of a local image file (SimpleITK ``ReadImageInformation``: no pixels)."""
    with open(path, "rb") as fh:  # a missing or unreadable file raises its OSError here
        fh.read(1)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        lines = redact(str(exc), path).strip().splitlines()
        raise HeaderError(f"unreadable image: {lines[-1] if lines else 'no header'}") from exc
    spacing = None
    if suffix(path) in GEOMETRY:
        sx, sy = reader.GetSpacing()[:2] if reader.GetDimension() >= 2 else (1.0, 1.0)
        spacing = (float(sx), float(sy))
    size = tuple(int(s) for s in reader.GetSize())
    return ImageInfo(size, int(reader.GetNumberOfComponents()), spacing)


def dicom_info(header: dicom.Header) -> ImageInfo:
    """A DICOM header as an :class:`ImageInfo` (spacing is judged by the DICOM rules)."""
    size = (header.columns, header.rows) + ((header.frames,) if header.frames > 1 else ())
    return ImageInfo(size, header.samples, None, dicom=True)


def check(info: ImageInfo, limits: Limits, at_ingest: bool = True) -> None:
    """Raise :class:`HeaderError` when a header is over a limit (before any decoding).

    The frame limit applies to every file at ingest (``at_ingest``: cine loops over it
    are refused there) and, at extraction, to the files decoded whole (not DICOM, of
    which one frame is decoded).
    """
    size = info.size
    if len(size) < 2 or min(size) < 1:
        raise HeaderError(f"image has no pixels (size {'x'.join(map(str, size)) or 'none'})")
    if max(size[:2]) > limits.max_side:
        raise HeaderError(
            f"image is {size[0]} x {size[1]} pixels: a side over max_image_side "
            f"{limits.max_side} (SLN_MAX_IMAGE_SIDE); not decoded"
        )
    if size[0] * size[1] > limits.max_pixels:
        raise HeaderError(
            f"image is {size[0]} x {size[1]} = {size[0] * size[1]:,} pixels per frame: over "
            f"max_image_pixels {limits.max_pixels:,} (SLN_MAX_IMAGE_PIXELS); not decoded"
        )
    if info.channels < 1 or info.channels > MAX_CHANNELS:
        raise HeaderError(
            f"{info.channels} channels per pixel: expected grey, RGB or RGBA (1-{MAX_CHANNELS})"
        )
    frames = info.frames
    if frames > limits.max_frames and (at_ingest or not info.dicom):
        what = "cine loop" if info.dicom else "volume"
        raise HeaderError(
            f"{what} of {frames} frames (size {'x'.join(map(str, size))}): over max_frames "
            f"{limits.max_frames} (SLN_MAX_FRAMES); export the frame to measure as one image"
        )


def check_spacing(mm: float | None, limits: Limits, where: str) -> str | None:
    """Reason a pixel size is implausible (outside ``spacing_range_mm``), or None."""
    low, high = limits.spacing_range
    if mm is None or low <= mm <= high:
        return None
    return (
        f"pixel spacing {mm:.6g} mm ({where}) is outside the plausible range "
        f"{low:g}-{high:g} mm (SLN_SPACING_RANGE_MM)"
    )


def file_spacing(
    image: str, mask: np.ndarray | None, header_mm: tuple[float, float] | None
) -> tuple[float | None, str]:
    """The image file's pixel size in mm and its source: a DICOM's (``us_region``, the
    ultrasound region holding the ``mask``, else ``pixel_spacing``), else a NIfTI/NRRD/MHA
    ``header``'s (``header_mm``, ignored when SimpleITK's 1.0 default), else ``none``.
    :class:`~tasks.data.dicom.DicomError` when the pixels are not square."""
    if image and dicom.is_dicom(image):
        box = None if mask is None else dicom.mask_box(mask)
        pair, source = dicom.file_spacing(dicom.read_header(image), box)
    elif header_mm is not None and tuple(header_mm) != (1.0, 1.0):
        pair, source = (float(header_mm[1]), float(header_mm[0])), "header"  # (row, column)
    else:
        pair, source = None, "none"
    return (None if pair is None else dicom.square_spacing(pair)), source


# -- structure: is the whole file there? ---------------------------------------------------
def _truncated(what: str) -> HeaderError:
    return HeaderError(f"truncated file: {what}; export the image again")


def _check_png(fh: Any, size: int) -> None:
    pos = len(PNG_MAGIC)
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            raise _truncated("the PNG ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", head)
        pos += 12 + length
        if pos > size:
            raise _truncated(f"the PNG's {kind.decode('latin-1')!r} chunk runs past the file end")
        if kind == b"IEND":
            return


def _check_jpeg(fh: Any, size: int) -> None:
    fh.seek(max(0, size - JPEG_TAIL))
    if b"\xff\xd9" not in fh.read(JPEG_TAIL):
        raise _truncated("the JPEG has no end-of-image marker")


def _check_bmp(fh: Any, size: int) -> None:
    head = fh.read(54)
    if len(head) < 34:
        raise _truncated("the BMP header is incomplete")
    offset = struct.unpack_from("<I", head, 10)[0]
    width, height, _, bits, compression = struct.unpack_from("<iiHHI", head, 18)
    if compression not in (0, 3):  # RLE sizes cannot be told from the header
        return
    stride = (abs(width) * bits + 31) // 32 * 4
    if offset + stride * abs(height) > size:
        raise _truncated(f"the BMP holds {size:,} bytes of {offset + stride * abs(height):,}")


def _nifti_payload(head: bytes) -> tuple[int, int] | None:
    """(vox_offset, data bytes) of a NIfTI-1 header, or None when it is not one."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack_from(order + "i", head, 0)[0] == 348:
            dims = struct.unpack_from(order + "8h", head, 40)
            bitpix = struct.unpack_from(order + "h", head, 72)[0]
            vox = int(struct.unpack_from(order + "f", head, 108)[0])
            count = math.prod(max(d, 1) for d in dims[1 : 1 + max(0, min(dims[0], 7))])
            return max(vox, 348), count * max(bitpix, 0) // 8
    return None


def _check_nifti(path: str, gz: bool) -> None:
    opener = gzip.open if gz else open
    with opener(path, "rb") as fh:
        try:
            payload = _nifti_payload(fh.read(348))
            if payload is None:
                return  # NIfTI-2 or not NIfTI: the decoder judges it
            expected = sum(payload)
            if not gz:
                got = os.fstat(fh.fileno()).st_size
            else:  # count the stream without keeping it (bounded memory)
                got = 348
                while got < expected and (block := fh.read(1 << 20)):
                    got += len(block)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise _truncated(f"the compressed stream is cut short ({exc})") from exc
    if got < expected:
        raise _truncated(f"the NIfTI holds {got:,} bytes of {expected:,}")


def check_whole(path: str) -> None:
    """Raise :class:`HeaderError` when a local PNG, JPEG, BMP or NIfTI file is cut short
    (SimpleITK decodes a truncated JPEG, BMP or NIfTI without complaint)."""
    kind = suffix(path)
    if kind in (".nii", ".nii.gz"):
        _check_nifti(path, kind == ".nii.gz")
        return
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        magic = fh.read(8)
        fh.seek(0)
        if magic.startswith(PNG_MAGIC):
            _check_png(fh, size)
        elif magic.startswith(JPEG_MAGIC):
            _check_jpeg(fh, size)
        elif magic.startswith(b"BM"):
            _check_bmp(fh, size)
