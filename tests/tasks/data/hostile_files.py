"""Hostile image files for the ingest and fuzz tests: headers that promise a huge decode,
files cut short, colour masks, volumes; all a few KB on disk."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid-looking 8-bit grey PNG whose header promises ``width x height`` pixels
    (900 MB decoded at the default) while the file holds one compressed row: a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format="PNG")
    return out.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90)
    return out.getvalue()


def png16(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint16)).save(out, format="PNG")
    return out.getvalue()


def cut(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * fraction))]


def speckle(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.rayleigh(40, shape) + 60, 0, 255).astype(np.uint8)


def disk(shape: tuple[int, int], value: int = 255) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inside = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 <= (min(shape) / 4) ** 2
    return (inside * value).astype(np.uint8)


def rgba(mask: np.ndarray, disagree: bool = False) -> np.ndarray:
    """An RGBA export of a binary mask (opaque); ``disagree``: a drawing, red != green."""
    out = np.stack([mask, mask, mask, np.full_like(mask, 255)], axis=-1)
    if disagree:
        out[: mask.shape[0] // 2, :, 1] = 0
        out[mask.shape[0] // 2 :, :, 0] = 0
    return out


def volume(path: Path, array: np.ndarray, spacing: tuple[float, ...] | None = None) -> Path:
    """A NIfTI/NRRD/MHA file of a ``[slices, rows, columns]`` array (SimpleITK writes it)."""
    image = sitk.GetImageFromArray(array)
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path
