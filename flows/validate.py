"""The validate flow: score the champion on the current cases, write ``predictions``, report,
check feature drift per site, and fail visibly when the AUC falls under the floor."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.cohort import current_run_id
from flows.extract import run_extraction
from tasks.config import Settings, resolve_settings
from tasks.data.ingest import with_perturbation
from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, current_cohort
from tasks.evaluation.artifacts import publish_evaluation, publish_run_summary
from tasks.evaluation.evaluate import (
    check_floor_task,
    cohort_flow_counts_task,
    evaluate_task,
    write_predictions_task,
)
from tasks.evaluation.report import write_report_task
from tasks.features.work import plan_work_task
from tasks.models.features import load_features_task
from tasks.models.registry import bundle_crossfit, champion_task, load_bundle_task


@flow(name="validate", log_prints=True, persist_result=False)
def validate(settings: Settings | None = None, auc_floor: float | None = None):
    """Score the champion on every current case; evaluate the labelled ones.

    Parameters
    ----------
    settings: run settings built by the caller (None: from the environment)
    auc_floor: the run fails when the champion's external-validation AUC is below it
        (default: ``settings.auc_floor``)
    """
    logger = get_run_logger()
    settings = resolve_settings(settings)
    if auc_floor is not None:
        settings = settings.model_copy(update={"auc_floor": auc_floor})
    store = FeatureStore(settings.store)
    run_id = current_run_id("validate")
    current = champion_task(settings, store)
    if current is None:
        return Failed(message="no champion model yet: run the retrain flow first")
    bundle = load_bundle_task(current["mlflow_run_id"], settings, store)
    lineage, cnn = bundle["lineage"], bundle["cnn"]
    logger.info("champion: sln-comb v%s (CNN %s)", current["version"], cnn["version"])

    # Cases that lack the champion CNN's embeddings are embedded first (GPU workers).
    cohort = current_cohort(store.read(COHORT))
    settings = with_perturbation(cohort, settings)
    work = plan_work_task(cohort, store, settings, radiomics=False, model=cnn["uri"])
    run_extraction(work, settings, run_id)
    crossfit = bundle_crossfit(bundle)  # None: an in-sample CNN, or a bundle from before
    if crossfit is not None:
        # The champion's training cases are scored with their fold CNN's embeddings; a case
        # whose files changed since the retrain gets them first (usually nothing to do).
        from tasks.features.cnn.crossfit import held_out_cohorts, load_crossfit

        for uri, held in held_out_cohorts(cohort, load_crossfit(store, crossfit), store):
            fold_work = plan_work_task(held, store, settings, radiomics=False, model=uri)
            run_extraction(fold_work, settings, run_id)

    data = load_features_task(
        store, lineage["params_hash"], lineage["cnn_model_version"], crossfit=crossfit
    )
    models = bundle["models"]
    evaluation = evaluate_task(
        models,
        data,
        run_id,
        "validate",
        cohort_flow_counts_task(store),
        {"champion": f"sln-comb v{current['version']}"},
        drift_resamples=settings.drift_permutations,
        seed=settings.seed,
    )
    evaluation = evaluation.with_checks(check_floor_task(evaluation, settings.auc_floor))
    scored, written = write_predictions_task(models, data, run_id, current["version"], store)
    report = write_report_task(evaluation, store.uri("reports", run_id))
    summary = {
        "run_id": run_id,
        "champion": current["version"],
        "cases_scored": scored,
        "predictions_written": written,
        "report": report["html"],
        "checks_passed": evaluation.checks.passed,
        **{f"auc_COMB_{split}": round(m.auc, 3) for split, m in evaluation.models["COMB"].items()},
        "drift_flagged": sorted(
            f"{split}/{site}"
            for split, by_site in evaluation.drift.items()
            for site, d in by_site.items()
            if d.features_flagged
        ),
    }
    publish_evaluation("validate", evaluation, report)
    publish_run_summary("validate", summary)
    if not evaluation.checks.passed:
        return Failed(message="; ".join(evaluation.checks.failed), data=summary)
    return summary
