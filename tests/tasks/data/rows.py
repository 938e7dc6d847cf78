"""Cohort rows for tests: a case with reader-1, and optionally reader-2 / repeat, masks."""

from __future__ import annotations

import pandas as pd


def case_row(case_id: str = "C1", reader2: bool = False, repeat: bool = False) -> dict:
    row = {
        "case_id": case_id,
        "bmus_image": f"/d/{case_id}.png",
        "bmus_image_sha256": f"img-{case_id}",
        "bmus_mask": f"/d/{case_id}_m.png",
        "bmus_mask_sha256": f"m1-{case_id}",
        "bmus_mask_reader2": None,
        "bmus_mask_reader2_sha256": None,
        "bmus_mask_repeat": float("nan"),  # pandas rows carry NaN for a missing value
        "bmus_mask_repeat_sha256": pd.NA,
        "exam_date": "2024-01-01",
    }
    if reader2:
        row["bmus_mask_reader2"] = f"/d/{case_id}_r2.png"
        row["bmus_mask_reader2_sha256"] = f"r2-{case_id}"
    if repeat:
        row["bmus_mask_repeat"] = f"/d/{case_id}_rep.png"
        row["bmus_mask_repeat_sha256"] = f"rep-{case_id}"
    return row
