"""Flow fixtures: a cohort run and a retrain on an 80-patient synthetic cohort with small CNN
inputs and radiomics on the original image only, under a real Prefect server, Dask process
workers and MLflow (SQLite under the store). Shared by the retrain, validate and
reproducibility tests (one retrain serves them all)."""

from __future__ import annotations

import os

import pytest

from flows.cohort import cohort as cohort_flow
from tasks.config import Settings
from tests.conftest import original_only_params

SMALL_CNN = {
    "SLN_CNN_SIZE": "64",
    "SLN_CNN_EPOCHS": "2",
    "SLN_CNN_BATCH_SIZE": "8",
    "SLN_CNN_FOLDS": "2",  # cross-fitted: the final CNN and two fold CNNs
    "SLN_HARMONISATION": "auto",  # the default: every option fitted and compared
}


def run_env(settings: Settings) -> dict[str, str]:
    """The environment an ``sln`` process needs to work on the fixture's store as the fixture
    did: its CNN sizes and its radiomics params (else it would plan a re-extraction)."""
    return SMALL_CNN | {
        "SLN_RADIOMICS_PARAMS": str(settings.radiomics_params),
        "SLN_RADIOMICS_PARAMS_NORMALISED": str(settings.radiomics_params_normalised),
    }


@pytest.fixture(scope="session")  # one retrain serves both test modules
def trained(tmp_path_factory, prefect_api):
    from flows.retrain import retrain
    from tasks.data.sources.synthetic import generate_cohort

    # SMALL_CNN only while building: the settings carry it to every test that uses them
    # (one that starts `sln` passes run_env(settings)), and the tests after this fixture run
    # in the session's own environment (harmonisation 'none', no cross-fit folds set).
    saved = {k: os.environ.get(k) for k in SMALL_CNN}
    os.environ.update(SMALL_CNN)
    try:
        root = tmp_path_factory.mktemp("e2e")
        manifest = generate_cohort(root / "cohort", n_patients=80, seed=4)
        # Both radiomics passes on the original image only: what these tests check does not
        # depend on the wavelet and LoG features, and it saves minutes per run.
        defaults = Settings()
        settings = Settings(
            store=str(root / "store"),
            n_workers=2,
            radiomics_params=original_only_params(root, defaults.radiomics_params),
            radiomics_params_normalised=original_only_params(
                root, defaults.radiomics_params_normalised
            ),
        )
        cohort = cohort_flow(str(manifest), settings)
        summary = retrain(settings)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return settings, cohort, summary
