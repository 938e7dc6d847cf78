"""Tests for tasks.data.sources.synthetic.preview: the contact sheet."""

from __future__ import annotations

from tasks.data.sources.synthetic.preview import write_preview
from tests.tasks.data.sources.synthetic.helpers import WrittenCohort, read_png


def test_preview_is_a_contact_sheet(cohort: WrittenCohort):
    sheet = read_png(cohort.out_dir / "preview.png")
    assert sheet.ndim == 3 and sheet.shape[1] >= 800 and sheet.shape[0] >= 400
    assert (sheet[..., 1] > 200).sum() > 500  # green mask contours are drawn


def test_preview_has_two_cases_a_row(cohort: WrittenCohort, tmp_path):
    # Absolute cells: the sheet goes elsewhere, the PNGs it shows stay where they are.
    manifest = cohort.manifest.head(5).copy()
    for column in ("bmus_image", "bmus_mask", "cdus_image"):
        manifest[column] = [str(cohort.out_dir / cell) for cell in manifest[column]]
    path = write_preview(tmp_path, manifest, n_cases=3)
    assert path == tmp_path / "preview.png"
    sheet = read_png(path)
    assert sheet.shape == (2 * (200 + 16), 4 * 250, 3)  # two rows of 250 x 200 tiles
