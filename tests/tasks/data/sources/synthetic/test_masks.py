"""Tests for tasks.data.sources.synthetic.masks: reader-2 and repeat delineations."""

from __future__ import annotations

import numpy as np

from tasks.data.sources.synthetic.anatomy import Lesion, lesion_margin_px
from tasks.data.sources.synthetic.latent import SITES
from tasks.data.sources.synthetic.masks import mask_png, perturb_lesion, repeat_masks
from tests.tasks.data.sources.synthetic.helpers import (
    COHORT_SIZE,
    WrittenCohort,
    dice,
    read_png,
)


def _lesion(n_spicules: int = 3) -> Lesion:
    spicules = np.column_stack(
        [np.linspace(-2, 2, n_spicules), np.full(n_spicules, 0.3), np.full(n_spicules, 0.04)]
    ).reshape(-1, 3)
    return Lesion((200.0, 250.0), (60.0, 45.0), 0.1, np.array([[2, 0.05, 0.0]]), spicules)


def test_repeat_masks_cover_the_share_and_differ_a_little(cohort: WrittenCohort):
    manifest, out_dir = cohort.manifest, cohort.out_dir
    with_reader2 = manifest["bmus_mask_reader2"] != ""
    assert (with_reader2 == (manifest["bmus_mask_repeat"] != "")).all()
    assert abs(with_reader2.mean() - 0.3) <= 1 / COHORT_SIZE
    reader2_dice, repeat_dice = [], []
    for case in manifest[with_reader2].itertuples(index=False):
        reader1 = read_png(out_dir / case.bmus_mask) > 0
        reader2_dice.append(dice(reader1, read_png(out_dir / case.bmus_mask_reader2) > 0))
        repeat_dice.append(dice(reader1, read_png(out_dir / case.bmus_mask_repeat) > 0))
    assert 0.85 < min(reader2_dice) and max(reader2_dice) < 1.0
    assert 0.93 < min(repeat_dice) and max(repeat_dice) < 1.0
    # A second reader disagrees more than the first reader with herself.
    assert np.mean(reader2_dice) < np.mean(repeat_dice)


def test_an_unperturbed_reader_traces_the_same_outline():
    lesion = _lesion()
    same = perturb_lesion(lesion, np.random.default_rng(0), 0.0, 0.0, (1.0, 1.0))
    assert same.center == lesion.center and same.semi_axes == lesion.semi_axes
    np.testing.assert_array_equal(same.spicules, lesion.spicules)
    # Six extra harmonics of zero amplitude leave the outline as it was.
    assert same.harmonics.shape == (len(lesion.harmonics) + 6, 3)
    assert not same.harmonics[len(lesion.harmonics) :, 1].any()
    shape = SITES["A"].shape
    np.testing.assert_allclose(lesion_margin_px(same, shape), lesion_margin_px(lesion, shape))


def test_a_perturbed_reader_traces_spicules_short_and_leaves_the_original_alone():
    lesion = _lesion()
    before = lesion.spicules.copy()
    other = perturb_lesion(lesion, np.random.default_rng(0), 2.0, 1.0, (0.4, 0.6))
    np.testing.assert_array_equal(lesion.spicules, before)
    ratio = other.spicules[:, 1] / lesion.spicules[:, 1]
    assert ((ratio >= 0.4) & (ratio <= 0.6)).all()
    assert other.center != lesion.center


def test_mask_png_is_0_or_255():
    out = mask_png(np.array([[True, False], [False, True]]))
    assert out.dtype == np.uint8 and out.tolist() == [[255, 0], [0, 255]]


def test_repeat_masks_are_masks_on_the_site_grid_and_seeded():
    site = SITES["B"]
    reader2, repeat = repeat_masks(_lesion(), site, np.random.default_rng(5))
    again = repeat_masks(_lesion(), site, np.random.default_rng(5))
    for mask, same in zip((reader2, repeat), again, strict=True):
        assert mask.shape == site.shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        np.testing.assert_array_equal(mask, same)
    truth = lesion_margin_px(_lesion(), site.shape) < 0
    assert 0.85 < dice(truth, reader2 > 0) < 1.0
    assert 0.9 < dice(truth, repeat > 0) < 1.0
