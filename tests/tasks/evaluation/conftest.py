"""The fixed sample input of the evaluation tests (see ``sample.py``): built once."""

from __future__ import annotations

import pytest

from tasks.evaluation.results import Evaluation
from tasks.models.features import FeatureData
from tasks.models.pipelines import FittedModel
from tests.tasks.evaluation import sample


@pytest.fixture(scope="session")
def feature_data() -> FeatureData:
    return sample.feature_data()


@pytest.fixture(scope="session")
def fitted(feature_data) -> dict[str, FittedModel]:
    return sample.fit_models(feature_data)


@pytest.fixture(scope="session")
def sample_evaluation(feature_data, fitted) -> Evaluation:
    """A validate run's evaluation of the sample, its AUC floor checked."""
    return sample.evaluation(feature_data, fitted, "validate")
