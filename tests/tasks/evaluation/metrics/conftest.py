"""The aSAH reference data as a fixture, its transcription checked."""

from __future__ import annotations

import numpy as np
import pytest

from tests.tasks.evaluation.metrics.reference import asah_data


@pytest.fixture(scope="module")
def asah() -> dict[str, np.ndarray]:
    data = asah_data()
    assert {len(v) for v in data.values()} == {113}
    assert data["y"].sum() == 41
    return data
