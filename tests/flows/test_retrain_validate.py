"""Retrain and validate flows end to end: real Prefect server, Dask process workers, MLflow
(SQLite under the store), on an 80-patient synthetic cohort with small CNN inputs."""

from __future__ import annotations

import json
import math
import os

import pytest

from flows.cohort import cohort as cohort_flow
from tasks.config import Settings
from tasks.data.store import FeatureStore

SMALL_CNN = {"SLN_CNN_SIZE": "64", "SLN_CNN_EPOCHS": "2", "SLN_CNN_BATCH_SIZE": "8"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_api):
    from flows.retrain import retrain
    from tasks.data.sources.synthetic import generate_cohort

    saved = {k: os.environ.get(k) for k in SMALL_CNN}
    os.environ.update(SMALL_CNN)
    root = tmp_path_factory.mktemp("e2e")
    manifest = generate_cohort(root / "cohort", n_patients=80, seed=4)
    settings = Settings(store=str(root / "store"), n_workers=2)
    cohort = cohort_flow(str(manifest), settings)
    summary = retrain(settings)
    yield settings, cohort, summary
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.slow
def test_retrain_registers_promotes_and_reports(trained):
    from tasks.features.cnn.embed import current_model
    from tasks.models.registry import champion

    settings, cohort, summary = trained
    store = FeatureStore(settings.store)
    assert cohort["cases_new"] == 80 and cohort["cases_embedded"] == 80
    # The CNN was fine-tuned on the GPU-resource worker and every case re-embedded.
    assert summary["cnn_worker"] == "gpu-0"
    assert summary["cnn_model_version"].startswith("cnn-")
    embeddings = store.read("embeddings")
    new = embeddings[embeddings["model_version"] == summary["cnn_model_version"]]
    assert new["case_id"].nunique() == 80 and set(new["worker"]) == {"gpu-0"}
    # First model: registered and promoted; nightly runs now embed with the new CNN.
    assert summary["promoted"] and summary["promotion"] == "no champion yet"
    assert champion(settings, store)["version"] == summary["registered_version"]
    assert current_model(store, settings).endswith("model.pth")

    report = json.loads(open(summary["report"].replace("report.html", "report.json")).read())
    for model in ("COMB", "ONLY_HF", "ONLY_DF"):
        for split in ("training", "validation", "testing"):
            metrics = report["models"][model][split]
            for key in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "n"):
                assert key in metrics
            lo, hi = metrics["auc_ci"]
            assert lo <= metrics["auc"] <= hi
    assert report["selected_features"]["COMB"]
    assert set(report["delong"]["validation"]) == {"COMB_vs_ONLY_HF", "COMB_vs_ONLY_DF"}
    html = open(summary["report"]).read()
    assert "not a cleared medical device" in html and html.count("<img") >= 4


@pytest.mark.slow
def test_validate_writes_predictions_and_fails_under_the_floor(trained):
    from flows.validate import validate

    settings, _, summary = trained
    store = FeatureStore(settings.store)
    state = validate(settings, auc_floor=0.0, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["champion"] == summary["registered_version"]
    predictions = store.read("predictions")
    assert len(predictions) == 80 and predictions["run_id"].nunique() == 1
    assert predictions["prob_COMB"].between(0, 1).all()
    assert set(predictions["predicted_COMB"].unique()) <= {0, 1}
    assert not math.isnan(result["auc_COMB_validation"])

    failed = validate(settings, auc_floor=0.999, return_state=True)
    assert failed.is_failed()
    assert "below the floor" in failed.message
    # The failed run still wrote its predictions (one run more), nothing was lost.
    assert store.read("predictions")["run_id"].nunique() == 2
