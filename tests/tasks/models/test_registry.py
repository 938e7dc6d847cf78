"""MLflow tracking and the model registry on a temporary store (SQLite under the store):
a retrain run's params, metrics, artifacts and bundle, the registered ``sln-comb``
versions, the ``champion`` alias, and the promotion decision against the champion."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tasks.config import Settings
from tasks.data.store import FeatureStore
from tasks.evaluation import evaluate as step
from tasks.evaluation.report import write_report
from tasks.models import registry
from tasks.models.registry import (
    REGISTERED,
    TRACKED,
    _flat_metrics,
    champion,
    load_bundle,
    log_retrain,
    promote,
)
from tests.tasks.evaluation import sample

CNN = {"version": sample.LINEAGE["cnn_model_version"], "uri": "s3://b/cnn/model.pth", "epochs": 2}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One retrain run logged (not promoted) on a fresh store."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        settings = Settings(store=str(root / "store"))
        store = FeatureStore(settings.store)
        data = sample.feature_data()
        models = sample.fit_models(data)
        evaluation = sample.evaluation(data, models, "retrain")
        report = write_report(evaluation, str(root / "reports" / evaluation.run_id))
        logged = log_retrain(models, evaluation, report, settings, store, CNN)
        yield settings, store, data, models, evaluation, report, logged


def test_log_retrain_logs_params_metrics_artifacts_and_registers_comb(tracked):
    import mlflow

    settings, store, data, models, evaluation, report, logged = tracked
    assert logged["registered_version"] == "1"
    assert logged["model_uri"].startswith("models:/")
    # SQLite tracking under the store, artifacts in it.
    assert registry.tracking_uri(settings, store) == f"sqlite:///{store.root}/mlflow/mlflow.db"
    client = mlflow.MlflowClient()
    run = client.get_run(logged["mlflow_run_id"])
    params = run.data.params
    assert params["params_hash"] == sample.LINEAGE["params_hash"]
    assert params["cnn_model_version"] == sample.LINEAGE["cnn_model_version"]
    assert json.loads(params["table_versions"]) == sample.LINEAGE["table_versions"]
    assert params["icc_threshold"] == str(settings.icc_threshold)
    assert params["lasso_rule"] == settings.lasso_rule
    assert params["threshold.COMB"] == str(round(models["COMB"].threshold, 6))
    metrics = run.data.metrics
    assert metrics == pytest.approx(_flat_metrics(evaluation))
    assert len(metrics) == 3 * 3 * len(TRACKED)
    assert metrics["COMB.validation.auc"] == pytest.approx(
        evaluation.models["COMB"]["validation"].auc
    )
    assert run.data.tags["kind"] == "retrain"
    assert run.data.tags["flow_run"] == evaluation.run_id
    assert run.info.run_name == evaluation.run_id
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    selected = json.loads((artifacts / "selected_features.json").read_text())
    assert selected == evaluation.selected_features
    assert json.loads((artifacts / "cnn" / "meta.json").read_text()) == CNN
    assert (artifacts / "report" / "report.json").read_bytes() == Path(report["json"]).read_bytes()
    assert (artifacts / "report" / "report.html").is_file()
    assert json.loads((artifacts / "report" / "links.json").read_text()) == {"report": report}
    version = client.get_model_version(REGISTERED, "1")
    assert version.run_id == logged["mlflow_run_id"]
    assert version.tags["cnn_model_version"] == CNN["version"]
    # The registered COMB is the fitted pipeline.
    loaded = mlflow.sklearn.load_model(logged["model_uri"])
    X = data.reader1.iloc[:20]
    np.testing.assert_array_equal(loaded.predict_proba(X), models["COMB"].pipeline.predict_proba(X))


def test_flat_metrics_skips_undefined_values(tracked):
    evaluation = tracked[4]
    models = {m: dict(by_split) for m, by_split in evaluation.models.items()}
    models["COMB"]["testing"] = replace(models["COMB"]["testing"], auc=math.nan, ppv=math.inf)
    flat = _flat_metrics(replace(evaluation, models=models))
    assert "COMB.testing.auc" not in flat and "COMB.testing.ppv" not in flat
    assert flat["COMB.testing.npv"] == models["COMB"]["testing"].npv
    assert len(flat) == 3 * 3 * len(TRACKED) - 2


def test_promote_moves_the_champion_alias_and_the_bundle_reads_back(tracked):
    settings, store, data, models, evaluation, report, logged = tracked
    assert champion(settings, store) is None  # logged, not promoted yet
    promote(logged["registered_version"], settings, store)
    assert champion(settings, store) == {
        "version": logged["registered_version"],
        "mlflow_run_id": logged["mlflow_run_id"],
    }
    bundle = load_bundle(logged["mlflow_run_id"], settings, store)
    assert set(bundle) == {"models", "lineage", "cnn"}
    assert bundle["lineage"] == {**sample.LINEAGE, "cnn": CNN["version"]}
    assert bundle["cnn"] == CNN
    assert list(bundle["models"]) == list(models)
    X = data.reader1
    for name, model in models.items():
        restored = bundle["models"][name]
        np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))
        assert restored.threshold == model.threshold

    # A second retrain registers version 2; the champion moves only when promoted.
    second = log_retrain(models, evaluation, report, settings, store, CNN)
    assert second["registered_version"] == "2"
    assert champion(settings, store)["version"] == logged["registered_version"]
    promote(second["registered_version"], settings, store)
    assert champion(settings, store) == {"version": "2", "mlflow_run_id": second["mlflow_run_id"]}
    promote(logged["registered_version"], settings, store)  # back, for the next test
    assert champion(settings, store)["version"] == "1"


def test_a_second_store_in_the_same_process_has_its_own_registry(tracked, tmp_path):
    """mlflow exports the tracking URI it is given to the environment; the registry puts it
    back, so the next Settings() of another store does not read the first store's champion."""
    settings, store, *_ = tracked
    promote("1", settings, store)
    assert champion(settings, store)["version"] == "1"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    other = Settings(store=str(tmp_path / "other"))
    assert other.mlflow_tracking_uri is None
    assert champion(other, FeatureStore(other.store)) is None
    assert champion(settings, store)["version"] == "1"


