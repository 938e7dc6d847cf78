"""Imaging step: read B-mode images and masks, and build the regions radiomics measures.

Reads image and mask files (PNG/JPEG/BMP, NIfTI/NRRD through SimpleITK; ultrasound DICOM,
cine loops and DICOM SEG masks through :mod:`tasks.data.dicom`; local paths or fsspec URIs
such as ``s3://``) and turns one ``cohort`` row into :class:`Region`
objects: the lesion (intratumoral) and a peritumoral ring around it, for every mask
variant the row has (reader 1, reader 2, repeat delineation) and, when asked, for a
perturbed reader-1 mask (:func:`perturb_mask`), the repeat of a case that has no real
one. Writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import SimpleITK as sitk

from tasks.data import dicom, headers, uris
from tasks.data.headers import Limits
from tasks.data.schema import (
    GENERATED_VARIANTS,
    MaskVariant,
    case_variants,
    frame_column,
    known,
)

# ITU-R BT.601 luma weights, as PIL's "L" mode: the grey a scanner's RGB export came from.
LUMA = np.array([0.299, 0.587, 0.114])
DEFAULT_LIMITS = Limits.defaults()  # outside any run's :func:`image_limits` scope
# The run's header limits (``Limits.of(settings)``), set by the extraction and embedding
# tasks for the cases they read: a per-thread (per-context) value, so every image a task
# reads, however deep, is checked against the run's ``SLN_MAX_IMAGE_*`` / ``SLN_MAX_FRAMES``.
_LIMITS: ContextVar[Limits] = ContextVar("sln_image_limits", default=DEFAULT_LIMITS)


@contextlib.contextmanager
def image_limits(limits: Limits | None) -> Iterator[Limits]:
    """Check every image read inside the block against ``limits`` (None: keep the
    limits in force). The extraction and embedding tasks wrap their cases in
    ``image_limits(Limits.of(settings))``."""
    if limits is None:
        yield _LIMITS.get()
        return
    token = _LIMITS.set(limits)
    try:
        yield limits
    finally:
        _LIMITS.reset(token)


def current_limits() -> Limits:
    """The header limits in force here (:func:`image_limits`; default the settings')."""
    return _LIMITS.get()


class InputError(ValueError):
    """A file of a case cannot be used: which file, and why."""

    def __init__(self, file: str, reason: str, column: str | None = None) -> None:
        super().__init__(file, reason, column)
        self.file = file
        self.reason = reason
        self.column = column

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass(frozen=True)
class Region:
    """One image region to measure, with the content hashes it was derived from."""

    region: str  # "intratumoral" | "peritumoral"
    mask_variant: str  # "reader1" | "reader2" | "repeat" | "perturbed"
    image: sitk.Image  # float32, one channel, 2D
    mask: sitk.Image  # uint8 0/1 on the image's grid
    image_sha256: str | None
    mask_sha256: str | None
    mask_file: str  # the mask file this region came from (a perturbed mask's source)
    mask_column: str  # its manifest column


def _suffix(uri: str) -> str:
    # SimpleITK picks its reader by extension, so a temp copy must keep it (".nii.gz" too).
    name = PurePosixPath(uri.split("://", 1)[-1]).name.lower()
    for double in (".nii.gz", ".nrrd.gz"):
        if name.endswith(double):
            return double
    return PurePosixPath(name).suffix


def read_image(
    uri: str,
    frame: Any = None,
    frame_col: str = "bmus_frame",
    limits: Limits | None = None,
    at_ingest: bool = False,
) -> sitk.Image:
    """Read an image from a local path or an fsspec URI (object stores via a temp copy).

    The header is read and checked first (:mod:`tasks.data.headers`: size, frames and
    channels against ``limits``, default those in force, :func:`image_limits`; the file
    whole): a file over a limit or cut short raises
    :class:`~tasks.data.headers.HeaderError` before any pixel is decoded. A DICOM file
    gives one 2D frame as a PNG would (grey or RGB; ``frame`` is the manifest's 1-based
    ``frame_col`` value, needed for a cine loop), a DICOM SEG its lesion mask for that
    frame: :func:`tasks.data.dicom.read_pixels`. Other files ignore ``frame``.
    ``at_ingest``: a DICOM cine loop over ``max_frames`` is refused too (ingest decides
    which loops the pipeline takes; extraction decodes one frame). Filesystem errors
    (``OSError`` with an errno) propagate.
    """
    limits = limits or _LIMITS.get()
    if dicom.is_dicom(str(uri)):
        _check_dicom(str(uri), limits, at_ingest)
        array = dicom.read_pixels(str(uri), frame, frame_col)
        return sitk.GetImageFromArray(array, isVector=array.ndim == 3)
    if not uris.is_uri(uri):
        return _decode(str(uri), limits)
    fd, tmp = tempfile.mkstemp(suffix=_suffix(uri))
    try:
        with os.fdopen(fd, "wb") as out, uris.open_file(uri) as src:
            while block := src.read(uris.CHUNK):
                out.write(block)
        return _decode(tmp, limits)
    finally:
        os.unlink(tmp)


def check_header(uri: str, limits: Limits | None = None, at_ingest: bool = False) -> bool:
    """Check a file's header against ``limits`` (and a raster's whole length) without
    decoding a pixel, as :func:`read_image` does first; raises as it does. False when that
    would need a local copy of the file (an object-store raster): read it whole instead."""
    limits = limits or _LIMITS.get()
    if dicom.is_dicom(str(uri)):
        _check_dicom(str(uri), limits, at_ingest)
        return True
    if uris.is_uri(uri):
        return False
    _check_raster(str(uri), limits)
    return True


def _check_dicom(uri: str, limits: Limits, at_ingest: bool) -> None:
    headers.check(headers.dicom_info(dicom.read_header(uri)), limits, at_ingest)


def _check_raster(path: str, limits: Limits) -> None:
    headers.check(headers.sitk_info(path), limits, at_ingest=False)
    headers.check_whole(path)


def _decode(path: str, limits: Limits) -> sitk.Image:
    _check_raster(path, limits)
    try:
        return sitk.ReadImage(path)
    except RuntimeError as exc:
        _probe(path)  # SimpleITK says "error" for a vanished file too: ask the filesystem
        raise RuntimeError(headers.redact(str(exc), path)) from exc


def _probe(path: str) -> None:
    """Raise the filesystem's OSError when ``path`` cannot be opened and read now."""
    with open(path, "rb") as fh:
        fh.read(1)


def storage_error(exc: BaseException) -> bool:
    """True for a failure of the storage, not of the file's content: an ``OSError`` the
    operating system raised (it carries an errno: vanished, EIO, stale handle) or a
    :class:`~tasks.data.uris.StorageError`. Retried, never quarantined as bad input."""
    return isinstance(exc, uris.StorageError) or (
        isinstance(exc, OSError) and exc.errno is not None
    )


def as_2d(img: sitk.Image) -> sitk.Image:
    """A 2D frame; a 3D file with one slice (DICOM/NIfTI exports) loses its slice axis."""
    if img.GetDimension() == 2:
        return img
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        return img[:, :, 0]
    raise ValueError(f"expected one 2D frame, got an image of size {img.GetSize()}")


def _like(array: np.ndarray, ref: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.SetOrigin(ref.GetOrigin())
    out.SetSpacing(ref.GetSpacing())
    out.SetDirection(ref.GetDirection())
    return out


def to_grey(img: sitk.Image) -> sitk.Image:
    """One-channel float32 image: RGB(A) -> BT.601 luminance, greyscale -> float32.

    Always float32: pyradiomics bins 8-bit input in uint8 arithmetic (``max + 2 * binWidth``
    wraps near 255), which makes GLCM fail on about 5% of real B-mode images.
    """
    img = as_2d(img)
    channels = img.GetNumberOfComponentsPerPixel()
    if channels == 1:
        return sitk.Cast(img, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(img)
    # RGB or RGBA (alpha ignored); a grey+alpha image keeps its grey channel.
    grey = array[..., :3] @ LUMA if channels >= 3 else array[..., 0]
    return _like(grey.astype(np.float32), img)


def mask_plane(array: np.ndarray, channels: int) -> np.ndarray:
    """The plane a mask file's lesion is read from: its only channel or, of a colour
    export, the first, when its colour channels agree. Alpha is ignored (an RGBA or
    grey + alpha export's opacity is not the lesion); colour channels that differ are a
    :class:`ValueError` (a drawing on an image, not a binary mask)."""
    if channels == 1:
        return array
    colour = array[..., : 3 if channels >= 3 else 1]
    first = colour[..., 0]
    if any(not np.array_equal(first, colour[..., c]) for c in range(1, colour.shape[-1])):
        raise ValueError("mask is a colour image (its colour channels differ), not a binary mask")
    return first


def check_mask(
    mask: np.ndarray, image_grid: tuple[int, ...], channels: int | None = None
) -> str | None:
    """Reason a mask is unusable, or None: one plane (a colour export's first, alpha
    ignored, :func:`mask_plane`), the image's grid, binary (0 + one
    value), not empty. ``channels``: the file's (None: a last axis of 2-4 is channels)."""
    if channels is None:
        channels = mask.shape[-1] if mask.ndim == 3 and mask.shape[-1] in (2, 3, 4) else 1
    try:
        mask = mask_plane(mask, channels)
    except ValueError as exc:
        return str(exc)
    if mask.shape != tuple(image_grid):
        return f"mask size {mask.shape[::-1]} does not match the image size {image_grid[::-1]}"
    values = np.unique(mask)
    if values.size > 2 or values[0] != 0 and values.size == 2:
        shown = ", ".join(str(v) for v in values[:6])
        return f"mask is not binary (values: {shown}{'...' if values.size > 6 else ''})"
    if not np.any(mask):
        return "mask is empty (no foreground pixel)"
    return None


def read_mask(
    uri: str, like: sitk.Image, frame: Any = None, frame_col: str = "bmus_frame"
) -> sitk.Image:
    """Binary uint8 mask (any nonzero -> 1) on the grid of image ``like``.

    0/1 and 0/255 PNGs both work; an RGB(A) or grey + alpha mask uses its first channel
    (:func:`mask_plane`); a DICOM SEG gives its segmentation of the image's ``frame``.
    Spacing, origin and direction are copied from the image, since mask PNGs carry no
    geometry of their own.
    """
    img = as_2d(read_image(uri, frame, frame_col))
    array = mask_plane(sitk.GetArrayViewFromImage(img), img.GetNumberOfComponentsPerPixel())
    if array.shape != sitk.GetArrayViewFromImage(like).shape[:2]:
        raise ValueError(
            f"mask size {img.GetSize()} does not match the image size {like.GetSize()}"
        )
    return _like((array != 0).astype(np.uint8), like)


_known = known  # one definition of "the row has a value", shared with the cohort step


def case_value(case: Mapping[str, Any], key: str) -> Any:
    """A row's value of ``key``; None when it is missing (absent, None, NaN or empty)."""
    value = case.get(key)
    return value if _known(value) else None


def set_spacing(img: sitk.Image, pixel_spacing_mm: float | None) -> sitk.Image:
    """Set isotropic in-plane spacing (mm) when known; returns the same image object."""
    if _known(pixel_spacing_mm):
        img.SetSpacing((float(pixel_spacing_mm),) * img.GetDimension())
    return img


def ring_width_px(
    width_mm: float = 3.0, width_px: int = 10, pixel_spacing_mm: float | None = None
) -> float:
    """Ring width in pixels: millimetres over the spacing when known, else ``width_px``."""
    if _known(pixel_spacing_mm):
        return width_mm / float(pixel_spacing_mm)
    return float(width_px)


def peritumoral_ring(
    mask: sitk.Image,
    width_mm: float = 3.0,
    width_px: int = 10,
    pixel_spacing_mm: float | None = None,
) -> sitk.Image:
    """Peritumoral ring: pixels outside the lesion within the ring width of its border.

    The 3 mm default follows common practice in peritumoral radiomics (a ring of a few
    millimetres around the lesion). PNGs without a known spacing fall back to
    ``width_px`` pixels. Distances come from a Euclidean distance transform, so the ring
    is round rather than the square a box-kernel dilation gives. It is clipped to the
    image because it lives on the image's own grid.
    """
    from scipy import ndimage  # here, not at the top: the flow process reads files only

    lesion = sitk.GetArrayViewFromImage(mask) != 0
    width = ring_width_px(width_mm, width_px, pixel_spacing_mm)
    # Distance of every background pixel to the nearest lesion pixel centre.
    distance = ndimage.distance_transform_edt(~lesion)
    ring = (distance <= width) & ~lesion
    return _like(ring.astype(np.uint8), mask)


def case_frame(case: Mapping[str, Any], column: str) -> tuple[Any, str]:
    """The frame value and frame column that apply to a row's file ``column`` (cine loops)."""
    frame_col = frame_column(column) or "bmus_frame"
    return case_value(case, frame_col), frame_col


def _read_grey(uri: str, column: str, spacing: float | None, frame: Any = None) -> sitk.Image:
    try:
        return set_spacing(to_grey(read_image(uri, frame, frame_column(column) or "")), spacing)
    except (RuntimeError, ValueError, OSError) as exc:
        if storage_error(exc):
            raise  # the storage, not the file: the task's retry runs
        if isinstance(exc, headers.HeaderError):  # its reason says what is wrong, and why
            raise InputError(uri, exc.reason, column) from exc
        raise InputError(uri, f"unreadable image: {error_reason(exc)}", column) from exc


def error_reason(exc: BaseException, with_type: bool = False) -> str:
    """The message of an error, for a quarantine entry: its last line, else its type name
    (with ``with_type``, always prefixed by the type name: third-party failures).

    SimpleITK puts the source location first and the message on the last line.
    """
    lines = str(exc).strip().splitlines()
    message = lines[-1] if lines else ""
    if with_type:
        return f"{type(exc).__name__}: {message}".rstrip(": ")
    return message or type(exc).__name__


# -- perturbed masks: the repeat of a case without repeat delineations ----------------------
# Contour displacement in pixels: an erosion or dilation of 1-2 px (or none, each a third of
# the time) plus a smooth random field whose standard deviation is drawn from 1-2 px
# (clipped at twice that), correlated along the contour over about a quarter of the
# lesion's radius: a smooth disagreement of a few pixels, as between two outlines of one
# lesion. These sizes are a judgement, not fitted to measured reader variability; a cohort
# with real repeat delineations should use those (tasks.models.pipelines.FeatureData.pairs does).
# Lesions under 15 px in equivalent radius move proportionally less.
PERTURB_SHIFT_PX = (1, 2)
PERTURB_NOISE_PX = (1.0, 2.0)
PERTURB_MIN_PIXELS = 20
PERTURB_FULL_RADIUS_PX = 15.0  # smaller lesions (equivalent radius) move proportionally less


def perturb_seed(case_id: str, mask_sha256: str | None) -> int:
    """A stable seed per case and source mask (SHA-256, not Python's salted ``hash()``)."""
    digest = hashlib.sha256(f"sln-perturb:{case_id}:{mask_sha256 or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def perturb_mask(mask: np.ndarray, seed: int) -> np.ndarray:
    """A plausible second delineation of a lesion: the mask's contour moved a few pixels.

    The contour is the zero level of the mask's signed distance map (positive inside, the
    boundary half-way between pixel centres). Adding a constant moves it out or in (a
    round dilation or erosion by 1-2 px, or none); adding a smooth random field moves it by
    a different amount along the contour (noise, 1-2 px). Deterministic for a ``seed``.

    Parameters
    ----------
    mask : 2D array, any nonzero value is the lesion.
    seed : see :func:`perturb_seed`.

    Returns
    -------
    uint8 0/1 array of the mask's shape. The mask itself (0/1) when the perturbed one would
    have fewer than 20 pixels, so the result is never empty.
    """
    from scipy import ndimage  # as in peritumoral_ring

    lesion = np.asarray(mask) != 0
    original = lesion.astype(np.uint8)
    if lesion.ndim != 2:
        raise ValueError(f"perturb_mask takes a 2D mask, got shape {lesion.shape}")
    if lesion.sum() < PERTURB_MIN_PIXELS:
        return original
    rng = np.random.default_rng(seed)
    # A small lesion moves less: a few pixels would be a different lesion, not a re-read.
    radius = np.sqrt(lesion.sum() / np.pi)  # of the disk with the lesion's area
    scale = min(1.0, radius / PERTURB_FULL_RADIUS_PX)
    shift = rng.choice((-1, 0, 1)) * rng.integers(PERTURB_SHIFT_PX[0], PERTURB_SHIFT_PX[1] + 1)
    shift *= scale
    amplitude = rng.uniform(*PERTURB_NOISE_PX) * scale
    # Work on the lesion's box plus the largest displacement: the same result, much less
    # work than the whole frame.
    reach = int(np.ceil(abs(shift) + 2 * amplitude)) + 2
    rows, cols = np.flatnonzero(lesion.any(axis=1)), np.flatnonzero(lesion.any(axis=0))
    top, left = max(rows[0] - reach, 0), max(cols[0] - reach, 0)
    bottom = min(rows[-1] + reach + 1, lesion.shape[0])
    right = min(cols[-1] + reach + 1, lesion.shape[1])
    box = lesion[top:bottom, left:right]
    signed = np.where(
        box,
        ndimage.distance_transform_edt(box) - 0.5,
        0.5 - ndimage.distance_transform_edt(~box),
    )
    field = ndimage.gaussian_filter(
        rng.standard_normal(box.shape), sigma=max(2.0, radius / 4), mode="reflect"
    )
    field /= field.std() or 1.0
    noise = amplitude * np.clip(field, -2.0, 2.0)
    out = np.zeros_like(original)
    out[top:bottom, left:right] = signed + shift + noise > 0
    return out if out.sum() >= PERTURB_MIN_PIXELS else original


def variant_mask(case: Mapping[str, Any], variant: MaskVariant, like: sitk.Image) -> sitk.Image:
    """The mask of one variant of a case on the grid of ``like``: its file, or for a
    generated variant its source file perturbed (:func:`perturb_mask`, seeded by the case
    and the source's hash). Radiomics and embedding both read masks here, so a perturbed
    mask is the same in both.

    Raises :class:`InputError` naming the file when the mask cannot be read or used.
    """
    uri = str(case[variant.column])
    try:
        mask = read_mask(uri, like, *case_frame(case, variant.column))
    except (RuntimeError, ValueError, OSError) as exc:
        if storage_error(exc):
            raise  # the storage, not the file: the task's retry runs
        reason = exc.reason if isinstance(exc, headers.HeaderError) else error_reason(exc)
        raise InputError(uri, f"unusable mask: {reason}", variant.column) from exc
    if variant.name not in GENERATED_VARIANTS:
        return mask
    seed = perturb_seed(str(case.get("case_id")), case_value(case, f"{variant.column}_sha256"))
    return _like(perturb_mask(sitk.GetArrayViewFromImage(mask), seed), like)


def case_regions(
    case: Mapping[str, Any], ring_mm: float = 3.0, ring_px: int = 10, perturb: bool = False
) -> list[Region]:
    """The regions of one ``cohort`` row: lesion and ring for each mask variant present.

    The image is read once. Hashes come from the row's ``<column>_sha256`` values (the
    cohort step computed them), so files are not hashed again. With ``perturb``
    (``settings.perturb_repeats``), a row without reader-2 and repeat delineations also
    gets the regions of its perturbed reader-1 mask (variant ``perturbed``, the ring grown
    from the perturbed lesion); :func:`tasks.data.schema.case_variants` decides. Raises
    :class:`InputError` naming the file when an image or mask cannot be read or does not
    fit the image.
    """
    spacing = case_value(case, "pixel_spacing_mm")
    spacing = None if spacing is None else float(spacing)
    frame = case_value(case, "bmus_frame")
    image = _read_grey(str(case["bmus_image"]), "bmus_image", spacing, frame)
    regions: list[Region] = []
    for variant in case_variants(case, perturb):
        mask = variant_mask(case, variant, image)
        ring = peritumoral_ring(mask, ring_mm, ring_px, spacing)
        common = {
            "mask_variant": variant.name,
            "image": image,
            "image_sha256": case_value(case, "bmus_image_sha256"),
            "mask_sha256": variant.mask_sha256,
            "mask_file": str(case[variant.column]),
            "mask_column": variant.column,
        }
        regions.append(Region(region="intratumoral", mask=mask, **common))
        regions.append(Region(region="peritumoral", mask=ring, **common))
    return regions
