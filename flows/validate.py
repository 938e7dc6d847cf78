"""The validate flow: score the champion on the current cases, write ``predictions``, report,
check feature drift per site, and fail visibly when the AUC falls under the floor."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.cohort import current_run_id
from flows.fanout import commit_as_completed, submit_embeddings
from flows.runtime.runners import task_runner
from tasks.config import Settings
from tasks.data.ingest import current_cohort, with_perturbation
from tasks.data.store import FeatureStore
from tasks.evaluation.artifacts import publish_evaluation, publish_run_summary
from tasks.evaluation.evaluate import check_floor, cohort_flow_counts, evaluate, prediction_rows
from tasks.evaluation.report import write_report
from tasks.models.pipelines import load_features
from tasks.models.registry import champion, load_bundle


@flow(name="embed-missing", log_prints=True)
def embed_missing(model: str, settings: Settings, run_id: str) -> dict:
    """Embed current cases that lack the champion CNN's embeddings (GPU workers)."""
    from tasks.features.cnn.embed import plan_embeddings

    store = FeatureStore(settings.store)
    settings = with_perturbation(current_cohort(store.read("cohort")), settings)
    plan = plan_embeddings(store, settings, model=model)
    chunks = plan.plan.chunks(settings.chunk_size * 4, 1)
    return commit_as_completed(
        submit_embeddings(chunks, plan.model, plan.dual, settings), store, run_id
    )


@flow(name="validate", log_prints=True, persist_result=True)
def validate(store: str = "./store", auc_floor: float | None = None, workers: int | None = None):
    """Score the champion on every current case; evaluate the labelled ones.

    Parameters
    ----------
    store: feature store root
    auc_floor: the run fails when the champion's external-validation AUC is below it
    workers: local Dask process workers (ignored on an existing cluster)
    """
    logger = get_run_logger()
    overrides = {"n_workers": workers, "auc_floor": auc_floor}
    settings = Settings(store=store, **{k: v for k, v in overrides.items() if v is not None})
    feature_store = FeatureStore(settings.store)
    run_id = current_run_id("validate")
    current = champion(settings, feature_store)
    if current is None:
        return Failed(message="no champion model yet: run the retrain flow first")
    bundle = load_bundle(current["mlflow_run_id"], settings, feature_store)
    lineage, cnn = bundle["lineage"], bundle["cnn"]
    logger.info("champion: sln-comb v%s (CNN %s)", current["version"], cnn["version"])

    from tasks.features.cnn.embed import plan_embeddings

    planned = with_perturbation(current_cohort(feature_store.read("cohort")), settings)
    if plan_embeddings(feature_store, planned, model=cnn["uri"]).plan.todo:
        embed_missing.with_options(task_runner=task_runner(settings))(cnn["uri"], settings, run_id)
    data = load_features(feature_store, lineage["params_hash"], lineage["cnn_model_version"])
    models = bundle["models"]
    evaluation = evaluate(
        models,
        data,
        run_id,
        "validate",
        cohort_flow_counts(feature_store),
        {"champion": f"sln-comb v{current['version']}"},
    )
    evaluation["checks"] = check_floor(evaluation, settings.auc_floor)
    predictions = prediction_rows(models, data, run_id, current["version"])
    written = feature_store.insert_new("predictions", predictions, ["run_id", "case_id"])
    report = write_report(evaluation, feature_store.uri("reports", run_id))
    summary = {
        "run_id": run_id,
        "champion": current["version"],
        "cases_scored": int(len(predictions)),
        "predictions_written": written,
        "report": report["html"],
        "checks_passed": evaluation["checks"]["passed"],
        **{
            f"auc_COMB_{split}": round(m["auc"], 3)
            for split, m in evaluation["models"]["COMB"].items()
        },
        "drift_sites_over_0_25": sorted(
            site for site, d in evaluation["drift"].items() if d["features_over_0_25"]
        ),
    }
    publish_evaluation("validate", evaluation, report)
    publish_run_summary("validate", summary)
    if not evaluation["checks"]["passed"]:
        return Failed(message="; ".join(evaluation["checks"]["failed"]), data=summary)
    return summary
