"""Helpers of the CNN tests: small real cases written as PNGs, cohort rows, settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tasks.config import Settings
from tasks.data.validate import validate_manifest

SIZE = 32  # the network is size-agnostic; small crops keep fine-tuning to seconds


def png(folder: Path, name: str, array: np.ndarray) -> str:
    path = folder / name
    Image.fromarray(array).save(path)
    return str(path)


def case_row(folder: Path, bmus: np.ndarray, mask: np.ndarray, cdus: np.ndarray | None = None):
    """A row with just the file columns the crop reads."""
    return {
        "case_id": "C1",
        "bmus_image": png(folder, "bmus.png", bmus),
        "bmus_mask": png(folder, "mask.png", mask * 255),
        "cdus_image": None if cdus is None else png(folder, "cdus.png", cdus),
        "bmus_mask_reader2": float("nan"),  # missing values come as NaN from pandas
        "bmus_mask_repeat": None,
    }


def rect(shape, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 mask with rows[0]..rows[1] x cols[0]..cols[1] set (inclusive)."""
    mask = np.zeros(shape, np.uint8)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = 1
    return mask


def cohort_rows(manifest: Path, split: str | None = "training") -> list[dict]:
    rows = validate_manifest(str(manifest), Settings(), "t").cohort.to_dict("records")
    for row in rows:
        row["split"] = split
    return rows


def cnn_settings(tmp_path: Path, **kwargs) -> Settings:
    defaults = {"store": str(tmp_path / "store"), "cnn_size": SIZE, "cnn_start": "random"}
    return Settings(**{**defaults, **kwargs})
