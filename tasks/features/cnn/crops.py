"""Crop step of the CNN: the network input of a case, a square crop around one mask's lesion.

Reads a ``cohort`` row's BMUS image, its masks (generated ones too, through
:func:`tasks.features.imaging.variant_mask`) and its CDUS image when it has one. Writes
nothing: returns float32 tensors in [0, 1], ``bmus [1, S, S]`` and ``cdus [3, S, S]``.

Input contract of :mod:`~tasks.features.cnn.network`: square crops scaled to [0, 1]. This
module crops and scales; the network normalises, so nothing here applies ImageNet mean/std.

A DICOM frame with a Sequence of Ultrasound Regions is cropped inside its imaging area (the
region holding the lesion, :func:`tasks.data.dicom.imaging_region`): pixels outside it, where
scanners burn in text, calipers and scales, read as zero, as past the image border.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from tasks.data import dicom, headers, uris
from tasks.data.schema import GENERATED_VARIANTS, MASK_VARIANTS, case_variants, perturbed_mask_sha
from tasks.features.imaging import (
    InputError,
    as_2d,
    case_frame,
    case_value,
    error_reason,
    read_image,
    storage_error,
    to_grey,
    variant_mask,
)

Crop = tuple[torch.Tensor, torch.Tensor | None]


# -- which masks, and their lineage ------------------------------------------------------------
def mask_variants(case: Mapping[str, Any], perturb: bool = False) -> list[str]:
    """The mask variants a row has (``reader1``, ``reader2``, ``repeat``), in that order,
    then ``perturbed`` when ``perturb`` is on and the row has no real repeat
    (:func:`tasks.data.schema.case_variants` decides)."""
    return [variant.name for variant in case_variants(case, perturb)]


def file_sha256(case: Mapping[str, Any], column: str) -> str | None:
    """The SHA-256 of a row's file in ``column``: the row's ``<column>_sha256`` (the cohort
    step computed it), else the file hashed now; None when the row has no such file."""
    if not case_value(case, column):
        return None
    return case_value(case, f"{column}_sha256") or uris.sha256(str(case[column]))


def variant_mask_sha(case: Mapping[str, Any], variant: str) -> str | None:
    """The ``mask_sha256`` an embedding row of ``variant`` carries: the mask file's hash, or
    for a generated variant the derived id of its source's hash (the store's lineage key)."""
    column = GENERATED_VARIANTS.get(variant) or MASK_VARIANTS[variant]
    sha = file_sha256(case, column)
    return perturbed_mask_sha(sha) if sha and variant in GENERATED_VARIANTS else sha


def has_cdus(cases: Sequence[Mapping[str, Any]]) -> bool:
    """True when every case has a CDUS image, so the dual-stream form applies."""
    return bool(cases) and all(case_value(c, "cdus_image") for c in cases)


def require_cdus(cases: Sequence[Mapping[str, Any]]) -> None:
    """Raise ``ValueError`` naming the cases without a CDUS image (a dual-stream model's)."""
    missing = [str(c["case_id"]) for c in cases if not case_value(c, "cdus_image")]
    if missing:
        raise ValueError(
            f"dual-stream model needs a CDUS image; missing for {', '.join(missing[:10])}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )


# -- geometry ----------------------------------------------------------------------------------
def crop_box(mask: np.ndarray, margin: float) -> tuple[float, float, float]:
    """Square crop around a mask's bounding box, as ``(centre row, centre column, side)``.

    Each side of the box grows by ``margin`` times the box size, so the crop shows the
    peritumoral tissue too; the longer side then sets the square. Coordinates are
    continuous (pixel ``i`` spans ``[i, i + 1)``).

    Raises
    ------
    ValueError
        The mask is empty.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty")
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(bottom - top, right - left) * (1.0 + 2.0 * margin)
    return (top + bottom) / 2.0, (left + right) / 2.0, float(side)


def _window(array: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """``array[top:top+height, left:left+width]``, zeros where the window leaves the image."""
    out = np.zeros((height, width, *array.shape[2:]), dtype=array.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, array.shape[0]), min(left + width, array.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
    return out


def _crop(
    array: np.ndarray, box: tuple[float, float, float], scale: tuple[float, float], size: int
) -> torch.Tensor:
    """Cut ``box`` (BMUS pixel units, times ``scale`` for this image) and resize to ``size``.

    Padding past the border instead of clamping the box keeps the lesion's aspect ratio
    and its place at the crop centre.
    """
    cy, cx, side = box
    height, width = max(1, round(side * scale[0])), max(1, round(side * scale[1]))
    top, left = round(cy * scale[0] - height / 2), round(cx * scale[1] - width / 2)
    window = torch.from_numpy(_window(array, top, left, height, width))
    window = window[None] if window.ndim == 2 else window.permute(2, 0, 1)
    resized = F.interpolate(
        window[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].clamp_(0.0, 1.0).contiguous()


# -- pixels ------------------------------------------------------------------------------------
def _unit(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Scale to [0, 1] as float32.

    8-bit images (what scanners export) by 255. Other types have no known full scale (a
    12-bit DICOM in uint16, a float NIfTI), so they use their own maximum.
    """
    array = array.astype(np.float32, copy=False)
    if dtype == np.uint8:
        return array / 255.0
    peak = float(array.max()) if array.size else 0.0
    return array / peak if peak > 1.0 else np.clip(array, 0.0, 1.0)


def _read_frame(case: Mapping[str, Any], column: str) -> sitk.Image:
    """The 2D frame of a row's image file as stored (colour kept: CDUS needs it), its
    header checked against the limits in force (the embedding task sets the run's:
    :func:`~tasks.features.imaging.image_limits`). A storage failure (vanished, EIO)
    propagates for the task's retry, as in radiomics; a bad file is an InputError."""
    uri = str(case[column])
    try:
        return as_2d(read_image(uri, *case_frame(case, column)))
    except (RuntimeError, ValueError, OSError) as exc:
        if storage_error(exc):
            raise  # the storage, not the file: never quarantined as bad input
        reason = exc.reason if isinstance(exc, headers.HeaderError) else error_reason(exc)
        raise InputError(uri, f"unreadable image: {reason}", column) from exc


def _bmus_array(image: sitk.Image) -> tuple[np.ndarray, sitk.Image]:
    """B-mode as [H, W] in [0, 1] (RGB exports -> luminance), and the grey image."""
    grey = to_grey(image)
    dtype = sitk.GetArrayViewFromImage(image).dtype
    return _unit(sitk.GetArrayFromImage(grey), dtype), grey


def _cdus_array(image: sitk.Image) -> np.ndarray:
    """Colour Doppler as [H, W, 3] in [0, 1]; a greyscale file gets three equal channels."""
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[2] < 3:
        array = np.repeat(array[..., :1], 3, axis=2)  # grey + alpha
    return _unit(np.ascontiguousarray(array[..., :3]), array.dtype)


def _regions(case: Mapping[str, Any], column: str) -> dicom.Header | None:
    """The DICOM header of a row's image when it has ultrasound regions, else None."""
    uri = case_value(case, column)
    if not uri or not dicom.is_dicom(str(uri)):
        return None
    try:
        header = dicom.read_header(str(uri))
    except (dicom.DicomError, OSError) as exc:
        if storage_error(exc):
            raise
        raise InputError(str(uri), f"unreadable image: {error_reason(exc)}", column) from exc
    return header if header.regions else None


def _inside(
    array: np.ndarray, header: dicom.Header | None, box: tuple[float, float, float], scale
) -> np.ndarray:
    """``array`` with zeros outside the imaging region that holds the crop box's centre
    (``box`` in BMUS pixels, times ``scale`` for this image); unchanged without regions."""
    if header is None:
        return array
    cy, cx = int(box[0] * scale[0]), int(box[1] * scale[1])
    region = dicom.imaging_region(header, (cy, cx, cy, cx))
    if region is None:
        return array
    out = np.zeros_like(array)
    rows, cols = slice(region.top, region.bottom + 1), slice(region.left, region.right + 1)
    out[rows, cols] = array[rows, cols]
    return out


# -- crops of a case ---------------------------------------------------------------------------
def case_crops(
    case: Mapping[str, Any],
    variants: Sequence[str] | None = None,
    size: int = 224,
    margin: float = 0.25,
    with_cdus: bool = True,
    perturb: bool = False,
) -> dict[str, Crop]:
    """Crops of one case for several mask variants, reading each file once.

    Parameters
    ----------
    case : a ``cohort`` row.
    variants : mask variants to crop around; None means every variant the row has
        (:func:`mask_variants` with ``perturb``). ``"perturbed"`` may be asked for by name
        whenever the row would get it with ``perturb`` on.
    size, margin : see :func:`crop_case`.
    with_cdus : also crop the CDUS image (when the row has one).
    perturb : with ``variants=None``, also the ``perturbed`` variant of a row without a
        real repeat (``settings.perturb_repeats``); its box follows the perturbed mask,
        the same one radiomics measures (:func:`tasks.features.imaging.variant_mask`).

    Returns
    -------
    ``{variant: (bmus [1, size, size], cdus [3, size, size] or None)}``, float32 in [0, 1].

    Raises
    ------
    InputError
        An image or mask cannot be read, a mask is empty or does not fit the image, or a
        requested variant has no mask.
    """
    variants = mask_variants(case, perturb) if variants is None else list(variants)
    available = {variant.name: variant for variant in case_variants(case, perturb=True)}
    bmus, grey = _bmus_array(_read_frame(case, "bmus_image"))
    cdus = None
    if with_cdus and case_value(case, "cdus_image"):
        cdus = _cdus_array(_read_frame(case, "cdus_image"))
    # The CDUS frame may be stored at another resolution: the same box, scaled per axis.
    scale = (1.0, 1.0)
    if cdus is not None:
        scale = (cdus.shape[0] / bmus.shape[0], cdus.shape[1] / bmus.shape[1])
    # Burned-in annotations around a DICOM frame's imaging area stay out of the crops.
    bmus_regions = _regions(case, "bmus_image")
    cdus_regions = _regions(case, "cdus_image") if cdus is not None else None
    crops: dict[str, Crop] = {}
    for variant in variants:
        if variant not in available:
            column = GENERATED_VARIANTS.get(variant) or MASK_VARIANTS[variant]
            real_repeat = variant in GENERATED_VARIANTS and case_value(case, column)
            why = "the row has a real repeat" if real_repeat else column
            raise InputError(str(case.get("case_id")), f"no {variant} mask ({why})", column)
        spec = available[variant]
        mask = variant_mask(case, spec, grey)  # InputError naming the file
        try:
            # A copy, not a view: a view of the temporary image would dangle.
            box = crop_box(sitk.GetArrayFromImage(mask), margin)
        except ValueError as exc:
            uri = str(case[spec.column])
            raise InputError(uri, f"unusable mask: {error_reason(exc)}", spec.column) from exc
        bmus_in = _inside(bmus, bmus_regions, box, (1.0, 1.0))
        cdus_in = None if cdus is None else _inside(cdus, cdus_regions, box, scale)
        crops[variant] = (
            _crop(bmus_in, box, (1.0, 1.0), size),
            None if cdus_in is None else _crop(cdus_in, box, scale, size),
        )
    return crops


def crop_case(
    case: Mapping[str, Any], mask_variant: str = "reader1", size: int = 224, margin: float = 0.25
) -> Crop:
    """The network input of one case: a square crop around one mask's lesion.

    The box is the mask's bounding box grown by ``margin`` of its size on each side, made
    square, padded with zeros past the image border and resized (bilinear, antialiased)
    to ``size``. The CDUS crop uses the same box, so both streams see the same anatomy.

    Returns
    -------
    bmus : float32 ``[1, size, size]`` in [0, 1] (RGB B-mode -> luminance).
    cdus : float32 ``[3, size, size]`` in [0, 1], or None when the row has no CDUS image.
    """
    return case_crops(case, [mask_variant], size, margin)[mask_variant]
