"""Fixtures of the synthetic-cohort tests: one written cohort and measurements from it.

Session-scoped, so the 120-patient cohort is generated once for all test modules here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from tasks.data.sources.synthetic.cohort import generate_cohort
from tests.tasks.data.sources.synthetic.helpers import (
    COHORT_SEED,
    COHORT_SIZE,
    WrittenCohort,
    irregularity,
    read_png,
)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> WrittenCohort:
    """One 120-patient cohort with preview, shared by the tests that only read it."""
    out_dir = tmp_path_factory.mktemp("cohort")
    calls: list[tuple[int, int]] = []
    manifest_path = generate_cohort(
        out_dir,
        n_patients=COHORT_SIZE,
        seed=COHORT_SEED,
        preview=True,
        progress=lambda done, total: calls.append((done, total)),
    )
    manifest = pd.read_csv(manifest_path, keep_default_na=False)
    return WrittenCohort(out_dir, manifest_path, manifest, calls)


@pytest.fixture(scope="session")
def measures(cohort: WrittenCohort) -> pd.DataFrame:
    """Per-case measurements taken from the written images and masks only."""
    out_dir, rows = cohort.out_dir, []
    for case in cohort.manifest.itertuples(index=False):
        bmus = read_png(out_dir / case.bmus_image).astype(float)
        cdus = read_png(out_dir / case.cdus_image).astype(int)
        mask = read_png(out_dir / case.bmus_mask) > 0
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
                "irregularity": irregularity(mask),
                "heterogeneity": bmus[mask].std(),
                "flow_near": flow[near].mean(),
                "flow_pixels_near": flow[near].sum(),
                "area_near": near.sum(),
                "flow_pixels_far": flow[outside > 1.5 * radius + 30].sum(),
                "area_far": (outside > 1.5 * radius + 30).sum(),
            }
        )
    return pd.DataFrame(rows)
