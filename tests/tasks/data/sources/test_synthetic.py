"""Tests for tasks.data.sources.synthetic: the cohort must look and behave like an export."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from tasks.data.schema import MANIFEST_COLUMNS
from tasks.data.sources import synthetic

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


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One 120-patient cohort with preview, shared by the tests that only read it."""
    out_dir = tmp_path_factory.mktemp("cohort")
    calls: list[tuple[int, int]] = []
    manifest_path = synthetic.generate_cohort(
        out_dir,
        n_patients=COHORT_SIZE,
        seed=COHORT_SEED,
        preview=True,
        progress=lambda done, total: calls.append((done, total)),
    )
    manifest = pd.read_csv(manifest_path, keep_default_na=False)
    return {"dir": out_dir, "path": manifest_path, "manifest": manifest, "calls": calls}


@pytest.fixture(scope="module")
def measures(cohort):
    """Per-case measurements taken from the written images and masks only."""
    out_dir, rows = cohort["dir"], []
    for case in cohort["manifest"].itertuples(index=False):
        bmus = _read(out_dir / case.bmus_image).astype(float)
        cdus = _read(out_dir / case.cdus_image).astype(int)
        mask = _read(out_dir / case.bmus_mask) > 0
        outside = ndimage.distance_transform_edt(~mask)
        radius = np.sqrt(mask.sum() / np.pi)
        flow = (cdus.max(axis=-1) - cdus.min(axis=-1)) > 60
        near = outside <= 0.3 * radius
        ring = (outside > 0) & (outside <= max(5.0, 0.3 * radius))
        rows.append(
            {
                "label": case.label,
                "inside_mean": bmus[mask].mean(),
                "ring_mean": bmus[ring].mean(),
                "irregularity": _irregularity(mask),
                "heterogeneity": bmus[mask].std(),
                "flow_near": flow[near].mean(),
                "flow_pixels_near": flow[near].sum(),
                "area_near": near.sum(),
                "flow_pixels_far": flow[outside > 1.5 * radius + 30].sum(),
                "area_far": (outside > 1.5 * radius + 30).sum(),
            }
        )
    return pd.DataFrame(rows)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _irregularity(mask: np.ndarray) -> float:
    """Perimeter^2 / (4 pi area), perimeter from pixel-edge counts: 4/pi for a disc."""
    edges = np.abs(np.diff(mask.astype(int), axis=0)).sum()
    edges += np.abs(np.diff(mask.astype(int), axis=1)).sum()
    return edges**2 / (4 * np.pi * mask.sum())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _digest(folder: Path) -> dict[str, str]:
    """Content hash of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- the plan ----------------------------------------------------------------------------
def test_plan_for_450_patients_reproduces_the_paper_split():
    plan = synthetic.plan_cohort(450, seed=0)
    counts = plan.groupby(["site", "split"]).size().to_dict()
    assert counts == {("A", "training"): 276, ("A", "testing"): 69, ("B", "validation"): 105}
    assert 0.3 <= plan["label"].mean() <= 0.45
    # Testing is stratified by label within site A: its positive share matches site A's.
    site_a = plan[plan["site"] == "A"]
    testing = site_a[site_a["split"] == "testing"]
    assert abs(testing["label"].mean() - site_a["label"].mean()) <= 1 / 69


@pytest.mark.parametrize(
    ("n_patients", "n_validation", "n_testing"), [(12, 3, 2), (100, 23, 15), (1000, 233, 153)]
)
def test_plan_keeps_the_proportions_for_other_sizes(n_patients, n_validation, n_testing):
    plan = synthetic.plan_cohort(n_patients, seed=1)
    split = plan["split"].value_counts().to_dict()
    assert split.get("validation", 0) == n_validation
    assert split.get("testing", 0) == n_testing
    assert split.get("training", 0) == n_patients - n_validation - n_testing
    assert (plan.loc[plan["split"] == "validation", "site"] == "B").all()
    assert (plan.loc[plan["split"] != "validation", "site"] == "A").all()


def test_plan_identifiers_dates_and_spacing_look_like_an_export():
    plan = synthetic.plan_cohort(40, seed=5)
    assert plan["case_id"].tolist() == [f"SYN-{i:04d}" for i in range(1, 41)]
    assert plan["patient_id"].str.fullmatch(r"P\d{4}").all()
    assert plan["patient_id"].is_unique
    dates = pd.to_datetime(plan["exam_date"], format="%Y-%m-%d")
    assert dates.is_monotonic_increasing  # numbered in exam order
    assert dates.min().date() >= date(2021, 10, 1)
    assert dates.max().date() <= date(2025, 3, 31)
    assert dates.dt.year.nunique() >= 3
    for site, profile in synthetic.SITES.items():
        spacing = plan.loc[plan["site"] == site, "pixel_spacing_mm"]
        assert (spacing == profile.pixel_spacing_mm).all()


def test_plan_depends_on_the_seed_only():
    first, again = synthetic.plan_cohort(60, seed=9), synthetic.plan_cohort(60, seed=9)
    pd.testing.assert_frame_equal(first, again)
    other = synthetic.plan_cohort(60, seed=10)
    assert not np.allclose(first["morph"], other["morph"])
    # Changing the repeat share changes which cases get repeats, nothing else.
    more = synthetic.plan_cohort(60, seed=9, repeat_share=0.6)
    pd.testing.assert_frame_equal(first.drop(columns="has_repeat"), more.drop(columns="has_repeat"))
    assert (more["has_repeat"] | ~first["has_repeat"]).all()  # a superset


@pytest.mark.parametrize(("kwargs"), [{"n_patients": 0}, {"repeat_share": 1.5}])
def test_plan_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        synthetic.plan_cohort(**{"n_patients": 10, **kwargs})


# --- determinism -------------------------------------------------------------------------
def test_generation_is_deterministic_per_seed(tmp_path):
    first = synthetic.generate_cohort(tmp_path / "first", n_patients=12, seed=3)
    again = synthetic.generate_cohort(tmp_path / "again", n_patients=12, seed=3)
    other = synthetic.generate_cohort(tmp_path / "other", n_patients=12, seed=4)
    assert _digest(first.parent) == _digest(again.parent)
    first_files, other_files = _digest(first.parent), _digest(other.parent)
    assert first_files["manifest.csv"] != other_files["manifest.csv"]
    shared = set(first_files) & set(other_files)
    images = [name for name in shared if name.startswith("images/")]
    assert images and all(first_files[name] != other_files[name] for name in images)


# --- the written cohort ------------------------------------------------------------------
def test_manifest_has_the_schema_and_relative_paths_that_resolve(cohort):
    manifest, out_dir = cohort["manifest"], cohort["dir"]
    assert list(manifest.columns) == EXPECTED_COLUMNS == list(MANIFEST_COLUMNS)
    assert len(manifest) == COHORT_SIZE and manifest["case_id"].is_unique
    assert set(manifest["label"]) == {0, 1}
    for column in ["bmus_image", "bmus_mask", "cdus_image", "cdus_mask"]:
        assert (manifest[column] != "").all()
    for column in ["bmus_image", "cdus_image", *MASK_COLUMNS]:
        for cell in manifest[column][manifest[column] != ""]:
            assert not Path(cell).is_absolute() and ".." not in Path(cell).parts
            assert (out_dir / cell).is_file()


def test_progress_is_reported_for_every_case(cohort):
    assert cohort["calls"] == [(i, COHORT_SIZE) for i in range(1, COHORT_SIZE + 1)]


def test_latent_table_is_written_beside_not_inside_the_manifest(cohort):
    latent = pd.read_csv(cohort["dir"] / "latent.csv")
    assert list(latent.columns) == list(synthetic.LATENT_COLUMNS)
    assert latent["case_id"].tolist() == cohort["manifest"]["case_id"].tolist()
    assert latent["label"].tolist() == cohort["manifest"]["label"].tolist()
    assert not set(synthetic.FACTORS) & set(cohort["manifest"].columns)
    # The factors are partly correlated, as documented.
    corr = latent[list(synthetic.FACTORS)].corr().to_numpy()[np.triu_indices(3, 1)]
    assert np.all((corr > 0.05) & (corr < 0.6))


def test_images_and_masks_have_the_expected_types_and_grids(cohort):
    out_dir = cohort["dir"]
    for case in cohort["manifest"].itertuples(index=False):
        bmus, cdus = _read(out_dir / case.bmus_image), _read(out_dir / case.cdus_image)
        assert bmus.dtype == np.uint8 and bmus.shape == synthetic.SITES[case.site].shape
        assert cdus.dtype == np.uint8 and cdus.shape == (*bmus.shape, 3)
        assert bmus.std() > 20  # speckle and anatomy, not a flat field
        for column in MASK_COLUMNS:
            cell = getattr(case, column)
            if cell:
                mask = _read(out_dir / cell)
                assert mask.dtype == np.uint8 and mask.shape == bmus.shape
                assert set(np.unique(mask)) == {0, 255}
        # The CDUS mask is the B-mode delineation in the same (shared) geometry.
        assert np.array_equal(_read(out_dir / case.cdus_mask), _read(out_dir / case.bmus_mask))


def test_repeat_masks_cover_the_share_and_differ_a_little(cohort):
    manifest, out_dir = cohort["manifest"], cohort["dir"]
    with_reader2 = manifest["bmus_mask_reader2"] != ""
    assert (with_reader2 == (manifest["bmus_mask_repeat"] != "")).all()
    assert abs(with_reader2.mean() - 0.3) <= 1 / COHORT_SIZE
    reader2_dice, repeat_dice = [], []
    for case in manifest[with_reader2].itertuples(index=False):
        reader1 = _read(out_dir / case.bmus_mask) > 0
        reader2_dice.append(_dice(reader1, _read(out_dir / case.bmus_mask_reader2) > 0))
        repeat_dice.append(_dice(reader1, _read(out_dir / case.bmus_mask_repeat) > 0))
    assert 0.85 < min(reader2_dice) and max(reader2_dice) < 1.0
    assert 0.93 < min(repeat_dice) and max(repeat_dice) < 1.0
    # A second reader disagrees more than the first reader with herself.
    assert np.mean(reader2_dice) < np.mean(repeat_dice)


def test_sites_have_their_own_scanner_character(cohort):
    manifest = cohort["manifest"]
    assert set(manifest["site"]) == {"A", "B"}
    a, b = synthetic.SITES["A"], synthetic.SITES["B"]
    assert a.shape != b.shape and a.pixel_spacing_mm != b.pixel_spacing_mm
    assert a.speckle_sigma_px != b.speckle_sigma_px


def test_preview_is_a_contact_sheet(cohort):
    sheet = _read(cohort["dir"] / "preview.png")
    assert sheet.ndim == 3 and sheet.shape[1] >= 800 and sheet.shape[0] >= 400
    assert (sheet[..., 1] > 200).sum() > 500  # green mask contours are drawn


# --- the images carry the documented signal ----------------------------------------------
def test_every_lesion_is_hypoechoic_against_its_surroundings(measures):
    gap = measures["ring_mean"] - measures["inside_mean"]
    assert (gap > 10).all(), gap.min()


def test_doppler_flow_is_concentrated_near_the_lesion(measures):
    near = measures["flow_pixels_near"].sum() / measures["area_near"].sum()
    far = measures["flow_pixels_far"].sum() / measures["area_far"].sum()
    assert near > 0.03
    assert far < near / 20


@pytest.mark.parametrize(
    "measure",
    [
        "irregularity",  # morph: mask shape from the B-mode delineation
        "heterogeneity",  # texture: internal echo spread (calcifications, heterogeneity)
        "flow_near",  # vasc: colour-flow pixels within and around the lesion
    ],
)
def test_label_depends_on_each_documented_driver_but_none_is_perfect(measures, measure):
    auc = roc_auc_score(measures["label"], measures[measure])
    assert 0.6 < auc < 0.95, auc
