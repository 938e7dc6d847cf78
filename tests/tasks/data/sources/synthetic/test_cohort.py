"""Tests for tasks.data.sources.synthetic.cohort: the cohort must look and behave like an export.

``golden_cohort.json`` freezes the content of a tiny cohort: any change to what the
generator writes, intended or not, fails :func:`test_tiny_cohort_matches_the_golden_file`.
After an intended change (or a numpy / scipy / Pillow upgrade that moves the output),
review it, then regenerate the file from the repository root with

    .venv/bin/python -m tests.tasks.data.sources.synthetic.test_cohort

and say so in the commit message.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data.schema import MANIFEST_COLUMNS
from tasks.data.sources.synthetic.case import CaseImages
from tasks.data.sources.synthetic.cohort import generate_cohort, write_case
from tasks.data.sources.synthetic.latent import FACTORS, LATENT_COLUMNS, SITES
from tests.tasks.data.sources.synthetic.helpers import (
    COHORT_SIZE,
    EXPECTED_COLUMNS,
    MASK_COLUMNS,
    WrittenCohort,
    digest,
    pixel_digest,
    read_png,
)

GOLDEN = Path(__file__).with_name("golden_cohort.json")
# Both sites (one validation case of six), both repeat cases and plain ones, a preview.
GOLDEN_COHORT = {"n_patients": 6, "seed": 7, "repeat_share": 0.5, "preview": True}


def _golden_digest(out_dir: Path) -> dict[str, str]:
    generate_cohort(out_dir, **GOLDEN_COHORT)
    return pixel_digest(out_dir)


# --- determinism -------------------------------------------------------------------------
def test_generation_is_deterministic_per_seed(tmp_path):
    first = generate_cohort(tmp_path / "first", n_patients=12, seed=3)
    again = generate_cohort(tmp_path / "again", n_patients=12, seed=3)
    other = generate_cohort(tmp_path / "other", n_patients=12, seed=4)
    assert digest(first.parent) == digest(again.parent)
    first_files, other_files = digest(first.parent), digest(other.parent)
    assert first_files["manifest.csv"] != other_files["manifest.csv"]
    shared = set(first_files) & set(other_files)
    images = [name for name in shared if name.startswith("images/")]
    assert images and all(first_files[name] != other_files[name] for name in images)


def test_tiny_cohort_matches_the_golden_file(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    assert golden["cohort"] == GOLDEN_COHORT, "golden file written for other arguments"
    files = _golden_digest(tmp_path)
    assert sorted(files) == sorted(golden["files"]), "the cohort writes other files"
    changed = sorted(name for name, sha in golden["files"].items() if files[name] != sha)
    assert not changed, f"generator output changed (see this module's docstring): {changed}"


# --- the written cohort ------------------------------------------------------------------
def test_manifest_has_the_schema_and_relative_paths_that_resolve(cohort: WrittenCohort):
    manifest, out_dir = cohort.manifest, cohort.out_dir
    assert list(manifest.columns) == EXPECTED_COLUMNS == list(MANIFEST_COLUMNS)
    assert len(manifest) == COHORT_SIZE and manifest["case_id"].is_unique
    assert set(manifest["label"]) == {0, 1}
    for column in ["bmus_image", "bmus_mask", "cdus_image", "cdus_mask"]:
        assert (manifest[column] != "").all()
    for column in ["bmus_image", "cdus_image", *MASK_COLUMNS]:
        for cell in manifest[column][manifest[column] != ""]:
            assert not Path(cell).is_absolute() and ".." not in Path(cell).parts
            assert (out_dir / cell).is_file()


def test_progress_is_reported_for_every_case(cohort: WrittenCohort):
    assert cohort.calls == [(i, COHORT_SIZE) for i in range(1, COHORT_SIZE + 1)]


def test_latent_table_is_written_beside_not_inside_the_manifest(cohort: WrittenCohort):
    latent = pd.read_csv(cohort.out_dir / "latent.csv")
    assert list(latent.columns) == list(LATENT_COLUMNS)
    assert latent["case_id"].tolist() == cohort.manifest["case_id"].tolist()
    assert latent["label"].tolist() == cohort.manifest["label"].tolist()
    assert not set(FACTORS) & set(cohort.manifest.columns)
    # The factors are partly correlated, as documented.
    corr = latent[list(FACTORS)].corr().to_numpy()[np.triu_indices(3, 1)]
    assert np.all((corr > 0.05) & (corr < 0.6))


def test_images_and_masks_have_the_expected_types_and_grids(cohort: WrittenCohort):
    out_dir = cohort.out_dir
    for case in cohort.manifest.itertuples(index=False):
        bmus, cdus = read_png(out_dir / case.bmus_image), read_png(out_dir / case.cdus_image)
        assert bmus.dtype == np.uint8 and bmus.shape == SITES[case.site].shape
        assert cdus.dtype == np.uint8 and cdus.shape == (*bmus.shape, 3)
        assert bmus.std() > 20  # speckle and anatomy, not a flat field
        for column in MASK_COLUMNS:
            cell = getattr(case, column)
            if cell:
                mask = read_png(out_dir / cell)
                assert mask.dtype == np.uint8 and mask.shape == bmus.shape
                assert set(np.unique(mask)) == {0, 255}
        # The CDUS mask is the B-mode delineation in the same (shared) geometry.
        assert np.array_equal(
            read_png(out_dir / case.cdus_mask), read_png(out_dir / case.bmus_mask)
        )


def test_write_case_leaves_the_cells_of_absent_repeats_empty(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    grey = np.full((8, 10), 90, np.uint8)
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7] = 255
    images = CaseImages(grey, np.repeat(grey[..., None], 3, axis=2), mask, None, None)
    cells = write_case(tmp_path, "X-1", images)
    assert cells == {
        "bmus_image": "images/X-1_bmus.png",
        "bmus_mask": "masks/X-1_bmus_mask.png",
        "cdus_image": "images/X-1_cdus.png",
        "cdus_mask": "masks/X-1_cdus_mask.png",
        "bmus_mask_reader2": "",
        "bmus_mask_repeat": "",
    }
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == sorted(
        cell for cell in cells.values() if cell
    )
    assert np.array_equal(read_png(tmp_path / cells["cdus_mask"]), mask)
    assert np.array_equal(read_png(tmp_path / cells["bmus_image"]), grey)


def test_a_second_run_overwrites_the_first(tmp_path):
    generate_cohort(tmp_path, n_patients=3, seed=1)
    generate_cohort(tmp_path, n_patients=3, seed=2)
    fresh = generate_cohort(tmp_path / "fresh", n_patients=3, seed=2)
    assert digest(tmp_path / "images") == digest(fresh.parent / "images")
    assert (tmp_path / "manifest.csv").read_bytes() == fresh.read_bytes()


def _write_golden() -> None:
    with tempfile.TemporaryDirectory() as folder:
        files = _golden_digest(Path(folder))
    GOLDEN.write_text(json.dumps({"cohort": GOLDEN_COHORT, "files": files}, indent=1) + "\n")
    print(f"wrote {GOLDEN} ({len(files)} files)", file=sys.stderr)


if __name__ == "__main__":
    _write_golden()
