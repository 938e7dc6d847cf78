"""Manifest validation, quarantine, versioning and splits, on real files and a real store."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.config import Settings
from tasks.data.ingest import ManifestError, current_cohort, ingest, validate_manifest
from tasks.data.store import FeatureStore


def _ingest(manifest, store_root, **settings):
    settings = Settings(store=str(store_root), **settings)
    return ingest(str(manifest), FeatureStore(settings.store), settings, run_id="test-run")


def _append_rows(manifest, rows):
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    pd.concat([frame, pd.DataFrame(rows)], ignore_index=True).fillna("").to_csv(
        manifest, index=False
    )


def test_ingest_tiny_cohort_and_reingest_adds_nothing(tiny_cohort, tmp_path):
    store = tmp_path / "store"
    first = _ingest(tiny_cohort, store, validation_sites=["B"])
    assert (first.rows_in, first.valid, first.new_versions, first.quarantined) == (8, 8, 8, 0)
    cohort = FeatureStore(str(store)).read("cohort")
    assert len(cohort) == 8
    assert set(cohort.loc[cohort["site"] == "B", "split"]) == {"validation"}
    assert set(cohort.loc[cohort["site"] == "A", "split"]) <= {"training", "testing"}
    assert cohort["bmus_image_sha256"].str.len().eq(64).all()
    # No patient identifier is stored: only a keyed pseudonym.
    assert not cohort["patient_key"].str.startswith("P").any()
    assert "patient_id" not in cohort.columns

    second = _ingest(tiny_cohort, store, validation_sites=["B"])
    assert second.new_versions == 0 and second.valid == 8
    assert len(FeatureStore(str(store)).read("cohort")) == 8


def test_changed_file_adds_a_version_and_keeps_the_old(tiny_cohort, tmp_path):
    store = tmp_path / "store"
    _ingest(tiny_cohort, store)
    before = FeatureStore(str(store)).read("cohort")
    image = tiny_cohort.parent / "images" / "T003_bmus.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 0xFF
    Image.fromarray(pixels).save(image)

    report = _ingest(tiny_cohort, store)
    assert report.new_versions == 1
    cohort = FeatureStore(str(store)).read("cohort")
    assert len(cohort) == 9
    versions = cohort[cohort["case_id"] == "T003"]
    assert versions["bmus_image_sha256"].nunique() == 2
    current = current_cohort(cohort)
    assert len(current) == 8
    new_hash = current.set_index("case_id").at["T003", "bmus_image_sha256"]
    assert new_hash not in set(before["bmus_image_sha256"])
    # The re-ingested case keeps the split its patient already had.
    old_split = before.set_index("case_id").at["T003", "split"]
    assert current.set_index("case_id").at["T003", "split"] == old_split


def _bad_rows(folder):
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


def test_every_bad_input_is_quarantined_with_its_reason(tiny_cohort, tmp_path):
    bad = _bad_rows(tiny_cohort.parent)
    # Duplicate case ids: an identical repeat collapses, a conflicting one is held back.
    rows = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    dup_same = rows.iloc[1].to_dict()
    dup_conflict = rows.iloc[2].to_dict() | {"label": "1" if rows.iloc[2]["label"] == "0" else "0"}
    _append_rows(tiny_cohort, [r for r, _, _ in bad] + [dup_same, dup_conflict])

    report = _ingest(tiny_cohort, tmp_path / "store")
    store = FeatureStore(str(tmp_path / "store"))
    quarantine = store.read("quarantine")
    cohort = store.read("cohort")

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
    assert report.valid == 7
    assert report.quarantined == len(bad) + 3  # + repeated T001 row + both T002 rows

    # Re-ingesting the same bad manifest adds no new quarantine rows.
    again = _ingest(tiny_cohort, tmp_path / "store")
    assert again.quarantine_new == 0
    assert len(store.read("quarantine")) == len(quarantine)


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


def test_derived_splits_group_by_patient_and_stratify(tmp_path):
    from tasks.data.ingest import assign_splits

    rng = np.random.default_rng(0)
    n = 300
    patients = [f"p{i // 2}" for i in range(n)]  # two lesions per patient
    labels = [int(rng.random() < 0.4) for _ in range(n // 2) for _ in range(2)]
    cohort = pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(n)],
            "patient_key": patients,
            "site": "A",
            "label": pd.array(labels, dtype="Int8"),
            "split": pd.array([None] * n, dtype="string"),
            "split_source": pd.array([None] * n, dtype="string"),
        }
    )
    out = assign_splits(cohort, pd.DataFrame(), Settings(test_share=0.2, seed=3))
    assert out.groupby("patient_key")["split"].nunique().max() == 1
    share = (out["split"] == "testing").mean()
    assert 0.15 < share < 0.25
    prevalence = out.groupby("split")["label"].mean()
    assert abs(prevalence["training"] - prevalence["testing"]) < 0.08
    again = assign_splits(cohort, pd.DataFrame(), Settings(test_share=0.2, seed=3))
    assert again["split"].tolist() == out["split"].tolist()


def test_s3_round_trip(tiny_cohort, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(tiny_cohort.parent) + "/", f"{s3_bucket}/export/", recursive=True)
    store_root = f"{s3_bucket}/store"
    settings = Settings(store=store_root, validation_sites=["B"])
    store = FeatureStore(store_root)
    report = ingest(f"{s3_bucket}/export/manifest.csv", store, settings, run_id="s3")
    assert (report.valid, report.quarantined) == (8, 0)
    cohort = store.read("cohort")
    assert len(cohort) == 8
    assert cohort["bmus_image"].str.startswith(f"{s3_bucket}/export/images/").all()
    assert fs.exists(f"{store_root}/cohort/_delta_log/00000000000000000000.json")

    again = ingest(f"{s3_bucket}/export/manifest.csv", store, settings, run_id="s3-2")
    assert again.new_versions == 0
    # Time travel: the first commit still reads back as it was.
    assert len(store.read("cohort", version=0)) == 8


def test_busbra_subset_ingests_cleanly(tmp_path, shared_data):
    from tasks.data.sources.busbra import busbra_manifest

    manifest = tmp_path / "busbra.csv"
    frame = busbra_manifest(shared_data / "busbra", manifest, limit_patients=12, seed=1)
    report = _ingest(manifest, tmp_path / "store", data_roots=[str(shared_data / "busbra")])
    assert report.quarantined == 0 and report.valid == len(frame)
    cohort = FeatureStore(str(tmp_path / "store")).read("cohort")
    assert cohort["cdus_image"].isna().all()
    assert cohort.groupby("patient_key")["split"].nunique().max() == 1
