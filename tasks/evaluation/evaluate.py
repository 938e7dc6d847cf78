"""Evaluation step: every number the report shows, from fitted models and feature data.

Per model x set (training, external validation, testing; in a validate run also the
training-split cases the champion never saw, ``training_new``) and per site within each set:
AUC with DeLong CI, accuracy / sensitivity / specificity / PPV / NPV with Wilson CIs at the
training Youden threshold, Brier; DeLong paired tests COMB vs ONLY_HF and COMB vs ONLY_DF;
ROC, calibration and decision curves; drift of COMB's selected inputs per site against
training (:mod:`tasks.evaluation.sites`). Discrimination, thresholds and calibration use
the linear predictor (log-odds), which does not saturate into ties. Returns an
:class:`~tasks.evaluation.results.Evaluation`; :func:`evaluate` reads nothing and writes
nothing, the report step renders its result.

Also here: the validate flow's AUC floor (:func:`check_floor`) and ``predictions`` rows
(:func:`prediction_rows`), the retrain flow's promotion decision
(:func:`compare_with_champion`, on the internal testing set, never the external validation
set) and the cohort counts of the report (:func:`cohort_flow_counts`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy.special import expit
from sklearn.metrics import roc_curve

from tasks.config import Settings
from tasks.data.store import FeatureStore
from tasks.data.tables import PREDICTIONS, current_cohort
from tasks.evaluation.metrics import (
    calibration,
    decision_curve,
    delong_test,
    model_set_metrics,
)
from tasks.evaluation.results import (
    EVALUATION_SETS,
    Calibration,
    Checks,
    CohortFlow,
    DelongTest,
    Evaluation,
    ModelSetMetrics,
    NetBenefit,
    Promotion,
    ReliabilityBin,
    RocCurve,
)
from tasks.evaluation.sites import per_site, site_drift
from tasks.models.features import FeatureData, icc_source, load_features
from tasks.models.pipelines import FittedModel
from tasks.models.registry import bundle_crossfit, load_bundle

COMPARISONS = (("COMB", "ONLY_HF"), ("COMB", "ONLY_DF"))
PROMOTION_SET = "testing"  # internal: the external validation set stays an independent test
# Which set served which decision: the report lists it.
DECISION_SETS = {
    "CNN fine-tuning, feature selection (ICC, Pearson, LASSO) and coefficients": "training",
    "decision threshold (Youden on the linear predictor)": "training",
    "scanner harmonisation option (COMB AUC; ties to the simpler)": (
        f"{PROMOTION_SET} (internal; never the external validation set)"
    ),
    "promotion of a retrained model (DeLong, candidate vs champion)": (
        f"{PROMOTION_SET} (internal; never the external validation set)"
    ),
    "drift reference": "training",
    "AUC floor of the validate flow (monitoring only, no model choice)": "validation",
}


def predictions(models: dict[str, FittedModel], data: FeatureData) -> pd.DataFrame:
    """Linear predictor (``lp_``) and probability (``prob_``) of every model for every case
    with features (labelled or not)."""
    X = data.reader1
    out = data.cases.copy()
    for name, model in models.items():
        out[f"lp_{name}"] = model.decision_function(X)
        out[f"prob_{name}"] = expit(out[f"lp_{name}"].to_numpy())
    return out


def trained_on(models: dict[str, FittedModel]) -> set[str] | None:
    """The cases the models were fitted on (None for bundles that did not record them)."""
    ids = [
        set(m.fit_info["training_cases"])
        for m in models.values()
        if "training_cases" in (m.fit_info or {})
    ]
    return set.union(*ids) if ids else None


def evaluation_sets(scored: pd.DataFrame, models: dict[str, FittedModel]) -> dict[str, Any]:
    """Labelled scored rows per set of :data:`EVALUATION_SETS`: the training split cut into
    the models' own training cases and those added since (``training_new``)."""
    known = scored[scored["label"].notna()]
    trained = trained_on(models)
    sets = {}
    for name in EVALUATION_SETS:
        split = "training" if name == "training_new" else name
        rows = known[known["split"] == split]
        if split == "training" and trained is not None:
            mine = rows.index.isin(list(trained))
            rows = rows[~mine] if name == "training_new" else rows[mine]
        elif name == "training_new":
            continue
        if len(rows):
            sets[name] = rows
    return sets


