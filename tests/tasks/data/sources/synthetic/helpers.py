"""Shared measurements for the synthetic-cohort tests: read PNGs, measure masks, hash files.

Not a test module (no ``test_`` prefix); imported as
``tests.tasks.data.sources.synthetic.helpers``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import roc_auc_score

EXPECTED_COLUMNS = [
    "case_id",
    "patient_id",
    "site",
    "exam_date",
    "label",
    "split",
    "bmus_image",
    "bmus_mask",
    "cdus_image",
    "cdus_mask",
    "bmus_mask_reader2",
    "bmus_mask_repeat",
    "pixel_spacing_mm",
]
MASK_COLUMNS = ["bmus_mask", "cdus_mask", "bmus_mask_reader2", "bmus_mask_repeat"]
COHORT_SIZE = 120
COHORT_SEED = 2025


@dataclass(frozen=True)
class WrittenCohort:
    """A cohort written by ``generate_cohort``, as the tests see it."""

    out_dir: Path
    manifest_path: Path
    manifest: pd.DataFrame  # read back with empty cells as ''
    calls: list[tuple[int, int]]  # the progress callbacks, (done, total)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def irregularity(mask: np.ndarray) -> float:
    """Perimeter^2 / (4 pi area), perimeter from pixel-edge counts: 4/pi for a disc."""
    edges = np.abs(np.diff(mask.astype(int), axis=0)).sum()
    edges += np.abs(np.diff(mask.astype(int), axis=1)).sum()
    return edges**2 / (4 * np.pi * mask.sum())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def digest(folder: Path) -> dict[str, str]:
    """Content hash of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def pixel_digest(folder: Path) -> dict[str, str]:
    """Like :func:`digest`, but a PNG is hashed by its decoded pixels (mode, size, bytes).

    A PNG's bytes also depend on the zlib that Pillow was built with; its pixels depend on
    the generator only.
    """
    hashes = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".png":
            with Image.open(path) as image:
                header = f"{image.mode} {image.size[0]}x{image.size[1]}\n".encode()
                content = header + image.tobytes()
        else:
            content = path.read_bytes()
        hashes[path.relative_to(folder).as_posix()] = hashlib.sha256(content).hexdigest()
    return hashes


def assert_label_auc_in_range(measures: pd.DataFrame, measure: str) -> None:
    """The label depends on a documented driver, measured from the images, but not perfectly."""
    auc = roc_auc_score(measures["label"], measures[measure])
    assert 0.6 < auc < 0.95, auc
