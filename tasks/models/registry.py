"""Tracking and registry: MLflow runs, the registered COMB model and its ``champion`` alias.

Default backend: SQLite and artifacts under the store (``<store>/mlflow``) for a local
store, ``./.mlflow`` with artifacts on the store for an object store; ``MLFLOW_TRACKING_URI``
overrides. Each retrain logs its parameters, the table versions it read, the metrics, the
report, and a bundle with the three fitted pipelines (COMB also as an sklearn model,
registered as ``sln-comb``). Promotion moves the ``champion`` alias.

The bundle is a pickle: whoever can replace it runs code where it is loaded. Its sha256 is
recorded at registration (a tag of the registered version, in the registry database) and
checked before every load; a bundle that does not match is refused, never unpickled.
No case or patient identifier goes to MLflow: the CNN's meta loses its case id lists
(counts stay) before it is logged. Its ``crossfit`` summary (mode, K, fold model versions,
the store-relative path of the case -> fold model map) goes into the bundle, so the champion's
training cases are scored with the cross-fitted deep features it was fitted on
(:func:`bundle_crossfit`); the map itself stays in the store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import joblib
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PROJECT_ROOT, Settings, code_version
from tasks.data.store import FeatureStore
from tasks.evaluation.results import Evaluation
from tasks.models.pipelines import FittedModel

log = logging.getLogger(__name__)

EXPERIMENT = "sln-radiomics"
REGISTERED = "sln-comb"
CHAMPION = "champion"
BUNDLE = "bundle/models.joblib"
BUNDLE_SHA256 = "bundle_sha256"
# case ids: never to MLflow (a fold CNN's held-out cases stay in its meta in the store)
PRIVATE_META = ("fit_case_ids", "early_stopping_case_ids", "held_out_case_ids")
TRACKED = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "brier")


def tracking_uri(settings: Settings, store: FeatureStore) -> str:
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    folder = Path(store.root) / "mlflow" if "://" not in store.root else PROJECT_ROOT / ".mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _client(settings: Settings, store: FeatureStore):
    import mlflow

    uri = tracking_uri(settings, store)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI to the environment, where the
    # next Settings() would read it as the user's choice: a second store in one process (a
    # test, `sln serve` running flows for two stores) would then use the first store's
    # registry and champion. The variable is put back as it was.
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=store.uri("mlflow", "artifacts"))
    mlflow.set_experiment(EXPERIMENT)
    return mlflow, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _flat_metrics(evaluation: Evaluation) -> dict[str, float]:
    """``<model>.<split>.<metric>`` for every defined metric of :data:`TRACKED`."""
    out = {}
    for model, by_split in evaluation.models.items():
        for split, metrics in by_split.items():
            for key in TRACKED:
                value = getattr(metrics, key)
                if math.isfinite(value):
                    out[f"{model}.{split}.{key}"] = float(value)
    return out


def log_retrain(
    models: dict[str, FittedModel],
    evaluation: Evaluation,
    report: dict[str, str],
    settings: Settings,
    store: FeatureStore,
    cnn_meta: dict[str, Any],
) -> dict[str, Any]:
    """One MLflow run: params, lineage, metrics, report, bundle; COMB registered."""
    mlflow, client = _client(settings, store)
    lineage = dict(evaluation.versions)
    cnn_meta = public_meta(cnn_meta)
    crossfit = cnn_meta.get("crossfit") or {}
    with mlflow.start_run(run_name=evaluation.run_id) as run:
        mlflow.set_tags(
            {"kind": "retrain", "flow_run": evaluation.run_id, "code_version": code_version()}
        )
        mlflow.log_params(
            {
                "icc_threshold": settings.icc_threshold,
                "pearson_threshold": settings.pearson_threshold,
                "pca_variance": settings.pca_variance,
                "lasso_rule": settings.lasso_rule,
                "seed": settings.seed,
                "params_hash": lineage["params_hash"],
                "cnn_model_version": lineage["cnn_model_version"],
                "cnn_crossfit": crossfit.get("mode", "in-sample"),
                "cnn_folds": crossfit.get("folds") or 0,
                "harmonisation": lineage.get("harmonisation", "none"),
                "table_versions": json.dumps(lineage["table_versions"]),
                **{f"threshold.{k}": round(v, 6) for k, v in evaluation.thresholds.items()},
            }
        )
        mlflow.log_metrics(_flat_metrics(evaluation))
        mlflow.log_dict(evaluation.selected_features, "selected_features.json")
        mlflow.log_dict(evaluation.model_fits, "model_fits.json")  # penalty, LASSO fallback, ICC n
        if evaluation.harmonisation:  # every option's AUCs per set, the chosen one and why
            mlflow.log_dict(evaluation.harmonisation, "harmonisation.json")
        mlflow.set_tags(
            {
                f"lasso_fallback.{name}": str(bool((fit.get("lasso") or {}).get("fallback")))
                for name, fit in evaluation.model_fits.items()
            }
        )
        mlflow.log_dict(cnn_meta, "cnn/meta.json")
        for uri in report.values():
            if "://" not in uri and os.path.exists(uri):
                mlflow.log_artifact(uri, "report")
        mlflow.log_dict({"report": report}, "report/links.json")
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / Path(BUNDLE).name
            joblib.dump({"models": models, "lineage": lineage, "cnn": cnn_meta}, bundle)
            digest = file_sha256(bundle)
            mlflow.log_artifact(str(bundle), str(Path(BUNDLE).parent))
            mlflow.set_tag(BUNDLE_SHA256, digest)
        info = mlflow.sklearn.log_model(
            models["COMB"].pipeline,
            name="COMB",
            registered_model_name=REGISTERED,
            # skops cannot serialise pandas-backed fitted state (selection tables).
            serialization_format="cloudpickle",
        )
        run_id = run.info.run_id
    version = _version_of(client, run_id)
    client.set_model_version_tag(
        REGISTERED, version, "cnn_model_version", lineage["cnn_model_version"]
    )
    client.set_model_version_tag(REGISTERED, version, BUNDLE_SHA256, digest)
    return {"mlflow_run_id": run_id, "registered_version": version, "model_uri": info.model_uri}


def _version_of(client, run_id: str) -> str:
    for mv in client.search_model_versions(f"name='{REGISTERED}'"):
        if mv.run_id == run_id:
            return str(mv.version)
    raise RuntimeError(f"no registered {REGISTERED} version for MLflow run {run_id}")


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The CNN meta without case ids (their counts instead): what MLflow may keep."""
    out = {k: v for k, v in meta.items() if k not in PRIVATE_META}
    for key in PRIVATE_META:
        if key in meta:
            out[key.removesuffix("_ids") + "_count"] = len(meta[key])
    return out