def test_compare_with_champion_reads_the_champion_bundle(tracked, monkeypatch):
    settings, store, data, models, evaluation, report, logged = tracked
    promote(logged["registered_version"], settings, store)
    current = champion(settings, store)
    read = []

    def load_features(store_, params_hash, cnn_model_version, crossfit=None):
        read.append((store_, params_hash, cnn_model_version, crossfit))
        return data  # the features the champion was trained with

    monkeypatch.setattr(step, "load_features", load_features)
    worse = step.compare_with_champion(models["ONLY_DF"], data, current, settings, store)
    # An in-sample CNN (this bundle's): no cross-fitting map; a cross-fitted champion's
    # summary would be passed, so its deep feature is built as it was fitted on.
    assert read == [(store, sample.LINEAGE["params_hash"], CNN["version"], None)]
    # Promotion is decided on the internal testing set, never on external validation.
    assert "testing AUC" in worse.reason and "champion v1" in worse.reason
    assert worse.delong.auc_b == evaluation.models["COMB"]["testing"].auc
    assert worse.delong.auc_a < worse.delong.auc_b
    same = step.compare_with_champion(models["COMB"], data, current, settings, store)
    assert same.promote and same.delong.diff == 0.0


@pytest.mark.parametrize(
    "wrapper, fn, name",
    [
        (registry.log_retrain_task, log_retrain, "log-retrain"),
        (registry.champion_task, champion, "champion"),
        (registry.load_bundle_task, load_bundle, "load-bundle"),
        (registry.promote_task, promote, "promote"),
    ],
)
def test_prefect_tasks_wrap_the_registry_steps(wrapper, fn, name):
    assert wrapper.fn is fn and wrapper.name == name


def _bundle_file(store) -> Path:
    files = list(Path(store.root, "mlflow", "artifacts").rglob("bundle/models.joblib"))
    assert files
    return files


def test_a_changed_bundle_is_refused_before_it_is_unpickled(tracked, tmp_path):
    # Whoever can write the store must not run code in validate: the bundle's sha256 is
    # recorded at registration and checked before joblib.load.
    import pickle

    settings, store, data, models, evaluation, report, _ = tracked
    logged = log_retrain(models, evaluation, report, settings, store, CNN)
    run_dir = next(p for p in _bundle_file(store) if logged["mlflow_run_id"] in str(p))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    run_dir.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(registry.TamperedArtifactError, match="recorded at registration"):
        load_bundle(logged["mlflow_run_id"], settings, store)
    assert not marker.exists()


def test_a_bundle_without_a_recorded_sha256_is_not_loaded(tmp_path):
    import joblib

    path = tmp_path / "b.joblib"
    joblib.dump({"x": 1}, path)
    with pytest.raises(registry.TamperedArtifactError, match="no sha256"):
        registry.verified_load(path, None, "bundle")
    assert registry.verified_load(path, registry.file_sha256(path), "bundle") == {"x": 1}


def test_case_ids_never_reach_mlflow(tracked):
    import mlflow

    settings, store, data, models, evaluation, report, logged = tracked
    # A bundle from before cross-fitting (no summary): in-sample.
    assert registry.bundle_crossfit(load_bundle(logged["mlflow_run_id"], settings, store)) is None
    summary = {
        "mode": "crossfit",
        "folds": 2,
        "fold_models": ["cnn-f1", "cnn-f2"],
        "mapping": "models/cnn/cnn-x/crossfit.json",
    }
    meta = CNN | {
        "fit_case_ids": ["SECRET-CASE-1"],
        "early_stopping_case_ids": ["SECRET-2"],
        "held_out_case_ids": ["SECRET-3", "SECRET-4"],
        "crossfit": summary,
    }
    logged = log_retrain(models, evaluation, report, settings, store, meta)
    logged_meta = mlflow.artifacts.load_dict(f"runs:/{logged['mlflow_run_id']}/cnn/meta.json")
    assert logged_meta == CNN | {
        "fit_case_count": 1,
        "early_stopping_case_count": 1,
        "held_out_case_count": 2,
        "crossfit": summary,
    }
    params = mlflow.MlflowClient().get_run(logged["mlflow_run_id"]).data.params
    assert params["cnn_crossfit"] == "crossfit" and params["cnn_folds"] == "2"
    bundle = load_bundle(logged["mlflow_run_id"], settings, store)
    assert "fit_case_ids" not in bundle["cnn"] and "held_out_case_ids" not in bundle["cnn"]
    # The bundle carries what load_features needs for the champion's training cases.
    assert registry.bundle_crossfit(bundle) == summary
    assert registry.bundle_crossfit({"cnn": {"crossfit": {"mode": "in-sample"}}}) is None
    for path in Path(store.root, "mlflow").rglob("*"):
        if path.is_file():
            for secret in (b"SECRET-CASE-1", b"SECRET-3"):
                assert secret not in path.read_bytes(), path
