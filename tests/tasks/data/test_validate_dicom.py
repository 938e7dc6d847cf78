"""Ingest validation of ultrasound DICOM rows: every frame kind is measured or quarantined
with a reason a user can act on; the pixel size comes from the file when the manifest has
none; identifiers in the headers reach no table and no log."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from tasks.config import Settings
from tasks.data.validate import validate_manifest
from tests.tasks.data import dicom_files as files

SHAPE = (64, 80)
LOOPS = Settings(max_frames=30)  # a site that measures one named frame of its cine loops


def _row(case_id: str, image: str, mask: str, **extra) -> dict:
    return {
        "case_id": case_id,
        "patient_id": f"P-{case_id}",
        "site": "A",
        "bmus_image": image,
        "bmus_mask": mask,
        **extra,
    }


@pytest.fixture
def dicom_cohort(tmp_path):
    """One row per frame kind a scanner exports, each mask a PNG on the frame's grid."""
    (tmp_path / "images").mkdir()
    lesion = files.disk(SHAPE, (32, 40), 12)
    files.write_png(tmp_path / "images" / "mask.png", lesion * 255)
    grey, rgb = files.speckle(SHAPE), files.doppler(SHAPE)
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    loop = np.stack([files.doppler(SHAPE, seed) for seed in range(30)])
    regions = [files.region(0, 0, SHAPE[1] - 1, SHAPE[0] - 1, 0.011)]
    written = {
        "mono2": files.write(tmp_path / "images" / "mono2.dcm", grey, regions=regions),
        "mono1": files.write(tmp_path / "images" / "mono1.dcm", grey, "MONOCHROME1"),
        "rgb": files.write(tmp_path / "images" / "rgb.dcm", rgb, pixel_spacing=(0.07, 0.07)),
        "palette": files.write_palette(tmp_path / "images" / "palette.dcm", grey, palette),
        "ybr_jpeg": files.write(
            tmp_path / "images" / "ybr.dcm", rgb, "YBR_FULL_422", syntax=JPEGBaseline8Bit
        ),
        "rle": files.write(tmp_path / "images" / "rle.dcm", rgb, syntax=RLELossless),
        "loop": files.write(
            tmp_path / "images" / "loop.dcm", loop, "YBR_FULL_422", syntax=JPEGBaseline8Bit
        ),
        "jls_loop": files.write(
            tmp_path / "images" / "jls.dcm", loop[:3, ..., 0], syntax=JPEGLSLossless
        ),
    }
    rows = [_row(name, f"images/{path.name}", "images/mask.png") for name, path in written.items()]
    rows.append(_row("loop_frame", "images/loop.dcm", "images/mask.png", bmus_frame="12"))
    rows.append(_row("bad_frame", "images/loop.dcm", "images/mask.png", bmus_frame="31"))
    rows.append(_row("spacing_ok", "images/mono2.dcm", "images/mask.png", pixel_spacing_mm="0.11"))
    rows.append(_row("spacing_off", "images/mono2.dcm", "images/mask.png", pixel_spacing_mm="0.2"))
    frame = pd.DataFrame(rows).fillna("")
    manifest = tmp_path / "manifest.csv"
    frame.to_csv(manifest, index=False)
    return manifest


def test_every_frame_kind_is_measured_or_quarantined_with_an_actionable_reason(dicom_cohort):
    validated = validate_manifest(str(dicom_cohort), LOOPS, "r")
    cohort = validated.cohort.set_index("case_id")
    quarantine = validated.quarantine.set_index("case_id")
    assert set(cohort.index) == {
        "mono2",
        "mono1",
        "rgb",
        "palette",
        "ybr_jpeg",
        "rle",
        "loop_frame",
        "spacing_ok",
    }
    reasons = quarantine["reason"].to_dict()
    columns = quarantine["column"].to_dict()
    assert reasons["loop"] == (
        "cine loop of 30 frames: add a manifest column bmus_frame with the frame to measure (1-30)"
    )
    assert columns["loop"] == "bmus_frame"
    assert "cine loop of 3 frames: add a manifest column bmus_frame" in reasons["jls_loop"]
    assert reasons["bad_frame"] == "bmus_frame must be a frame number from 1 to 30, got 31"
    assert reasons["spacing_off"] == (
        "pixel_spacing_mm 0.2 disagrees with the file's 0.11 mm (ultrasound region) by more "
        "than 5%: correct the manifest value or leave it empty to use the file's"
    )
    assert columns["spacing_off"] == "pixel_spacing_mm"
    assert int(cohort.at["loop_frame", "bmus_frame"]) == 12


