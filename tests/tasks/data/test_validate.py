"""Manifest validation: every bad input is held back with its reason, on real files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.config import Settings
from tasks.data.tables import COHORT, QUARANTINE
from tasks.data.validate import (
    ManifestError,
    case_version,
    pseudonymise,
    read_manifest,
    validate_manifest,
    validate_row,
)
from tasks.features.imaging import check_mask
from tests.tasks.data import hostile_files as hostile


def test_every_bad_input_is_quarantined_with_its_reason(bad_manifest):
    manifest, bad = bad_manifest
    validated = validate_manifest(str(manifest), Settings(), "r")
    quarantine, cohort = validated.quarantine, validated.cohort

    for row, reason, column in bad:
        hits = quarantine[(quarantine["case_id"].fillna("") == row["case_id"])]
        assert not hits.empty, f"{row['case_id']} was not quarantined"
        hit = hits[hits["column"] == column]
        assert hit["reason"].str.contains(reason).any(), (row["case_id"], hits["reason"].tolist())
    # Every file-level problem names the file.
    file_problems = quarantine[quarantine["column"].isin(["bmus_image", "bmus_mask"])]
    assert file_problems["file"].notna().all()
    # The conflicting duplicate holds back both rows of T002; T001 stays, once.
    dup = quarantine[quarantine["case_id"] == "T002"]
    assert len(dup) == 2 and dup["reason"].str.contains("duplicate case_id").all()
    assert set(cohort["case_id"]) == {f"T{i:03d}" for i in range(8)} - {"T002"}
    assert (cohort["case_id"] == "T001").sum() == 1
    assert len(cohort) == 7
    assert validated.rows_in == 8 + len(bad) + 2
    assert quarantine["manifest_row"].nunique() == len(bad) + 3  # + T001 repeat, both T002
    assert validated.problems_by_case["BAD-LABEL"] == [
        "label must be 0 (N0), 1 (N>=1) or empty, got 'N1'"
    ]


def test_an_unreadable_image_is_quarantined_with_the_readers_message(bad_manifest):
    # The reader's message (SimpleITK puts it on the last line), not its source location.
    manifest, _ = bad_manifest
    quarantine = validate_manifest(str(manifest), Settings(), "r").quarantine
    reason = quarantine.set_index("case_id").at["BAD-UNREADABLE", "reason"]
    assert reason.startswith("unreadable image: ")
    assert "Unable to determine ImageIO reader" in reason
    assert ".cxx" not in reason


def test_valid_rows_are_typed_cohort_rows_with_lineage(tiny_cohort, pseudonym_key):
    validated = validate_manifest(str(tiny_cohort), Settings(seed=5), "run-7")
    cohort = validated.cohort
    assert list(cohort.columns) == list(COHORT.dtypes)
    assert list(validated.quarantine.columns) == list(QUARANTINE.dtypes)
    assert validated.quarantine.empty and validated.problems_by_case == {}
    assert (cohort["run_id"] == "run-7").all()
    assert (cohort["manifest"] == str(tiny_cohort)).all()
    assert cohort["split"].isna().all() and cohort["split_source"].isna().all()
    assert cohort.set_index("case_id").at["T000", "patient_key"] == pseudonymise(
        "P000", pseudonym_key
    )
    assert cohort["case_version"].str.len().eq(20).all()
    assert cohort["bmus_image"].map(lambda p: p.startswith(str(tiny_cohort.parent))).all()


def test_a_manifest_split_is_kept_with_its_source(tiny_cohort):
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    frame.loc[0, "split"] = " Testing "
    frame.to_csv(tiny_cohort, index=False)
    cohort = validate_manifest(str(tiny_cohort), Settings(), "r").cohort.set_index("case_id")
    assert (cohort.at["T000", "split"], cohort.at["T000", "split_source"]) == (
        "testing",
        "manifest",
    )


def test_progress_is_reported_for_every_row(tiny_cohort):
    seen: list[tuple[int, int]] = []
    validate_manifest(str(tiny_cohort), Settings(), "r", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 8) for i in range(1, 9)]


def test_missing_required_column_quarantines_every_row(tiny_cohort, tmp_path):
    frame = pd.read_csv(tiny_cohort, dtype=str).drop(columns=["bmus_mask"])
    frame.to_csv(tiny_cohort, index=False)
    validated = validate_manifest(str(tiny_cohort), Settings(), "r")
    assert validated.cohort.empty
    assert len(validated.quarantine) == 8
    assert validated.quarantine["reason"].str.contains("no column bmus_mask").all()


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        validate_manifest(str(tmp_path / "missing.csv"), Settings(), "r")


def test_a_broken_parquet_manifest_names_the_file(tmp_path):
    broken = tmp_path / "m.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match=r"m\.parquet: cannot be read"):
        read_manifest(str(broken))


def test_a_parquet_manifest_reads_as_strings_with_stripped_headers(tmp_path):
    path = tmp_path / "m.parquet"
    pd.DataFrame({" case_id ": ["A"], "label": [1]}).to_parquet(path)
    frame = read_manifest(str(path))
    assert list(frame.columns) == ["case_id", "label"]
    assert frame.at[0, "label"] == "1"


def test_data_roots_setting_confines_paths(tiny_cohort, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    validated = validate_manifest(str(tiny_cohort), Settings(data_roots=[str(other)]), "r")
    assert validated.cohort.empty
    assert validated.quarantine["reason"].str.contains("outside the configured data roots").any()


def test_patient_spanning_splits_is_quarantined(tiny_cohort):
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    frame.loc[[0, 1], "patient_id"] = "SAME"
    frame.loc[0, "split"], frame.loc[1, "split"] = "training", "testing"
    frame.to_csv(tiny_cohort, index=False)
    validated = validate_manifest(str(tiny_cohort), Settings(), "r")
    assert {"T000", "T001"} <= set(validated.quarantine["case_id"])
    assert validated.quarantine["reason"].str.contains("leakage").any()


def _disk(shape=(20, 30), value=255) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[5:10, 5:12] = value
    return mask


@pytest.mark.parametrize(
    ("mask", "grid", "reason"),
    [
        (_disk(), (20, 30), None),
        (_disk(value=1), (20, 30), None),
        (np.repeat(_disk()[..., None], 3, axis=2), (20, 30), None),  # grey stored as RGB
        (_disk(), (20, 31), "does not match the image size (31, 20)"),
        (np.zeros((20, 30), np.uint8), (20, 30), "mask is empty"),
        (_disk() // 2 + 128, (20, 30), "not binary"),  # 128 and 255: no background 0
        (np.where(_disk(), 255, np.eye(20, 30, dtype=np.uint8)), (20, 30), "not binary"),
        (np.full((20, 30), 255, np.uint8), (20, 30), None),  # all lesion: 0 + one value
        (np.stack([_disk(), _disk(), np.zeros((20, 30), np.uint8)], axis=2), (20, 30), "colour"),
    ],
)
def test_check_mask(mask, grid, reason):
    found = check_mask(mask, grid)
    assert found is None if reason is None else reason in found


def test_check_mask_lists_the_values_of_a_non_binary_mask():
    mask = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) % 9
    assert check_mask(mask, (20, 30)) == "mask is not binary (values: 0, 1, 2, 3, 4, 5...)"


def test_validate_row_parses_values_and_reports_each_bad_one(tmp_path):
    row = {
        "case_id": " C1 ",
        "site": "A",
        "label": "1.0",
        "exam_date": "2024-02-03",
        "pixel_spacing_mm": "0.08",
        "split": "",
    }
    record, problems = validate_row(row, str(tmp_path), [str(tmp_path)])
    assert (record["case_id"], record["patient_id"], record["label"]) == ("C1", "C1", 1)
    assert (record["exam_date"], record["pixel_spacing_mm"], record["split"]) == (
        "2024-02-03",
        0.08,
        None,
    )
    # No image or mask given: two missing required values, nothing else.
    assert sorted(p.column for p in problems) == ["bmus_image", "bmus_mask"]

    bad = row | {"pixel_spacing_mm": "-1", "label": "2", "exam_date": "03/02/2024"}
    _, problems = validate_row(bad, str(tmp_path), [str(tmp_path)])
    by_column = {p.column: p.reason for p in problems}
    assert by_column["pixel_spacing_mm"] == "pixel_spacing_mm must be a positive number, got '-1'"
    assert "label must be" in by_column["label"]
    assert "ISO date" in by_column["exam_date"]


def test_a_mask_without_its_image_is_reported(tiny_cohort):
    row = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False).iloc[0].to_dict()
    row["cdus_mask"], row["cdus_image"] = row["bmus_mask"], ""
    _, problems = validate_row(row, str(tiny_cohort.parent), [str(tiny_cohort.parent)])
    assert [(p.column, p.reason) for p in problems] == [
        ("cdus_mask", "mask given without cdus_image")
    ]


def test_case_version_follows_content_and_clinical_fields_only():
    record = {"site": "A", "patient_id": "P", "label": 0, "bmus_image_sha256": "h1"}
    same = case_version(record, b"k" * 32)
    assert same == case_version(
        record | {"bmus_image": "/another/path.png", "run_id": "x"}, b"k" * 32
    )
    assert same != case_version(record | {"label": 1}, b"k" * 32)
    assert same != case_version(record | {"bmus_image_sha256": "h2"}, b"k" * 32)


def test_case_version_cannot_be_recomputed_from_a_stored_row_without_the_key():
    # The stored fields plus a guessed patient id give the unkeyed hash, never the version.
    import hashlib
    import json

    record = {"site": "A", "patient_id": "1234567", "label": 0, "bmus_image_sha256": "h1"}
    fields = ["site", "patient_id", "exam_date", "label", "split", "pixel_spacing_mm"]
    fields += ["bmus_image_sha256", "bmus_mask_sha256", "cdus_image_sha256", "cdus_mask_sha256"]
    fields += ["bmus_mask_reader2_sha256", "bmus_mask_repeat_sha256"]
    payload = json.dumps({k: record.get(k) for k in fields}, sort_keys=True, default=str)
    unkeyed = hashlib.sha256(payload.encode()).hexdigest()[:20]
    assert case_version(record, b"k" * 32) != unkeyed
    assert case_version(record, b"k" * 32) != case_version(record, b"j" * 32)


def test_pseudonymise_is_an_hmac_of_the_secret_key_not_of_the_seed():
    import hashlib
    import hmac

    key = pseudonymise("P-001", b"k" * 32)
    assert key == pseudonymise("P-001", b"k" * 32) and len(key) == 32
    assert key != pseudonymise("P-001", b"j" * 32) and key != pseudonymise("P-002", b"k" * 32)
    assert "P-001" not in key
    expected = hmac.new(b"k" * 32, b"sln-patient:P-001", hashlib.sha256).hexdigest()[:32]
    assert key == expected
    # The old seed-keyed hash (seed 20250101 default) is not what is stored.
    assert key[:16] != hashlib.sha256(b"sln-patient:20250101:P-001").hexdigest()[:16]


def test_validation_refuses_to_start_without_a_key(tiny_cohort, monkeypatch, tmp_path):
    from tasks.data.secrets import ENV, MissingKeyError

    monkeypatch.delenv(ENV)
    with pytest.raises(MissingKeyError, match=ENV):
        validate_manifest(str(tiny_cohort), Settings(store=str(tmp_path / "s")), "r")


def _stored_cohort(tiny_cohort, **changes) -> pd.DataFrame:
    """The tiny cohort as already ingested (seeded keys), with ``changes`` per case id."""
    stored = validate_manifest(str(tiny_cohort), Settings(), "r0").cohort.copy()
    stored["split"] = "training"
    for case, values in changes.items():
        for column, value in values.items():
            stored.loc[stored["case_id"] == case, column] = value
    return stored


def test_a_case_id_stored_for_another_patient_or_site_is_quarantined(tiny_cohort):
    stored = _stored_cohort(
        tiny_cohort,
        T000={"patient_key": pseudonymise("someone-else", b"another key" * 3)},
        T001={"site": "Z"},
    )
    validated = validate_manifest(str(tiny_cohort), Settings(), "r", stored=stored)
    reasons = validated.quarantine.set_index("case_id")["reason"]
    assert reasons["T000"] == "case_id T000 is already stored for another patient"
    assert reasons["T001"] == "case_id T001 is already stored for site Z"
    assert set(validated.cohort["case_id"]) == {f"T{i:03d}" for i in range(2, 8)}


def test_a_manifest_split_against_the_stored_patient_split_is_quarantined(tiny_cohort):
    stored = _stored_cohort(tiny_cohort)  # every patient stored in training
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    frame.loc[0, "split"] = "testing"
    frame.loc[1, "split"] = "training"
    frame.to_csv(tiny_cohort, index=False)
    validated = validate_manifest(str(tiny_cohort), Settings(), "r", stored=stored)
    quarantine = validated.quarantine.set_index("case_id")
    assert list(quarantine.index) == ["T000"]
    assert quarantine.at["T000", "reason"] == (
        "manifest split testing conflicts with the patient's stored split training (leakage)"
    )
    assert quarantine.at["T000", "column"] == "split"


def test_one_lesion_in_testing_and_one_unsplit_is_quarantined(tiny_cohort):
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    frame.loc[[0, 1], "patient_id"] = "P000"
    frame.loc[0, "split"] = "testing"
    frame.to_csv(tiny_cohort, index=False)
    validated = validate_manifest(str(tiny_cohort), Settings(), "r")
    held = validated.quarantine
    assert sorted(held["case_id"]) == ["T000", "T001"]
    assert held["reason"].str.contains("mix split testing with empty splits").all()


# --- hostile input: headers before pixels, odd shapes, odd ids, storage hiccups ------------
def _hostile_manifest(folder, rows: list[dict], **columns) -> str:
    """A manifest of ``rows`` (case_id, image, mask, extra columns) at ``folder``, each case
    its own patient at site A."""
    full = [
        {"case_id": r["case_id"], "patient_id": f"P-{i}", "site": "A", **r}
        for i, r in enumerate(rows)
    ]
    frame = pd.DataFrame(full).fillna("")
    for name, values in columns.items():
        frame[name] = values
    path = folder / "manifest.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.fixture
def files(tmp_path):
    """A 48 x 64 speckle PNG and its disk mask PNG, and a writer for more files."""
    shape = (48, 64)

    def write(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        return name

    write("img.png", hostile.png(hostile.speckle(shape)))
    write("mask.png", hostile.png(hostile.disk(shape)))
    write.shape = shape
    return write


def _outcome(manifest: str, settings: Settings | None = None):
    validated = validate_manifest(manifest, settings or Settings(), "r")
    reasons = validated.quarantine.groupby("case_id")["reason"].apply(" | ".join).to_dict()
    return validated, set(validated.cohort["case_id"]), reasons


def test_a_30000_pixel_png_is_refused_on_its_header_without_being_decoded(
    tmp_path, files, monkeypatch
):
    import resource

    import SimpleITK as sitk

    files("huge.png", hostile.huge_png(30000, 30000))
    files("big.png", hostile.huge_png(6000, 6000))  # sides fine, 36 M pixels are not
    decoded: list[str] = []
    read = sitk.ReadImage
    monkeypatch.setattr(sitk, "ReadImage", lambda path, *a: decoded.append(path) or read(path, *a))
    manifest = _hostile_manifest(
        tmp_path,
        [
            {"case_id": "ok", "bmus_image": "img.png", "bmus_mask": "mask.png"},
            {"case_id": "huge", "bmus_image": "huge.png", "bmus_mask": "mask.png"},
            {"case_id": "big", "bmus_image": "big.png", "bmus_mask": "mask.png"},
        ],
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    validated, stored, reasons = _outcome(manifest)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert stored == {"ok"}
    assert not [p for p in decoded if "huge" in p or "big" in p]  # never decoded
    assert grown_mb < 200  # decoding would have taken 900 MB
    row = validated.quarantine.set_index("case_id").loc["huge"]
    assert (row["column"], row["file"]) == ("bmus_image", str(tmp_path / "huge.png"))
    assert row["reason"] == (
        "image is 30000 x 30000 pixels: a side over max_image_side 8192 (SLN_MAX_IMAGE_SIDE); "
        "not decoded"
    )
    assert "over max_image_pixels 16,777,216 (SLN_MAX_IMAGE_PIXELS)" in reasons["big"]
    _, stored, _ = _outcome(manifest, Settings(max_image_pixels=40_000_000))
    assert "big" not in stored  # its one row of pixels is cut short: never accepted


@pytest.mark.parametrize("suffix", ["nii", "nii.gz", "mha", "nrrd"])
def test_a_one_slice_volume_is_a_2d_frame_not_a_size_mismatch(tmp_path, files, suffix):
    frame = hostile.speckle(files.shape)
    hostile.volume(tmp_path / f"img.{suffix}", frame[None])
    hostile.volume(tmp_path / f"mask.{suffix}", hostile.disk(files.shape)[None])
    manifest = _hostile_manifest(
        tmp_path,
        [
            {"case_id": "vol", "bmus_image": f"img.{suffix}", "bmus_mask": "mask.png"},
            {"case_id": "volmask", "bmus_image": "img.png", "bmus_mask": f"mask.{suffix}"},
        ],
    )
    _, stored, reasons = _outcome(manifest)
    assert stored == {"vol", "volmask"}, reasons


def test_a_multi_slice_volume_is_refused_at_ingest_with_the_frame_limit(tmp_path, files):
    hostile.volume(
        tmp_path / "cine.nii.gz", np.stack([hostile.speckle(files.shape, s) for s in range(5)])
    )
    manifest = _hostile_manifest(
        tmp_path, [{"case_id": "cine", "bmus_image": "cine.nii.gz", "bmus_mask": "mask.png"}]
    )
    _, stored, reasons = _outcome(manifest)
    assert not stored
    assert reasons["cine"] == (
        "volume of 5 frames (size 64x48x5): over max_frames 1 (SLN_MAX_FRAMES); export the "
        "frame to measure as one image"
    )


def test_an_rgba_mask_is_read_on_its_first_channel_unless_its_colours_differ(tmp_path, files):
    mask = hostile.disk(files.shape)
    files("rgba.png", hostile.png(hostile.rgba(mask), "RGBA"))
    files("drawn.png", hostile.png(hostile.rgba(mask, disagree=True), "RGBA"))
    manifest = _hostile_manifest(
        tmp_path,
        [
            {"case_id": "rgba", "bmus_image": "img.png", "bmus_mask": "rgba.png"},
            {"case_id": "drawn", "bmus_image": "img.png", "bmus_mask": "drawn.png"},
        ],
    )
    _, stored, reasons = _outcome(manifest)
    assert stored == {"rgba"}
    assert (
        reasons["drawn"] == "mask is a colour image (its colour channels differ), not a binary mask"
    )


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_an_image_cut_in_half_is_quarantined_as_truncated(tmp_path, files, kind):
    data = (hostile.png if kind == "png" else hostile.jpeg)(hostile.speckle(files.shape))
    files(f"half.{kind}", hostile.cut(data))
    manifest = _hostile_manifest(
        tmp_path, [{"case_id": "half", "bmus_image": f"half.{kind}", "bmus_mask": "mask.png"}]
    )
    _, stored, reasons = _outcome(manifest)
    assert not stored
    assert reasons["half"].startswith("truncated file: "), reasons


def test_pixel_spacing_from_a_volume_header_is_used_checked_and_kept_in_range(tmp_path, files):
    frame = hostile.speckle(files.shape)[None]
    hostile.volume(tmp_path / "fine.nii.gz", frame, (0.1, 0.1, 1.0))
    hostile.volume(tmp_path / "wild.nii.gz", frame, (20.0, 20.0, 1.0))
    rows = [
        {"case_id": "header", "bmus_image": "fine.nii.gz", "bmus_mask": "mask.png"},
        {"case_id": "agrees", "bmus_image": "fine.nii.gz", "bmus_mask": "mask.png"},
        {"case_id": "differs", "bmus_image": "fine.nii.gz", "bmus_mask": "mask.png"},
        {"case_id": "wild", "bmus_image": "wild.nii.gz", "bmus_mask": "mask.png"},
        {"case_id": "manifest_wild", "bmus_image": "img.png", "bmus_mask": "mask.png"},
    ]
    spacing = ["", "0.102", "0.2", "", "50"]
    validated, stored, reasons = _outcome(
        _hostile_manifest(tmp_path, rows, pixel_spacing_mm=spacing)
    )
    assert stored == {"header", "agrees"}
    cohort = validated.cohort.set_index("case_id")
    assert cohort.at["header", "pixel_spacing_mm"] == pytest.approx(0.1)
    assert cohort.at["header", "pixel_spacing_source"] == "header"
    assert "disagrees with the file's 0.1 mm (image header)" in reasons["differs"]
    assert reasons["wild"] == (
        "pixel spacing 20 mm (header) is outside the plausible range 0.005-5 mm "
        "(SLN_SPACING_RANGE_MM)"
    )
    assert (
        "pixel spacing 50 mm (manifest) is outside the plausible range" in reasons["manifest_wild"]
    )


def test_ids_are_nfc_so_composed_and_decomposed_cafe_are_one_case(tmp_path, files):
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "Café"), unicodedata.normalize("NFD", "Café")
    assert nfc != nfd
    rows = [
        {"case_id": nfc, "bmus_image": "img.png", "bmus_mask": "mask.png"},
        {"case_id": nfd, "bmus_image": "img.png", "bmus_mask": "mask.png"},
    ]
    manifest = _hostile_manifest(tmp_path, rows, patient_id=[nfd, nfc], site=[f"S{nfc}", f"S{nfd}"])
    validated, stored, _ = _outcome(manifest)
    assert stored == {nfc}  # the repeat collapses onto the first row: one case, one patient
    assert validated.cohort["site"].tolist() == [f"S{nfc}"]
    assert "duplicate case_id Café: row repeats" in validated.quarantine["reason"].iloc[0]


def test_ids_with_control_characters_or_too_long_are_refused_without_echoing_them(tmp_path, files):
    rows = [
        {"case_id": "C1\nINFO forged log line", "bmus_image": "img.png", "bmus_mask": "mask.png"},
        {"case_id": "C2", "bmus_image": "img.png", "bmus_mask": "mask.png"},
        {"case_id": "C3", "bmus_image": "img.png", "bmus_mask": "mask.png"},
    ]
    manifest = _hostile_manifest(tmp_path, rows, patient_id=["P1", "P\u202e2", "P" * 200])
    validated, stored, _ = _outcome(manifest)
    assert not stored
    by_row = validated.quarantine.set_index("manifest_row")[["column", "reason"]]
    assert by_row.loc[1].tolist() == [
        "case_id",
        "case_id holds control, format or unassigned characters",
    ]
    assert by_row.loc[2].tolist() == [
        "patient_id",
        "patient_id holds control, format or unassigned characters",
    ]
    assert by_row.loc[3].tolist() == ["patient_id", "patient_id is longer than 128 characters"]


def test_unknown_columns_are_warned_by_name_and_never_by_value(tmp_path, files, caplog):
    import logging

    rows = [{"case_id": "ok", "bmus_image": "img.png", "bmus_mask": "mask.png"}]
    manifest = _hostile_manifest(
        tmp_path, rows, pixel_spacing=["0.1"], PatientName=["Zqxdoe^Jane"], PatientID=["9912345"]
    )
    with caplog.at_level(logging.WARNING, logger="tasks.data.validate"):
        validated, stored, _ = _outcome(manifest)
    assert stored == {"ok"}
    assert validated.unknown_columns == ["pixel_spacing", "PatientName", "PatientID"]
    assert (
        "3 unknown column(s), not read: 'pixel_spacing' (did you mean pixel_spacing_mm?)"
        in caplog.text
    )
    assert "'PatientName'" in caplog.text
    assert "Zqxdoe" not in caplog.text and "9912345" not in caplog.text


def test_a_file_vanished_before_its_hash_quarantines_that_case_only(tmp_path, files, monkeypatch):
    from tasks.data import uris

    files("gone.png", hostile.png(hostile.speckle(files.shape)))
    real = uris.sha256

    def vanishing(uri):
        if uri.endswith("gone.png"):
            (tmp_path / "gone.png").unlink()
        return real(uri)

    monkeypatch.setattr(uris, "sha256", vanishing)
    rows = [
        {"case_id": "ok", "bmus_image": "img.png", "bmus_mask": "mask.png"},
        {"case_id": "gone", "bmus_image": "gone.png", "bmus_mask": "mask.png"},
    ]
    _, stored, reasons = _outcome(_hostile_manifest(tmp_path, rows))
    assert stored == {"ok"}
    assert reasons["gone"] == "file vanished during ingest (found, then gone)"


def test_an_eio_while_reading_at_ingest_propagates_for_the_retry(tmp_path, files, monkeypatch):
    import errno

    import SimpleITK as sitk

    def eio(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sitk, "ReadImage", eio)
    rows = [{"case_id": "ok", "bmus_image": "img.png", "bmus_mask": "mask.png"}]
    with pytest.raises(OSError, match="Input/output error"):
        validate_manifest(_hostile_manifest(tmp_path, rows), Settings(), "r")


def test_a_parquet_manifests_missing_values_are_missing_not_the_text_na(tmp_path, files):
    rows = [
        {"case_id": None, "bmus_image": "img.png", "bmus_mask": "mask.png"},
        {"case_id": "nul", "bmus_image": "img.png\x00.txt", "bmus_mask": "mask.png"},
    ]
    pd.DataFrame(rows).assign(site="A").astype("string").to_parquet(tmp_path / "m.parquet")
    validated = validate_manifest(str(tmp_path / "m.parquet"), Settings(), "r")
    assert validated.cohort.empty
    reasons = validated.quarantine.set_index("manifest_row")["reason"]
    assert reasons.loc[1] == "missing value for required column case_id"
    assert reasons.loc[2] == "path holds control characters (a NUL, a newline)"
