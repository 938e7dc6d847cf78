"""Ingest: versioning, quarantine and splits written to a real store, from real files."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from tasks.config import Settings
from tasks.data.ingest import (
    IngestReport,
    ingest,
    ingest_task,
    with_perturbation,
)
from tasks.data.store import FeatureStore
from tasks.data.tables import current_cohort


def _ingest(manifest, store_root, **settings):
    settings = Settings(store=str(store_root), **settings)
    return ingest(str(manifest), FeatureStore(settings.store), settings, run_id="test-run")


def test_ingest_tiny_cohort_and_reingest_adds_nothing(tiny_cohort, tmp_path):
    store = tmp_path / "store"
    first = _ingest(tiny_cohort, store, validation_sites=["B"])
    assert (first.rows_in, first.valid, first.new_versions, first.quarantined) == (8, 8, 8, 0)
    assert first.cohort_version == 0 and sum(first.splits.values()) == 8
    assert first.splits["validation"] == 2
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
    assert current.set_index("case_id").at["T003", "split_source"] == "store"


def test_bad_rows_are_stored_in_quarantine_once(bad_manifest, tmp_path):
    manifest, bad = bad_manifest
    report = _ingest(manifest, tmp_path / "store")
    store = FeatureStore(str(tmp_path / "store"))
    quarantine = store.read("quarantine")
    cohort = store.read("cohort")

    for row, reason, column in bad:
        hits = quarantine[(quarantine["case_id"].fillna("") == row["case_id"])]
        assert not hits.empty, f"{row['case_id']} was not quarantined"
        hit = hits[hits["column"] == column]
        assert hit["reason"].str.contains(reason).any(), (row["case_id"], hits["reason"].tolist())
    assert set(cohort["case_id"]) == {f"T{i:03d}" for i in range(8)} - {"T002"}
    assert report.valid == 7
    assert report.quarantined == len(bad) + 3  # + repeated T001 row + both T002 rows
    assert report.quarantine_new == len(quarantine)
    assert "duplicate case_id T002" in report.problems["T002"][0]

    # Re-ingesting the same bad manifest adds no new quarantine rows.
    again = _ingest(manifest, tmp_path / "store")
    assert again.quarantine_new == 0
    assert len(store.read("quarantine")) == len(quarantine)


def test_busbra_subset_ingests_cleanly(tmp_path, shared_data):
    from tasks.data.sources.busbra import busbra_manifest

    manifest = tmp_path / "busbra.csv"
    frame = busbra_manifest(shared_data / "busbra", manifest, limit_patients=12, seed=1)
    report = _ingest(manifest, tmp_path / "store", data_roots=[str(shared_data / "busbra")])
    assert report.quarantined == 0 and report.valid == len(frame)
    cohort = FeatureStore(str(tmp_path / "store")).read("cohort")
    assert cohort["cdus_image"].isna().all()
    assert cohort.groupby("patient_key")["split"].nunique().max() == 1


def test_with_perturbation_only_when_no_case_has_a_real_repeat():
    plain = pd.DataFrame({"case_id": ["A"], "bmus_mask_reader2": [None]})
    with_repeat = pd.DataFrame({"case_id": ["A", "B"], "bmus_mask_repeat": [None, "/d/r.png"]})
    on, off = Settings(perturb_repeats=True), Settings(perturb_repeats=False)
    assert with_perturbation(plain, on).perturb_repeats is True
    assert with_perturbation(pd.DataFrame({"case_id": ["A"]}), on).perturb_repeats is True
    assert with_perturbation(with_repeat, on).perturb_repeats is False
    assert with_perturbation(plain, off).perturb_repeats is False
    # A copy: the caller's settings are left alone, other fields kept.
    out = with_perturbation(with_repeat, Settings(perturb_repeats=True, seed=9))
    assert out.seed == 9 and on.perturb_repeats is True


def test_report_summary_names_counts_and_splits():
    report = IngestReport(
        manifest="m.csv",
        run_id="r",
        rows_in=10,
        valid=8,
        new_versions=3,
        quarantined=2,
        quarantine_new=2,
        splits={"training": 6, "testing": 2},
        cohort_version=4,
        problems={},
    )
    assert report.summary() == (
        "ingest: 10 rows, 8 valid (3 new case versions), 2 quarantined; "
        "splits: testing 2, training 6"
    )
    assert "m.csv" not in report.summary()  # paths stay out of logs
    empty = IngestReport("m.csv", "r", 0, 0, 0, 0, 0, {}, None, {})
    assert empty.summary().endswith("splits: none")
    odd = IngestReport("m.csv", "r", 1, 1, 1, 0, 0, {}, None, {}, ["pixel_spacing", "PatientName"])
    assert odd.summary().endswith("splits: none; 2 unknown manifest column(s) not read")


def test_unknown_columns_reach_the_ingest_report(tiny_cohort, tmp_path):
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    frame["bmus_frme"] = ""
    frame.to_csv(tiny_cohort, index=False)
    store = FeatureStore(str(tmp_path / "store"))
    report = ingest(str(tiny_cohort), store, Settings(store=str(tmp_path / "store")), "r1")
    assert report.unknown_columns == ["bmus_frme"]
    assert "1 unknown manifest column(s) not read" in report.summary()


def test_ingest_task_is_the_prefect_task_of_ingest():
    assert ingest_task.fn is ingest
    assert ingest_task.name == "ingest"
    assert ingest_task.retries == 1


def test_a_manifest_cannot_move_a_stored_patient_to_another_split(tiny_cohort, tmp_path):
    store = tmp_path / "store"
    _ingest(tiny_cohort, store)
    before = FeatureStore(str(store)).read("cohort").set_index("case_id")
    old = before.at["T000", "split"]
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    frame.loc[0, "split"] = "testing" if old == "training" else "training"
    frame.to_csv(tiny_cohort, index=False)

    report = _ingest(tiny_cohort, store)
    assert report.quarantined == 1 and report.new_versions == 0
    quarantine = FeatureStore(str(store)).read("quarantine").set_index("case_id")
    assert "conflicts with the patient's stored split" in quarantine.at["T000", "reason"]
    cohort = FeatureStore(str(store)).read("cohort")
    assert cohort.groupby("patient_key")["split"].nunique().max() == 1


def test_reingest_decodes_only_changed_files(tiny_cohort, tmp_path, decoded):
    store = tmp_path / "store"
    _ingest(tiny_cohort, store)
    decoded.clear()
    assert _ingest(tiny_cohort, store).new_versions == 0
    assert decoded == []  # every file's bytes (sha256) are those of the stored version
    # A changed mask is read again and judged as at a first ingest: here, emptied.
    mask = tiny_cohort.parent / "images" / "T005_mask.png"
    Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)
    report = _ingest(tiny_cohort, store)
    assert sorted(decoded) == ["T005_bmus.png", "T005_cdus.png", "T005_mask.png"]  # its files
    assert (report.new_versions, report.quarantined) == (0, 1)
    assert "T005" in report.problems and "empty" in report.problems["T005"][0]
