"""Tests for tasks.data.sources.busbra: a cohort manifest over the real BUS-BRA dataset.

Most tests read the shared BUS-BRA copy (``$SLN_SHARED_DATA/busbra``, by default
``/work/shared/data/busbra``) and are skipped, with the path in the reason, without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.data.schema import MANIFEST_COLUMNS
from tasks.data.sources.busbra import SCANNERS, busbra_manifest, site_of

BUSBRA_IMAGES = 1875
BUSBRA_PATIENTS = 1064


@pytest.fixture(scope="module")
def busbra(shared_data: Path) -> Path:
    folder = shared_data / "busbra"
    if not (folder / "bus_data.csv").is_file():
        pytest.skip(f"BUS-BRA not found at {folder} (set SLN_SHARED_DATA to its parent)")
    return folder


@pytest.fixture(scope="module")
def bus_data(busbra: Path) -> pd.DataFrame:
    """The dataset's own table, read independently of the module under test."""
    return pd.read_csv(busbra / "bus_data.csv", dtype=str).set_index("ID")


@pytest.fixture(scope="module")
def full(busbra: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The manifest over every image, as returned (the written CSV is checked separately)."""
    return busbra_manifest(busbra, tmp_path_factory.mktemp("busbra") / "manifest.csv")


def test_site_of_maps_the_four_scanners_and_sanitises_others():
    assert site_of("GE Logiq 7 @10-14MHz") == "LOGIQ7"
    assert site_of("GE Logiq 5 @10-12MHz") == "LOGIQ5"
    assert site_of("Toshiba Aplio 300 @12-14 MHz") == "APLIO300"
    assert site_of("U-Systems @10-14MHz") == "USYSTEMS"
    assert site_of("Philips iU22 @5-12 MHz") == "PHILIPSIU22512MH"  # 16 characters at most
    assert site_of("--") == "UNKNOWN"


def test_a_table_without_the_needed_columns_is_refused(tmp_path):
    pd.DataFrame({"ID": ["bus_0001-l"], "Case": ["1"], "Device": ["U-Systems"]}).to_csv(
        tmp_path / "bus_data.csv", index=False
    )
    with pytest.raises(ValueError, match=r"missing columns \['Pathology'\]"):
        busbra_manifest(tmp_path, tmp_path / "out" / "manifest.csv")
    assert not (tmp_path / "out").exists()


def test_manifest_has_one_row_per_image_in_the_manifest_schema(full, bus_data):
    assert list(full.columns) == list(MANIFEST_COLUMNS)
    assert len(full) == BUSBRA_IMAGES and full["case_id"].is_unique
    assert sorted(full["case_id"]) == sorted(bus_data.index) == full["case_id"].tolist()
    assert full["patient_id"].nunique() == BUSBRA_PATIENTS
    # B-mode only: no Doppler, no repeat delineations, no dates or spacing in BUS-BRA.
    for column in ("exam_date", "cdus_image", "cdus_mask", "bmus_mask_reader2"):
        assert (full[column] == "").all(), column
    assert (full["bmus_mask_repeat"] == "").all() and (full["pixel_spacing_mm"] == "").all()


def test_the_written_csv_is_the_returned_manifest(busbra, tmp_path):
    out = tmp_path / "nested" / "folder" / "busbra.csv"  # parents are created
    frame = busbra_manifest(busbra, out)
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    expected = frame.astype(str).reset_index(drop=True)
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)


def test_patients_are_busbra_cases_and_none_spans_splits(full, bus_data):
    cases = bus_data.loc[full["case_id"], "Case"]
    assert (full["patient_id"] == "BUSBRA-" + cases.to_numpy()).all()
    assert full.groupby("patient_id")["split"].nunique().max() == 1


def test_the_held_out_scanner_is_validation_and_the_rest_is_left_to_ingest(full):
    assert set(full["site"]) == set(SCANNERS.values())
    held_out = full["site"] == "APLIO300"
    assert (full.loc[held_out, "split"] == "validation").all()
    # Everything else is undecided: ingest derives training/testing, grouped by patient.
    assert set(full["split"]) == {"validation", ""}
    validation_patients = set(full.loc[full["split"] == "validation", "patient_id"])
    assert validation_patients == set(full.loc[held_out, "patient_id"])


def test_another_scanner_can_be_held_out(busbra, tmp_path):
    frame = busbra_manifest(busbra, tmp_path / "m.csv", validation_site="USYSTEMS")
    assert set(frame.loc[frame["split"] == "validation", "site"]) == {"USYSTEMS"}
    assert (frame.loc[frame["site"] == "USYSTEMS", "split"] == "validation").all()
    assert frame.groupby("patient_id")["split"].nunique().max() == 1


def test_labels_come_from_pathology(full, bus_data):
    pathology = bus_data.loc[full["case_id"], "Pathology"].str.strip().str.lower()
    assert set(pathology) == {"benign", "malignant"}
    assert (full["label"].to_numpy() == (pathology == "malignant").to_numpy()).all()
    assert full["label"].sum() == 607 and set(full["label"]) == {0, 1}


def test_paths_are_absolute_and_point_at_the_image_and_its_mask(full, busbra):
    root = busbra.resolve()
    for case_id, image, mask in (
        full[["case_id", "bmus_image", "bmus_mask"]].head(50).itertuples(index=False)
    ):
        assert Path(image) == root / "Images" / f"{case_id}.png"
        assert Path(mask) == root / "Masks" / f"mask_{case_id.removeprefix('bus_')}.png"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in full["bmus_image"])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in full["bmus_mask"])


@pytest.mark.parametrize("limit", [1, 12, 100])
def test_limit_patients_keeps_that_many_patients_with_all_their_images(
    busbra, bus_data, tmp_path, limit
):
    frame = busbra_manifest(busbra, tmp_path / "m.csv", limit_patients=limit, seed=1)
    assert frame["patient_id"].nunique() == limit
    kept = {p.removeprefix("BUSBRA-") for p in frame["patient_id"]}
    assert sorted(frame["case_id"]) == sorted(bus_data.index[bus_data["Case"].isin(kept)])
    assert frame.groupby("patient_id")["split"].nunique().max() == 1


def test_limit_patients_is_a_seeded_subset(busbra, tmp_path):
    def patients(seed: int) -> set[str]:
        frame = busbra_manifest(busbra, tmp_path / f"{seed}.csv", limit_patients=30, seed=seed)
        return set(frame["patient_id"])

    assert patients(3) == patients(3)
    assert patients(3) != patients(4)


@pytest.mark.parametrize("limit", [None, 0, BUSBRA_PATIENTS + 10])
def test_no_limit_or_a_large_one_keeps_every_patient(busbra, tmp_path, limit):
    frame = busbra_manifest(busbra, tmp_path / "m.csv", limit_patients=limit)
    assert frame["patient_id"].nunique() == BUSBRA_PATIENTS and len(frame) == BUSBRA_IMAGES


def test_the_cli_passes_limit_patients_through(busbra, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "busbra.csv"
    args = ["busbra", "--out", str(out), "--data", str(busbra), "--limit-patients", "20"]
    result = CliRunner().invoke(app, [*args, "--seed", "2"])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert written["patient_id"].nunique() == 20
    direct = busbra_manifest(busbra, tmp_path / "direct.csv", limit_patients=20, seed=2)
    assert sorted(written["case_id"]) == sorted(direct["case_id"])


def test_the_manifest_is_deterministic(busbra, tmp_path):
    busbra_manifest(busbra, tmp_path / "a.csv", limit_patients=40, seed=5)
    busbra_manifest(busbra, tmp_path / "b.csv", limit_patients=40, seed=5)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert np.array_equal(
        pd.read_csv(tmp_path / "a.csv")["case_id"].to_numpy(),
        np.sort(pd.read_csv(tmp_path / "a.csv")["case_id"].to_numpy()),
    )
