"""Tests for tasks.data.sources.synthetic.case: one case from its plan row."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tasks.data.sources.synthetic.case import PlannedCase, synthesize_case
from tasks.data.sources.synthetic.latent import SITES
from tasks.data.sources.synthetic.plan import plan_cohort


class _Row(NamedTuple):
    """The fields a case is drawn from, and no more."""

    case_index: int
    site: str
    morph: float
    texture: float
    vasc: float


def _rows(n: int = 8, seed: int = 4) -> list[PlannedCase]:
    return list(plan_cohort(n, seed=seed).itertuples(index=False))


def test_case_arrays_have_the_site_grid_and_types():
    for case in _rows():
        images = synthesize_case(case, seed=4, with_repeats=True)
        shape = SITES[case.site].shape
        assert images.bmus.shape == shape and images.bmus.dtype == np.uint8
        assert images.cdus.shape == (*shape, 3) and images.cdus.dtype == np.uint8
        for mask in (images.mask, images.mask_reader2, images.mask_repeat):
            assert mask is not None and mask.shape == shape
            assert set(np.unique(mask)) == {0, 255}


def test_repeats_are_drawn_only_on_request_and_change_nothing_else():
    case = _rows()[0]
    plain = synthesize_case(case, seed=4, with_repeats=False)
    both = synthesize_case(case, seed=4, with_repeats=True)
    assert plain.mask_reader2 is None and plain.mask_repeat is None
    for name in ("bmus", "cdus", "mask"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(both, name))


def test_a_case_depends_on_its_seed_and_index_only():
    case = _rows()[3]
    first = synthesize_case(case, seed=4, with_repeats=False)
    again = synthesize_case(case, seed=4, with_repeats=False)
    for name in ("bmus", "cdus", "mask"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    other_seed = synthesize_case(case, seed=5, with_repeats=False)
    same = _Row(case.case_index, case.site, case.morph, case.texture, case.vasc)
    np.testing.assert_array_equal(synthesize_case(same, 4, False).cdus, first.cdus)
    moved = same._replace(case_index=case.case_index + 1)
    other_index = synthesize_case(moved, seed=4, with_repeats=False)
    assert not np.array_equal(first.bmus, other_seed.bmus)
    assert not np.array_equal(first.bmus, other_index.bmus)
