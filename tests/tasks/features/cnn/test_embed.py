"""Embedding step: deep features of every case x mask variant."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.features.cnn.embed import embed_cases
from tests.tasks.features.cnn.common import cnn_settings, cohort_rows, png

torch.set_num_threads(1)


def test_embed_cases_rows_per_mask_variant(tiny_cohort, tmp_path, caplog):
    rows = cohort_rows(tiny_cohort, split=None)
    for row in rows[:2]:  # a second reader's delineation: the lesion mask grown a little
        mask = np.asarray(Image.open(row["bmus_mask"])) > 0
        grown = (np.pad(mask, 2)[:-4, 2:-2] | mask).astype(np.uint8)  # union with a 2 px shift
        row["bmus_mask_reader2"] = png(tmp_path, f"{row['case_id']}_r2.png", grown * 255)
        row["bmus_mask_reader2_sha256"] = "r2-" + row["case_id"]
    settings = cnn_settings(tmp_path, cnn_batch_size=4)
    with caplog.at_level(logging.INFO, logger="tasks.features.cnn.embed"):
        out = embed_cases(rows, "random", settings)
    assert "10/10 crops" in caplog.text
    assert len(out) == 10
    keys = {(r["case_id"], r["mask_variant"]) for r in out}
    assert keys == {(r["case_id"], "reader1") for r in rows} | {
        (r["case_id"], "reader2") for r in rows[:2]
    }
    first = out[0]
    assert set(first) == {
        "case_id",
        "mask_variant",
        "model_version",
        "image_sha256",
        "mask_sha256",
        "cdus_sha256",
        "bmus",
        "cdus",
        "fused",
        "crop_size",
        "crop_margin",
        "device",
    }
    assert len(first["bmus"]) == 1280 and len(first["cdus"]) == 1280 and len(first["fused"]) == 2560
    assert first["model_version"] == "start-random" and first["device"] == "cpu"
    assert first["image_sha256"] == rows[0]["bmus_image_sha256"]
    assert first["cdus_sha256"] == rows[0]["cdus_image_sha256"]
    reader2 = next(r for r in out if r["mask_variant"] == "reader2")
    assert reader2["mask_sha256"] == "r2-" + reader2["case_id"]
    assert reader2["fused"] != next(
        r["fused"] for r in out if r["case_id"] == reader2["case_id"] and r is not reader2
    )

    again = embed_cases(rows, "random", settings)
    assert [r["fused"] for r in again] == [r["fused"] for r in out]


def test_embed_cases_single_stream_without_cdus(tiny_cohort, tmp_path):
    rows = cohort_rows(tiny_cohort, split=None)[:3]
    rows[1]["cdus_image"] = float("nan")
    out = embed_cases(rows, "random", cnn_settings(tmp_path))
    assert all(r["cdus"] is None and r["cdus_sha256"] is None for r in out)
    assert all(len(r["fused"]) == 1280 and r["fused"] == r["bmus"] for r in out)
    with pytest.raises(ValueError, match="needs a CDUS image"):
        embed_cases(rows, "random", cnn_settings(tmp_path), dual=True)
