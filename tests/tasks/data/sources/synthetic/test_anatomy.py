"""Tests for tasks.data.sources.synthetic.anatomy: tissue layers, lesion outline and margin."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.data.sources.synthetic.anatomy import (
    Lesion,
    design_layers,
    design_lesion,
    lesion_margin_px,
    lesion_to_image,
    outline_radius,
)
from tasks.data.sources.synthetic.latent import SITES
from tests.tasks.data.sources.synthetic.helpers import assert_label_auc_in_range


def _ellipse(tilt: float = 0.0) -> Lesion:
    return Lesion((100.0, 120.0), (40.0, 20.0), tilt, np.zeros((0, 3)), np.zeros((0, 3)))


def test_label_depends_on_morphology_but_not_perfectly(measures):
    # morph: mask shape from the B-mode delineation.
    assert_label_auc_in_range(measures, "irregularity")


@pytest.mark.parametrize("site", sorted(SITES))
def test_layers_are_ordered_top_to_bottom_inside_the_image(site):
    profile = SITES[site]
    for seed in range(5):
        layers = design_layers(profile, np.random.default_rng(seed))
        for boundary in (layers.skin, layers.fat, layers.gland, layers.muscle):
            assert boundary.shape == (profile.shape[1],)
        assert (0 < layers.skin).all() and (layers.skin < layers.fat).all()
        assert (layers.fat < layers.gland).all() and (layers.gland < layers.muscle).all()
        assert (layers.muscle < profile.shape[0]).all()


def test_plain_ellipse_margin_is_the_signed_distance_along_its_axes():
    lesion = _ellipse()
    margin = lesion_margin_px(lesion, (200, 240))
    assert margin[100, 140] == pytest.approx(-20.0)  # halfway along the lateral semi-axis
    assert margin[110, 120] == pytest.approx(-10.0)  # halfway along the axial semi-axis
    assert margin[100, 160] == pytest.approx(0.0, abs=1e-9)  # on the lateral edge
    assert margin[100, 170] == pytest.approx(10.0, abs=1e-9)
    assert margin[70, 120] == pytest.approx(10.0, abs=1e-9)  # above the axial edge
    assert margin[0, 0] > 0 and (margin < 0).sum() == pytest.approx(np.pi * 40 * 20, rel=0.03)


def test_margin_far_from_the_outline_is_a_large_constant():
    lesion = Lesion((100.0, 100.0), (10.0, 10.0), 0.0, np.zeros((0, 3)), np.zeros((0, 3)))
    margin = lesion_margin_px(lesion, (400, 400), pad_px=8)
    assert margin[399, 399] == margin[0, 399] >= 1e5
    assert margin[100, 115] == pytest.approx(5.0)  # inside the window: the true distance


def test_outline_radius_adds_harmonics_and_spicules_and_never_collapses():
    theta = np.linspace(-np.pi, np.pi, 721)
    assert np.allclose(outline_radius(_ellipse(), theta), 1.0)
    spiky = Lesion((0.0, 0.0), (1.0, 1.0), 0.0, np.zeros((0, 3)), np.array([[0.0, 0.4, 0.05]]))
    radius = outline_radius(spiky, theta)
    assert radius.max() == pytest.approx(1.4) and radius[0] == pytest.approx(1.0)
    dented = Lesion((0.0, 0.0), (1.0, 1.0), 0.0, np.array([[1, 2.0, 0.0]]), np.zeros((0, 3)))
    assert outline_radius(dented, theta).min() == pytest.approx(0.3)


def test_lesion_to_image_maps_the_polar_axes_with_the_tilt():
    rows, cols = lesion_to_image(_ellipse(), np.array([0.0, 1.0, 1.0]), np.array([0, 0, np.pi / 2]))
    np.testing.assert_allclose(rows, [100.0, 100.0, 120.0])  # axial semi-axis points down
    np.testing.assert_allclose(cols, [120.0, 160.0, 120.0])  # lateral semi-axis to the right
    rows, cols = lesion_to_image(_ellipse(np.pi / 2), np.array([1.0]), np.array([0.0]))
    np.testing.assert_allclose([rows[0], cols[0]], [140.0, 120.0], atol=1e-9)


@pytest.mark.parametrize("site", sorted(SITES))
def test_lesions_sit_in_the_gland_below_the_skin_and_grow_with_morph(site):
    profile = SITES[site]
    areas = {}
    for morph in (-2.0, 2.0):
        areas[morph] = []
        for seed in range(10):
            rng = np.random.default_rng(seed)
            layers = design_layers(profile, rng)
            lesion, margin = design_lesion(morph, profile, layers, rng)
            inside = lesion_margin_px(lesion, profile.shape) < 0
            rows = np.flatnonzero(inside.any(axis=1))
            assert rows[0] > layers.skin.max() and rows[-1] < profile.shape[0] - 1
            assert margin.blur_px >= 0.6 and margin.halo >= 0.0
            areas[morph].append(inside.sum())
    assert np.mean(areas[2.0]) > np.mean(areas[-2.0])