def _two_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def _outcome(rows: pd.DataFrame, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the model's linear predictor."""
    return rows["label"].astype(int).to_numpy(), rows[f"lp_{model}"].to_numpy()


def _intervals(values: dict[str, Any]) -> dict[str, Any]:
    """The metrics' ``[lo, hi]`` lists as (lo, hi) tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _set_metrics(y: np.ndarray, lp: np.ndarray, cutoff: float) -> ModelSetMetrics:
    """Metrics on the linear predictor ``lp`` at ``cutoff`` (its scale), Brier on expit."""
    metrics = model_set_metrics(y, expit(lp), cutoff, linear_predictor=lp)
    return ModelSetMetrics(**_intervals(metrics))


def _roc(y: np.ndarray, lp: np.ndarray) -> RocCurve:
    """The ROC curve (sklearn's, intermediate points dropped); empty for a single class."""
    n, n_pos = int(y.size), int(y.sum())
    if not _two_classes(y):
        return RocCurve((), (), n, n_pos)
    fpr, tpr, _ = roc_curve(y, lp, drop_intermediate=True)
    return RocCurve(tuple(fpr.tolist()), tuple(tpr.tolist()), n, n_pos)


def _calibration_summary(y: np.ndarray, lp: np.ndarray) -> Calibration:
    cal = calibration(y, expit(lp), linear_predictor=lp)
    curve = cal["reliability"][["mean_predicted", "observed_fraction", "count"]]
    return Calibration(
        n=cal["n"],
        intercept=cal["intercept"],
        slope=cal["slope"],
        brier=cal["brier"],
        curve=tuple(
            ReliabilityBin(r["mean_predicted"], r["observed_fraction"], r["count"])
            for r in curve.to_dict("records")
        ),
    )


def _net_benefit(y: np.ndarray, lp: np.ndarray) -> tuple[NetBenefit, ...]:
    return tuple(NetBenefit(**r) for r in decision_curve(y, expit(lp)).to_dict("records"))


def evaluate(
    models: dict[str, FittedModel],
    data: FeatureData,
    run_id: str,
    kind: str,
    cohort_flow: CohortFlow,
    versions: dict[str, str] | None = None,
    drift_resamples: int = 500,
    seed: int = 0,
) -> Evaluation:
    """Every number of the run's report (see :class:`~tasks.evaluation.results.Evaluation`).

    Parameters
    ----------
    models : the fitted models by name (thresholds learned on training)
    data : the feature matrices and cases (label, split, site) to score
    run_id, kind : the flow run's id and kind (``"retrain"``, ``"validate"``)
    cohort_flow : the report's cohort counts (:func:`cohort_flow_counts`)
    versions : added to the data's lineage (the CNN or champion version)
    drift_resamples, seed : the drift null's permutations and their seed
    """
    scored = predictions(models, data)
    splits = evaluation_sets(scored, models)
    metrics: dict[str, dict[str, ModelSetMetrics]] = {}
    cal: dict[str, dict[str, Calibration]] = {}
    curves: dict[str, dict[str, tuple[NetBenefit, ...]]] = {}
    roc: dict[str, dict[str, RocCurve]] = {}
    for name, model in models.items():
        metrics[name], cal[name], curves[name], roc[name] = {}, {}, {}, {}
        for split, rows in splits.items():
            y, prob = _outcome(rows, name)
            metrics[name][split] = _set_metrics(y, prob, model.cutoff)
            roc[name][split] = _roc(y, prob)
            if _two_classes(y):
                cal[name][split] = _calibration_summary(y, prob)
                curves[name][split] = _net_benefit(y, prob)
    delong: dict[str, dict[str, DelongTest]] = {}
    for split, rows in splits.items():
        y = rows["label"].astype(int).to_numpy()
        if not _two_classes(y):
            continue
        delong[split] = {
            f"{a}_vs_{b}": DelongTest(
                **_intervals(delong_test(y, rows[f"lp_{a}"].to_numpy(), rows[f"lp_{b}"].to_numpy()))
            )
            for a, b in COMPARISONS
            if a in models and b in models
        }
    return Evaluation(
        run_id=run_id,
        kind=kind,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        models=metrics,
        per_site=per_site(splits, models),
        delong=delong,
        calibration=cal,
        decision_curves=curves,
        roc=roc,
        thresholds={name: float(m.threshold) for name, m in models.items()},
        selected_features={
            name: {str(k): float(v) for k, v in m.selected_features().items()}
            for name, m in models.items()
        },
        notes=_notes(models, data, splits),
        drift=site_drift(
            models.get("COMB") or next(iter(models.values())), data, drift_resamples, seed=seed
        ),
        cohort_flow=cohort_flow,
        versions={**data.lineage, **(versions or {})},
        model_fits={name: _model_fit(m) for name, m in models.items()},
        decision_sets=dict(DECISION_SETS),
    )


def _model_fit(model: FittedModel) -> dict[str, Any]:
    """How a model was fitted, for the report (without its list of training cases)."""
    info = {k: v for k, v in (model.fit_info or {}).items() if k != "training_cases"}
    info["intercept"] = float(model.pipeline.named_steps["logit"].intercept_[0])
    info["threshold_probability"] = float(model.threshold)
    info["threshold_linear_predictor"] = model.cutoff
    return info


def _notes(
    models: dict[str, FittedModel], data: FeatureData, sets: dict[str, Any]
) -> tuple[str, ...]:
    notes = [_icc_note(models, data)]
    for name, m in models.items():
        lasso = (m.fit_info or {}).get("lasso")
        if lasso and lasso["fallback"]:
            notes.append(
                f"{name}: the LASSO {lasso['rule']} rule selected no feature; the strongest "
                f"penalty selecting one was used instead (C={lasso['C']:.4g} instead of "
                f"{lasso['C_rule']:.4g}), {lasso['selected']} feature(s)"
            )
    if "training_new" in sets:
        notes.append(
            f"training_new: {len(sets['training_new'])} labelled training-split cases added "
            "after the scored model was fitted (it never saw them)"
        )
    elif trained_on(models) is None:
        notes.append(
            "the scored model did not record its training cases: 'training' is the "
            "current training split, which may hold cases it never saw"
        )
    return tuple(notes)


def _icc_note(models: dict[str, FittedModel], data: FeatureData) -> str:
    """Which repeat sets the ICC filter used, with n per set, if any (a note of the report)."""
    info = next((m.fit_info["icc"] for m in models.values() if "icc" in (m.fit_info or {})), None)
    training = data.cases.index[data.cases["split"] == "training"]
    counts = info["n_per_set"] if info else data.repeat_counts(training)
    least = info["min_repeats"] if info else None
    sizes = ", ".join(f"{k}: n={v}" for k, v in counts.items()) or "none"
    need = f" (a set needs >= {least} training cases)" if least else ""
    if not any(m.icc_applied for m in models.values()):
        return f"ICC filter NOT applied: too few repeat cases in training{need}; {sizes}"
    used = ", ".join(info["sets_used"]) if info else icc_source(data.pairs(training))
    source = info["source"] if info else icc_source(data.pairs(training))
    return f"ICC filter on {source} (sets used: {used}){need}; repeat cases in training: {sizes}"


def cohort_flow_counts(store: FeatureStore) -> CohortFlow:
    """Cases in, quarantined, per split and site, labelled: the report's data-flow box."""
    cohort = current_cohort(store.read("cohort"))
    quarantine = store.read("quarantine")
    reasons: dict[str, int] = {}
    if not quarantine.empty:
        # The reason's kind, without the case-specific detail after the first colon.
        kinds = quarantine["reason"].fillna("").str.split(":").str[0].str.slice(0, 80)
        counts = quarantine.groupby(kinds)["case_id"].nunique()
        reasons = {str(k): int(v) for k, v in counts.items()}
    by_split = cohort.groupby("split") if not cohort.empty else None
    return CohortFlow(
        cases_in=int(len(cohort)),
        quarantined=int(quarantine["case_id"].nunique()) if not quarantine.empty else 0,
        per_split={str(k): int(v) for k, v in cohort["split"].value_counts().items()},
        per_site={str(k): int(v) for k, v in cohort["site"].value_counts().items()},
        labelled=int(cohort["label"].notna().sum()),
        unlabelled=int(cohort["label"].isna().sum()),
        exam_dates={
            str(k): (_date(g["exam_date"].min()), _date(g["exam_date"].max()))
            for k, g in (by_split or [])
        },
        manifests={
            str(k): tuple(sorted(map(str, g["manifest"].dropna().unique())))
            for k, g in (by_split or [])
        },
        quarantine_reasons=reasons,
        patients={str(k): int(g["patient_key"].nunique()) for k, g in (by_split or [])},
    )


def _date(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def check_floor(evaluation: Evaluation, floor: float, split: str = "validation") -> Checks:
    """A failed check when COMB's AUC on ``split`` (else testing) is under ``floor``."""
    sets = evaluation.models.get("COMB", {})
    chosen = split if split in sets else "testing"
    auc = sets[chosen].auc if chosen in sets else math.nan
    failed = []
    if not np.isfinite(auc):
        failed.append(f"COMB AUC on {chosen} is undefined (one class or no cases)")
    elif auc < floor:
        failed.append(f"COMB AUC on {chosen} {auc:.3f} is below the floor {floor:.3f}")
    return Checks(auc_floor=floor, split=chosen, auc=auc, passed=not failed, failed=tuple(failed))


def promotion_decision(
    candidate: FittedModel,
    data: FeatureData,
    champion: FittedModel,
    champion_data: FeatureData,
    version: str,
    alpha: float,
    split: str = PROMOTION_SET,
) -> Promotion:
    """Promote unless the candidate's AUC on ``split`` (the internal testing set: the
    external validation set is never used to choose a model, so that it stays an
    independent test) is significantly below the champion's: paired DeLong test on the
    labelled ``split`` cases both can score (each model on its own feature data, on the
    linear predictor), one-sided at ``alpha``; promote without a test when fewer than 10
    such cases or a single class remain."""
    cases = data.cases
    ids = cases.index[(cases["split"] == split) & cases["label"].notna()]
    ids = ids.intersection(champion_data.reader1.index)
    y = cases.loc[ids, "label"].astype(int).to_numpy()
    if len(ids) < 10 or len(np.unique(y)) < 2:
        return Promotion(True, f"too few shared {split} cases ({len(ids)}) to compare")
    test = DelongTest(
        **_intervals(
            delong_test(
                y,
                candidate.decision_function(data.reader1.loc[ids]),
                champion.decision_function(champion_data.reader1.loc[ids]),
            )
        )
    )
    one_sided = test.p / 2 if test.diff < 0 else 1 - test.p / 2
    worse = one_sided < alpha
    verdict = "kept champion" if worse else "promoted"
    reason = (
        f"{verdict}: {split} AUC candidate {test.auc_a:.3f} vs champion v{version} "
        f"{test.auc_b:.3f} (DeLong one-sided p={one_sided:.3f}, n={len(ids)})"
    )
    return Promotion(not worse, reason, test)


def compare_with_champion(
    candidate: FittedModel,
    data: FeatureData,
    current: dict[str, str] | None,
    settings: Settings,
    store: FeatureStore,
    split: str = PROMOTION_SET,
) -> Promotion:
    """:func:`promotion_decision` against the registered champion ``current`` (as
    :func:`tasks.models.registry.champion` gives it; None: promote, there is none yet),
    its COMB model scored on the features it was trained with, at
    ``settings.promote_alpha``."""
    if current is None:
        return Promotion(True, "no champion yet")
    bundle = load_bundle(current["mlflow_run_id"], settings, store)
    lineage = bundle["lineage"]
    theirs = load_features(
        store,
        lineage["params_hash"],
        lineage["cnn_model_version"],
        crossfit=bundle_crossfit(bundle),  # its deep feature as it was fitted on
    )
    return promotion_decision(
        candidate,
        data,
        bundle["models"]["COMB"],
        theirs,
        current["version"],
        settings.promote_alpha,
        split,
    )


def prediction_rows(
    models: dict[str, FittedModel], data: FeatureData, run_id: str, registry_version: str
) -> pd.DataFrame:
    """One ``predictions`` row per scored case: probabilities, the COMB decision, lineage."""
    scored = predictions(models, data).reset_index()
    comb = models["COMB"]
    scored["threshold_COMB"] = comb.threshold
    # The decision on the linear predictor, where the threshold was learned.
    scored["predicted_COMB"] = (scored["lp_COMB"] >= comb.cutoff).astype("int8")
    scored = scored.drop(columns=[c for c in scored if c.startswith("lp_") or c == "patient_key"])
    scored["registry_version"] = registry_version
    scored["cnn_model_version"] = data.lineage["cnn_model_version"]
    scored["params_hash"] = data.lineage["params_hash"]
    scored["run_id"] = run_id
    scored["scored_at"] = pd.Timestamp.now(tz="UTC")
    scored["label"] = scored["label"].astype("Int8")
    return scored


def write_predictions(
    models: dict[str, FittedModel],
    data: FeatureData,
    run_id: str,
    registry_version: str,
    store: FeatureStore,
) -> tuple[int, int]:
    """Score every case into the ``predictions`` table; (cases scored, rows written)."""
    rows = prediction_rows(models, data, run_id, registry_version)
    return len(rows), store.insert_new(PREDICTIONS, rows)


# -- Prefect wrappers ------------------------------------------------------------------------
evaluate_task = task(evaluate, name="evaluate", cache_policy=NO_CACHE)
check_floor_task = task(check_floor, name="check-floor", cache_policy=NO_CACHE)
compare_with_champion_task = task(
    compare_with_champion, name="compare-with-champion", cache_policy=NO_CACHE
)
write_predictions_task = task(write_predictions, name="write-predictions", cache_policy=NO_CACHE)
cohort_flow_counts_task = task(cohort_flow_counts, name="cohort-flow-counts", cache_policy=NO_CACHE)
