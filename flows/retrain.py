"""The retrain flow: fine-tune the CNN, embed, fit the three models under each scanner
harmonisation option (keep the best by internal testing), evaluate, register, and promote to
``champion`` unless DeLong shows the candidate worse on internal testing (external
validation is never used to make a decision).

Every step is a Prefect task, so the run's graph in the UI shows where the time goes.
"""

from __future__ import annotations

import dataclasses

import dask
from prefect import flow, get_run_logger

from flows.cohort import current_run_id
from flows.extract import commit_as_completed, embedding_chunks, submit_embeddings
from flows.runtime.runners import task_runner
from tasks.config import Settings, resolve_settings
from tasks.data.ingest import with_perturbation
from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, FEATURE_TABLES, current_cohort
from tasks.evaluation.artifacts import publish_evaluation, publish_run_summary
from tasks.evaluation.evaluate import (
    cohort_flow_counts_task,
    compare_with_champion_task,
    evaluate_task,
)
from tasks.evaluation.harmonisation import compare_harmonisation_task
from tasks.evaluation.report import write_report_task
from tasks.features.cnn.crossfit import (
    CROSSFIT,
    finetune_fold_task,
    fold_numbers,
    held_out_cohorts,
    load_crossfit,
    record_crossfit_task,
)
from tasks.features.cnn.embed import set_current_model_task
from tasks.features.cnn.start import start_weights_task
from tasks.features.cnn.train import finetune_task
from tasks.features.radiomics import current_params_hash
from tasks.features.work import plan_work_task
from tasks.models.features import load_features_task, training_cases_task
from tasks.models.harmonise import harmonisation_options, image_pass_settings
from tasks.models.pipelines import fit_models_task
from tasks.models.registry import champion_task, log_retrain_task, promote_task


@flow(name="train-and-embed", log_prints=True)
def train_and_embed(settings: Settings, run_id: str, table_versions: dict) -> dict:
    """Fine-tune on a GPU-resource worker the final CNN and, in cross-fit mode, the K fold
    CNNs; embed every case with the final one and each fold's held-out cases with its own."""
    store = FeatureStore(settings.store)
    cases = training_cases_task(store, table_versions["cohort"])
    get_run_logger().info(
        "%d labelled training cases (cohort v%s)", len(cases), table_versions["cohort"]
    )
    start = start_weights_task(settings, store)
    with dask.annotate(resources={"GPU": 1}):
        final = finetune_task.submit(cases, settings, start, table_versions)
        folds = [
            finetune_fold_task.submit(cases, k, settings, start, table_versions)
            for k in fold_numbers(settings)
        ]
    meta = record_crossfit_task(store, final.result(), [f.result() for f in folds], settings)
    cohort = current_cohort(store.read(COHORT))
    settings = with_perturbation(cohort, settings)
    work = plan_work_task(cohort, store, settings, radiomics=False, model=meta["uri"])
    final_chunks = submit_embeddings(embedding_chunks(work, settings), work.embeddings, settings)
    fold_chunks = {}
    if meta["crossfit"]["mode"] == CROSSFIT:
        for uri, held in held_out_cohorts(cohort, load_crossfit(store, meta["crossfit"]), store):
            work = plan_work_task(held, store, settings, radiomics=False, model=uri)
            fold_chunks |= submit_embeddings(
                embedding_chunks(work, settings), work.embeddings, settings
            )
    totals = commit_as_completed(final_chunks, store, run_id)
    fold_totals = commit_as_completed(fold_chunks, store, run_id)
    return {
        "cnn": meta,
        "embeddings": totals["embeddings"],
        "fold_embeddings": fold_totals["embeddings"],
    }


@flow(name="retrain", log_prints=True, persist_result=False)
def retrain(settings: Settings | None = None, promote_champion: bool = True) -> dict:
    """Retrain on the current cohort's training split and evaluate on every split.

    Parameters
    ----------
    settings: run settings built by the caller (None: from the environment)
    promote_champion: allow promotion (a dry run evaluates and registers only)
    """
    logger = get_run_logger()
    settings = resolve_settings(settings)
    store = FeatureStore(settings.store)
    run_id = current_run_id("retrain")
    versions = store.versions(FEATURE_TABLES)
    trained = train_and_embed.with_options(task_runner=task_runner(settings))(
        settings, run_id, versions
    )
    cnn = trained["cnn"]
    # Scanner harmonisation: the models fitted under each option, the best by internal
    # testing kept (tasks/evaluation/harmonisation.py); the rest of the run uses that one.
    fits, unavailable, loaded = {}, {}, {}
    for option in harmonisation_options(settings):
        extracted = image_pass_settings(settings) if option == "image" else settings
        phash = current_params_hash(extracted)
        try:
            if phash not in loaded:  # none and combat read the same rows: read them once
                loaded[phash] = load_features_task(
                    store, phash, cnn["version"], crossfit=cnn["crossfit"]
                )
        except ValueError as exc:  # e.g. no image-normalised rows: the cohort flow ran without
            if settings.harmonisation != "auto" or option == "none":
                raise
            logger.warning("harmonisation %s not compared: %s", option, exc)
            unavailable[option] = str(exc)
            continue
        option_data = dataclasses.replace(
            loaded[phash], lineage={**loaded[phash].lineage, "harmonisation": option}
        )
        fits[option] = (fit_models_task(option_data, settings, harmonisation=option), option_data)
    comparison = compare_harmonisation_task(fits, settings.harmonisation, unavailable)
    models, data = fits[comparison["chosen"]]
    logger.info("harmonisation: %s (%s)", comparison["chosen"], comparison["rule"])
    evaluation = evaluate_task(
        models,
        data,
        run_id,
        "retrain",
        cohort_flow_counts_task(store),
        {"cnn": cnn["version"]},
        drift_resamples=settings.drift_permutations,
        seed=settings.seed,
    )
    evaluation = evaluation.with_harmonisation(comparison)
    report = write_report_task(evaluation, store.uri("reports", run_id))
    logged = log_retrain_task(models, evaluation, report, settings, store, cnn)

    current = champion_task(settings, store)
    decision = compare_with_champion_task(models["COMB"], data, current, settings, store)
    promoted = promote_champion and decision.promote
    if promoted:
        promote_task(logged["registered_version"], settings, store)
        set_current_model_task(store, cnn["uri"])  # nightly runs embed with it from now on
    summary = {
        "run_id": run_id,
        "training_cases": cnn["training_cases"],
        "cnn_model_version": cnn["version"],
        "cnn_best_epoch": cnn.get("best_epoch"),
        "cnn_worker": cnn.get("worker"),
        "harmonisation": comparison["chosen"],
        "cases_embedded": trained["embeddings"].cases,
        "registered_version": logged["registered_version"],
        "mlflow_run_id": logged["mlflow_run_id"],
        "promoted": bool(promoted),
        "promotion": decision.reason,
        "report": report["html"],
        **{
            f"auc_{name}_{split}": round(m.auc, 3)
            for name, sets in evaluation.models.items()
            for split, m in sets.items()
        },
    }
    publish_evaluation("retrain", evaluation, report)
    publish_run_summary("retrain", summary)
    return summary
