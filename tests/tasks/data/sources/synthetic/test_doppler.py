"""Tests for tasks.data.sources.synthetic.doppler: colour box, vessels, flow colours."""

from __future__ import annotations

import numpy as np

from tasks.data.sources.synthetic.anatomy import (
    Layers,
    Lesion,
    design_layers,
    design_lesion,
    lesion_margin_px,
)
from tasks.data.sources.synthetic.doppler import (
    Vessels,
    colour_box,
    design_vessels,
    flow_colours,
    render_cdus,
    render_flow,
)
from tasks.data.sources.synthetic.latent import SITES
from tests.tasks.data.sources.synthetic.helpers import assert_label_auc_in_range

SITE = SITES["A"]


def test_doppler_flow_is_concentrated_near_the_lesion(measures):
    near = measures["flow_pixels_near"].sum() / measures["area_near"].sum()
    far = measures["flow_pixels_far"].sum() / measures["area_far"].sum()
    assert near > 0.03
    assert far < near / 20


def test_label_depends_on_vascularity_but_not_perfectly(measures):
    # vasc: colour-flow pixels within and around the lesion.
    assert_label_auc_in_range(measures, "flow_near")


def _scene(seed: int) -> tuple[Layers, Lesion, np.ndarray]:
    """Layers, a lesion and its mask on the site A grid."""
    rng = np.random.default_rng(seed)
    layers = design_layers(SITE, rng)
    lesion, _ = design_lesion(0.0, SITE, layers, rng)
    mask = lesion_margin_px(lesion, SITE.shape) < 0
    return layers, lesion, mask


def test_vasc_factor_drives_vessel_counts_and_speed():
    rng = np.random.default_rng(0)
    low = [design_vessels(-2.0, 12.0, rng) for _ in range(200)]
    high = [design_vessels(2.0, 12.0, rng) for _ in range(200)]
    for name in ("n_rim", "n_penetrating", "branch_prob", "speed"):
        assert np.mean([getattr(v, name) for v in high]) > np.mean([getattr(v, name) for v in low])
    # Counts scale with the lesion's size, so that the flow fraction does not.
    big = [design_vessels(2.0, 24.0, rng) for _ in range(200)]
    assert np.mean([v.n_rim for v in big]) > 1.5 * np.mean([v.n_rim for v in high])


def test_colour_box_holds_the_lesion_below_the_skin():
    layers, _, mask = _scene(1)
    row0, row1, col0, col1 = colour_box(mask, layers, SITE)
    rows, cols = np.nonzero(mask)
    assert row0 < rows.min() and rows.max() < row1 and col0 < cols.min() and cols.max() < col1
    assert row0 >= int(layers.skin.max())
    assert row1 < SITE.shape[0] and col1 < SITE.shape[1]


def test_flow_stays_in_the_box_and_above_the_wall_filter():
    layers, lesion, mask = _scene(2)
    box = colour_box(mask, layers, SITE)
    vessels = Vessels(n_rim=6, n_penetrating=4, n_background=2, branch_prob=0.5, speed=0.8)
    velocity = render_flow(lesion, vessels, box, SITE, np.random.default_rng(3))
    row0, row1, col0, col1 = box
    rows, cols = np.nonzero(velocity)
    assert len(rows) > 100
    assert rows.min() >= row0 and rows.max() <= row1 and cols.min() >= col0 and cols.max() <= col1
    assert (np.abs(velocity) <= 1.0).all()
    shown = np.abs(velocity[velocity != 0])
    flashes = (shown >= 0.2) & (shown <= 0.4)  # tissue-motion flashes ignore the filter
    assert ((shown > SITE.wall_filter) | flashes).all()
    assert (velocity > 0).any() and (velocity < 0).any()  # towards and away


def test_flow_colours_are_red_towards_and_blue_away():
    rgb = flow_colours(np.array([0.3, -0.3, 1.0, -1.0]))
    assert rgb.dtype == np.uint8
    red, blue, yellow, cyan = rgb.tolist()
    assert red[0] > 0 and red[1] == 0 and red[2] == 0
    assert blue[2] > 0 and blue[1] == 0 and blue[0] == 0
    assert yellow[0] == 255 and yellow[1] == 230 and yellow[2] == 0
    assert cyan[2] == 255 and cyan[1] == 230 and cyan[0] == 0


def test_cdus_is_grey_outside_the_flow_with_a_box_outline():
    bmus = np.full((40, 50), 80, np.uint8)
    velocity = np.zeros((40, 50))
    velocity[20, 25] = 0.5
    box = (10, 30, 15, 35)
    cdus = render_cdus(bmus, velocity, box)
    assert cdus.shape == (40, 50, 3) and cdus.dtype == np.uint8
    assert cdus[20, 25].tolist() == flow_colours(np.array([0.5]))[0].tolist()
    assert cdus[10, 20].tolist() == cdus[25, 35].tolist() == [170, 170, 170]
    grey = np.ones((40, 50), dtype=bool)
    grey[20, 25] = False
    assert (cdus[grey].max(axis=-1) == cdus[grey].min(axis=-1)).all()
