"""Tests for tasks.data.sources.synthetic.bmode: echogenicity, speckle, log compression."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.data.sources.synthetic.anatomy import Margin, design_layers
from tasks.data.sources.synthetic.bmode import (
    Texture,
    calcifications,
    depth_gain,
    design_texture,
    log_compress,
    posterior_gain,
    speckle_envelope,
    tissue_echogenicity,
)
from tasks.data.sources.synthetic.latent import SITES
from tests.tasks.data.sources.synthetic.helpers import assert_label_auc_in_range

SITE = SITES["A"]


def test_every_lesion_is_hypoechoic_against_its_surroundings(measures):
    gap = measures["ring_mean"] - measures["inside_mean"]
    assert (gap > 10).all(), gap.min()


def test_label_depends_on_texture_but_not_perfectly(measures):
    # texture: internal echo spread (calcifications, heterogeneity).
    assert_label_auc_in_range(measures, "heterogeneity")


def test_texture_factor_drives_heterogeneity_calcifications_and_shadowing():
    rng = np.random.default_rng(0)
    smooth = [design_texture(-2.0, rng) for _ in range(200)]
    rough = [design_texture(2.0, rng) for _ in range(200)]
    for name in ("heterogeneity", "n_calcifications"):
        high, low = ([getattr(t, name) for t in group] for group in (rough, smooth))
        assert np.mean(high) > np.mean(low)
    assert np.mean([t.posterior for t in smooth]) > 0 > np.mean([t.posterior for t in rough])
    assert all(-2.0 <= t.posterior <= 1.0 for t in smooth + rough)


def test_speckle_has_the_echo_as_its_rms():
    echo = np.full(SITE.shape, 2.0)
    envelope = speckle_envelope(echo, SITE, np.random.default_rng(0))
    assert envelope.shape == SITE.shape
    assert np.sqrt(np.mean(envelope**2)) == pytest.approx(2.0, rel=0.05)
    # Rayleigh: mean / rms = sqrt(pi) / 2.
    assert envelope.mean() / np.sqrt(np.mean(envelope**2)) == pytest.approx(0.886, abs=0.02)


def test_point_reflectors_show_as_bright_specks():
    echo = np.full(SITE.shape, 0.1)
    reflectors = (np.array([100]), np.array([200]), np.array([5.0]))
    envelope = speckle_envelope(echo, SITE, np.random.default_rng(0), reflectors)
    assert envelope[100, 200] > 10 * np.median(envelope)


def test_log_compression_maps_the_dynamic_range_onto_8_bits():
    white = 10.0 ** (SITE.white_db / 20.0)
    floor = 10.0 ** ((SITE.white_db - SITE.dynamic_range_db) / 20.0)
    grey = log_compress(np.full((20, 20), white), SITE)
    assert grey.dtype == np.uint8 and (grey == 255).all()
    assert (log_compress(np.full((20, 20), floor), SITE) == 0).all()
    assert (log_compress(np.full((20, 20), 100 * white), SITE) == 255).all()  # clipped


def test_calcifications_lie_well_inside_the_lesion():
    margin = np.full((50, 50), 10.0)
    margin[10:30, 10:30] = -5.0
    rows, cols, amplitude = calcifications(margin, 6, np.random.default_rng(0))
    assert len(rows) == 6 and (margin[rows, cols] < -3).all()
    assert ((amplitude >= 2.0) & (amplitude <= 5.0)).all()
    assert all(len(a) == 0 for a in calcifications(margin, 0, np.random.default_rng(0)))


def test_tissue_is_brighter_in_the_gland_than_in_the_fat():
    layers = design_layers(SITE, np.random.default_rng(3))
    echo = tissue_echogenicity(SITE, layers, np.random.default_rng(4))
    assert echo.shape == SITE.shape and (echo > 0).all()
    col = SITE.shape[1] // 2
    fat = echo[int(layers.skin[col]) + 5 : int(layers.fat[col]) - 5, col]
    gland = echo[int(layers.fat[col]) + 5 : int(layers.gland[col]) - 5, col]
    assert np.median(gland) > 2 * np.median(fat)


def test_posterior_gain_shadows_below_the_lesion_only():
    mask = np.zeros(SITE.shape, dtype=bool)
    mask[150:200, 200:300] = True
    no_edges = Margin(blur_px=1.0, halo=0.0, halo_px=10.0, edge_shadow=0.0)
    shadow = Texture(level=0.08, heterogeneity=0.5, n_calcifications=0, posterior=-1.0)
    gain = posterior_gain(mask, shadow, no_edges, SITE)
    assert gain[100, 250] == pytest.approx(1.0) and gain[300, 50] == pytest.approx(1.0)
    assert gain[300, 250] == pytest.approx(np.exp(-1.0), rel=0.01)


def test_depth_gain_falls_with_depth():
    gain = depth_gain(SITES["B"], np.random.default_rng(0))
    assert gain.shape == (SITES["B"].shape[0], 1)
    assert gain[-1, 0] < gain[0, 0]