def test_the_pixel_size_and_its_source_are_recorded(dicom_cohort):
    cohort = validate_manifest(str(dicom_cohort), LOOPS, "r").cohort.set_index("case_id")
    spacing = cohort["pixel_spacing_mm"].to_dict()
    source = cohort["pixel_spacing_source"].to_dict()
    assert (spacing["mono2"], source["mono2"]) == (pytest.approx(0.11), "us_region")
    assert (spacing["rgb"], source["rgb"]) == (pytest.approx(0.07), "pixel_spacing")
    assert pd.isna(spacing["palette"]) and source["palette"] == "none"
    assert (spacing["spacing_ok"], source["spacing_ok"]) == (0.11, "manifest")


def test_a_manifest_spacing_within_five_percent_of_the_file_is_kept(tmp_path):
    lesion = files.disk(SHAPE, (32, 40), 12)
    files.write_png(tmp_path / "mask.png", lesion * 255)
    files.write(
        tmp_path / "a.dcm", files.speckle(SHAPE), regions=[files.region(0, 0, 79, 63, 0.01)]
    )
    rows = [
        _row("close", "a.dcm", "mask.png", pixel_spacing_mm="0.104"),
        _row("far", "a.dcm", "mask.png", pixel_spacing_mm="0.106"),
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    validated = validate_manifest(str(tmp_path / "manifest.csv"), Settings(), "r")
    assert validated.cohort["case_id"].tolist() == ["close"]
    assert validated.quarantine["case_id"].tolist() == ["far"]
    assert "0.106 disagrees with the file's 0.1 mm" in validated.quarantine["reason"].iloc[0]


def test_a_seg_mask_of_a_cine_frame_validates(tmp_path):
    loop = np.stack([files.speckle(SHAPE, seed) for seed in range(4)])
    files.write(tmp_path / "loop.dcm", loop)
    masks = np.stack([files.disk(SHAPE, (30, 40), 10)])
    files.write_seg(tmp_path / "seg.dcm", tmp_path / "loop.dcm", masks, frames=[3])
    rows = [
        _row("seg", "loop.dcm", "seg.dcm", bmus_frame="3"),
        _row("seg_wrong_frame", "loop.dcm", "seg.dcm", bmus_frame="2"),
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    validated = validate_manifest(str(tmp_path / "manifest.csv"), LOOPS, "r")
    assert validated.cohort["case_id"].tolist() == ["seg"]
    reason = validated.quarantine.set_index("case_id").at["seg_wrong_frame", "reason"]
    assert reason == "SEG has no segmentation of frame 2 (bmus_frame)"


def test_header_identifiers_reach_no_table_and_no_log(dicom_cohort, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    validated = validate_manifest(str(dicom_cohort), LOOPS, "r")
    text = validated.cohort.astype(str).to_csv() + validated.quarantine.astype(str).to_csv()
    text += caplog.text + "".join(capsys.readouterr())
    for value in files.IDENTIFIERS.values():
        assert value not in text
        assert value.split("^")[0] not in text


def test_a_cine_loop_is_refused_at_ingest_by_default_even_with_its_frame(tmp_path):
    """Settings.max_frames (1 by default): a site measuring cine loops raises it."""
    lesion = files.disk(SHAPE, (32, 40), 12)
    files.write_png(tmp_path / "mask.png", lesion * 255)
    loop = np.stack([files.speckle(SHAPE, seed) for seed in range(4)])
    files.write(tmp_path / "loop.dcm", loop)
    rows = [_row("loop", "loop.dcm", "mask.png", bmus_frame="2")]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    validated = validate_manifest(str(tmp_path / "manifest.csv"), Settings(), "r")
    assert validated.cohort.empty
    assert validated.quarantine["reason"].tolist() == [
        "cine loop of 4 frames (size 80x64x4): over max_frames 1 (SLN_MAX_FRAMES); export the "
        "frame to measure as one image"
    ]
    allowed = validate_manifest(str(tmp_path / "manifest.csv"), Settings(max_frames=4), "r")
    assert allowed.cohort["case_id"].tolist() == ["loop"]


def test_a_dicom_header_promising_a_huge_frame_is_refused_before_its_pixels(tmp_path):
    from pydicom import dcmread

    lesion = files.disk(SHAPE, (32, 40), 12)
    files.write_png(tmp_path / "mask.png", lesion * 255)
    files.write(tmp_path / "big.dcm", files.speckle(SHAPE))
    ds = dcmread(tmp_path / "big.dcm")
    ds.Rows, ds.Columns = 20000, 20000  # the pixel data stays small: only the header lies
    ds.save_as(tmp_path / "big.dcm")
    pd.DataFrame([_row("big", "big.dcm", "mask.png")]).to_csv(tmp_path / "m.csv", index=False)
    validated = validate_manifest(str(tmp_path / "m.csv"), Settings(), "r")
    assert validated.cohort.empty
    assert validated.quarantine["reason"].tolist() == [
        "image is 20000 x 20000 pixels: a side over max_image_side 8192 (SLN_MAX_IMAGE_SIDE); "
        "not decoded"
    ]


def test_a_reingest_decodes_only_what_the_stored_version_cannot_vouch_for(dicom_cohort, decoded):
    first = validate_manifest(str(dicom_cohort), LOOPS, "r")
    manifest = pd.read_csv(dicom_cohort, dtype=str, keep_default_na=False)
    manifest[manifest["case_id"].isin(first.cohort["case_id"])].to_csv(dicom_cohort, index=False)
    decoded.clear()
    again = validate_manifest(str(dicom_cohort), LOOPS, "r", stored=first.cohort)
    # Same versions, same pixel sizes and sources, without decoding the unchanged files:
    # only spacing_ok is read again, since its stored pixel size is the manifest's and the
    # file's own (which the manifest's must stay within 5% of) was not kept.
    columns = ["case_id", "case_version", "pixel_spacing_mm", "pixel_spacing_source"]
    pd.testing.assert_frame_equal(again.cohort[columns], first.cohort[columns])
    assert again.quarantine.empty
    assert decoded == ["mono2.dcm", "mask.png"]
    assert set(first.cohort["pixel_spacing_source"]) == {
        "us_region",
        "pixel_spacing",
        "none",
        "manifest",
    }


def test_an_unchanged_file_is_still_held_to_todays_header_limits(dicom_cohort):
    first = validate_manifest(str(dicom_cohort), LOOPS, "r")
    tight = Settings(max_frames=30, max_image_side=50)  # every frame here is 80 x 64
    again = validate_manifest(str(dicom_cohort), tight, "r", stored=first.cohort)
    assert again.cohort.empty
    reasons = again.quarantine.groupby("case_id")["reason"].agg(" | ".join)
    assert set(reasons.index) >= set(first.cohort["case_id"])
    assert all("over max_image_side 50" in reasons[case] for case in first.cohort["case_id"])
    # The very problems a first ingest under these limits reports, file by file.
    fresh = validate_manifest(str(dicom_cohort), tight, "r")
    columns = ["case_id", "column", "file", "reason"]
    pd.testing.assert_frame_equal(again.quarantine[columns], fresh.quarantine[columns])
