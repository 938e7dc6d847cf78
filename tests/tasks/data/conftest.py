"""Fixtures of the data tests: a tiny cohort's manifest with every kind of bad row added, and
a record of the files ingest validation decodes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def _append_rows(manifest: Path, rows: list[dict]) -> None:
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    pd.concat([frame, pd.DataFrame(rows)], ignore_index=True).fillna("").to_csv(
        manifest, index=False
    )


def _bad_rows(folder: Path) -> list[tuple[dict, str, str]]:
    good = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False).iloc[0]
    images = folder / "images"
    shape = np.asarray(Image.open(folder / good["bmus_image"])).shape
    empty = np.zeros(shape, np.uint8)
    Image.fromarray(empty).save(images / "empty_mask.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(images / "small_mask.png")
    grey = np.zeros(shape, np.uint8)
    grey[10:20, 10:20], grey[30:40, 30:40] = 128, 255
    Image.fromarray(grey).save(images / "grey_mask.png")
    (images / "garbage.png").write_bytes(b"this is not an image")
    outside = folder.parent / f"{folder.name}_outside.png"
    shutil.copy(folder / good["bmus_image"], outside)

    def row(case_id, **change):
        out = good.to_dict()
        out.update(case_id=case_id, patient_id=f"Q-{case_id}", **change)
        return out

    return [
        (row("BAD-MISSING", bmus_image="images/nope.png"), "file not found", "bmus_image"),
        (row("BAD-UNREADABLE", bmus_image="images/garbage.png"), "unreadable", "bmus_image"),
        (row("BAD-EMPTY", bmus_mask="images/empty_mask.png"), "empty", "bmus_mask"),
        (row("BAD-SIZE", bmus_mask="images/small_mask.png"), "does not match", "bmus_mask"),
        (row("BAD-NONBINARY", bmus_mask="images/grey_mask.png"), "not binary", "bmus_mask"),
        (row("BAD-LABEL", label="N1"), "label must be", "label"),
        (row("BAD-DATE", exam_date="2023-13-45"), "exam_date", "exam_date"),
        (row("BAD-ROOT", bmus_image=f"../{outside.name}"), "outside", "bmus_image"),
        (row("BAD-SPLIT", split="train"), "split must be", "split"),
        (row("", site="A"), "missing value", "case_id"),
        (
            row("BAD-REPEAT", bmus_mask_reader2="images/empty_mask.png"),
            "empty",
            "bmus_mask_reader2",
        ),
    ]


@pytest.fixture
def bad_manifest(tiny_cohort: Path) -> tuple[Path, list[tuple[dict, str, str]]]:
    """The tiny cohort plus one row per kind of bad input and two duplicate case ids.

    Returns the manifest and the bad rows as (row, expected reason, column). Duplicates:
    T001 repeated identically (collapses to one), T002 repeated with another label
    (a conflict: both rows are held back).
    """
    bad = _bad_rows(tiny_cohort.parent)
    rows = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    dup_same = rows.iloc[1].to_dict()
    dup_conflict = rows.iloc[2].to_dict() | {"label": "1" if rows.iloc[2]["label"] == "0" else "0"}
    _append_rows(tiny_cohort, [r for r, _, _ in bad] + [dup_same, dup_conflict])
    return tiny_cohort, bad


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """The names of the files ingest validation decodes from now on (in order); a header
    check alone is no decode."""
    from tasks.data import row_files

    names: list[str] = []
    read = row_files._read_image

    def counting(uri, *args):
        names.append(uri.rsplit("/", 1)[-1])
        return read(uri, *args)

    monkeypatch.setattr(row_files, "_read_image", counting)
    return names