def bundle_crossfit(bundle: dict[str, Any]) -> dict[str, Any] | None:
    """What :func:`tasks.models.features.load_features` needs to give the bundle's training
    cases their cross-fitted deep features (the CNN meta's ``crossfit`` summary); None for
    an in-sample CNN and for bundles logged before cross-fitting (in-sample too)."""
    summary = (bundle.get("cnn") or {}).get("crossfit")
    return dict(summary) if summary and summary.get("mode") == "crossfit" else None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class TamperedArtifactError(RuntimeError):
    """A model artifact does not match the sha256 recorded when it was registered."""


def recorded_sha256(client, run_id: str) -> str | None:
    """The bundle's sha256 recorded on the registered version of an MLflow run."""
    for mv in client.search_model_versions(f"name='{REGISTERED}'"):
        if mv.run_id == run_id:
            return (mv.tags or {}).get(BUNDLE_SHA256)
    return None


def verified_load(path: str | Path, expected: str | None, what: str) -> Any:
    """Unpickle ``path`` only when its sha256 is the one recorded at registration."""
    if not expected:
        raise TamperedArtifactError(f"{what}: no sha256 recorded at registration; not loaded")
    actual = file_sha256(path)
    if not hmac.compare_digest(actual, expected):
        raise TamperedArtifactError(
            f"{what}: sha256 {actual[:12]}... differs from the {expected[:12]}... recorded "
            "at registration; the artifact was changed and is not loaded"
        )
    return joblib.load(path)


def load_bundle(run_id: str, settings: Settings, store: FeatureStore) -> dict[str, Any]:
    """The three fitted models, lineage and CNN meta logged by a retrain run, verified."""
    mlflow, client = _client(settings, store)
    expected = recorded_sha256(client, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=BUNDLE, dst_path=tmp
        )
        return verified_load(path, expected, f"model bundle of MLflow run {run_id}")


def champion(settings: Settings, store: FeatureStore) -> dict[str, Any] | None:
    """The champion's registry version and MLflow run, or None before the first promotion."""
    _, client = _client(settings, store)
    try:
        mv = client.get_model_version_by_alias(REGISTERED, CHAMPION)
    except Exception:  # no registered model or no alias yet
        return None
    return {"version": str(mv.version), "mlflow_run_id": mv.run_id}


def promote(version: str, settings: Settings, store: FeatureStore) -> None:
    _, client = _client(settings, store)
    client.set_registered_model_alias(REGISTERED, CHAMPION, version)
    log.info("%s version %s is now %s", REGISTERED, version, CHAMPION)


# -- Prefect wrappers ------------------------------------------------------------------------
log_retrain_task = task(log_retrain, name="log-retrain", cache_policy=NO_CACHE)
champion_task = task(champion, name="champion", cache_policy=NO_CACHE)
load_bundle_task = task(load_bundle, name="load-bundle", cache_policy=NO_CACHE)
promote_task = task(promote, name="promote", cache_policy=NO_CACHE)
