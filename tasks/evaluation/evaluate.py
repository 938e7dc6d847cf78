"""Evaluation step: every number the report shows, from fitted models and feature data.

Per model x set (training, external validation, testing) and per site: AUC with DeLong CI,
accuracy / sensitivity / specificity / PPV / NPV with Wilson CIs at the training Youden
threshold, Brier; DeLong paired tests COMB vs ONLY_HF and COMB vs ONLY_DF; ROC,
calibration and decision curves; feature drift (PSI) per site against training. Returns an
:class:`~tasks.evaluation.results.Evaluation`; :func:`evaluate` reads nothing and writes
nothing, the report step renders its result.

Also here: the validate flow's AUC floor (:func:`check_floor`) and ``predictions`` rows
(:func:`prediction_rows`), the retrain flow's promotion decision
(:func:`compare_with_champion`) and the cohort counts of the report (:func:`cohort_flow_counts`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn.metrics import roc_curve

from tasks.config import Settings
from tasks.data.ingest import current_cohort
from tasks.data.schema import SPLITS
from tasks.data.store import FeatureStore
from tasks.data.tables import PREDICTIONS
from tasks.evaluation.metrics import (
    calibration,
    decision_curve,
    delong_test,
    model_set_metrics,
    psi_table,
)
from tasks.evaluation.results import (
    Calibration,
    Checks,
    CohortFlow,
    DelongTest,
    Evaluation,
    FeaturePsi,
    ModelSetMetrics,
    NetBenefit,
    Promotion,
    ReliabilityBin,
    RocCurve,
    SiteDrift,
)
from tasks.models.features import FeatureData, icc_source, load_features
from tasks.models.pipelines import FittedModel
from tasks.models.registry import load_bundle

COMPARISONS = (("COMB", "ONLY_HF"), ("COMB", "ONLY_DF"))


def predictions(models: dict[str, FittedModel], data: FeatureData) -> pd.DataFrame:
    """Probability of every model for every case with features (labelled or not)."""
    X = data.reader1
    out = data.cases.copy()
    for name, model in models.items():
        out[f"prob_{name}"] = model.predict_proba(X)
    return out


def _two_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def _outcome(rows: pd.DataFrame, model: str) -> tuple[np.ndarray, np.ndarray]:
    return rows["label"].astype(int).to_numpy(), rows[f"prob_{model}"].to_numpy()


def _intervals(values: dict[str, Any]) -> dict[str, Any]:
    """The metrics' ``[lo, hi]`` lists as (lo, hi) tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _set_metrics(y: np.ndarray, prob: np.ndarray, threshold: float) -> ModelSetMetrics:
    return ModelSetMetrics(**_intervals(model_set_metrics(y, prob, threshold)))


def _roc(y: np.ndarray, prob: np.ndarray) -> RocCurve:
    """The ROC curve (sklearn's, intermediate points dropped); empty for a single class."""
    n, n_pos = int(y.size), int(y.sum())
    if not _two_classes(y):
        return RocCurve((), (), n, n_pos)
    fpr, tpr, _ = roc_curve(y, prob, drop_intermediate=True)
    return RocCurve(tuple(fpr.tolist()), tuple(tpr.tolist()), n, n_pos)


def _calibration_summary(y: np.ndarray, prob: np.ndarray) -> Calibration:
    cal = calibration(y, prob)
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


def _net_benefit(y: np.ndarray, prob: np.ndarray) -> tuple[NetBenefit, ...]:
    return tuple(NetBenefit(**r) for r in decision_curve(y, prob).to_dict("records"))


def evaluate(
    models: dict[str, FittedModel],
    data: FeatureData,
    run_id: str,
    kind: str,
    cohort_flow: CohortFlow,
    versions: dict[str, str] | None = None,
) -> Evaluation:
    """Every number of the run's report (see :class:`~tasks.evaluation.results.Evaluation`).

    Parameters
    ----------
    models : the fitted models by name (thresholds learned on training)
    data : the feature matrices and cases (label, split, site) to score
    run_id, kind : the flow run's id and kind (``"retrain"``, ``"validate"``)
    cohort_flow : the report's cohort counts (:func:`cohort_flow_counts`)
    versions : added to the data's lineage (the CNN or champion version)
    """
    scored = predictions(models, data)
    known = scored[scored["label"].notna()]
    splits = {s: known[known["split"] == s] for s in SPLITS if (known["split"] == s).any()}
    metrics: dict[str, dict[str, ModelSetMetrics]] = {}
    cal: dict[str, dict[str, Calibration]] = {}
    curves: dict[str, dict[str, tuple[NetBenefit, ...]]] = {}
    roc: dict[str, dict[str, RocCurve]] = {}
    for name, model in models.items():
        metrics[name], cal[name], curves[name], roc[name] = {}, {}, {}, {}
        for split, rows in splits.items():
            y, prob = _outcome(rows, name)
            metrics[name][split] = _set_metrics(y, prob, model.threshold)
            roc[name][split] = _roc(y, prob)
            if _two_classes(y):
                cal[name][split] = _calibration_summary(y, prob)
                curves[name][split] = _net_benefit(y, prob)
    per_site = {
        name: {
            str(site): _set_metrics(*_outcome(rows, name), model.threshold)
            for site, rows in known.groupby("site")
        }
        for name, model in models.items()
    }
    delong: dict[str, dict[str, DelongTest]] = {}
    for split, rows in splits.items():
        y = rows["label"].astype(int).to_numpy()
        if not _two_classes(y):
            continue
        delong[split] = {
            f"{a}_vs_{b}": DelongTest(
                **_intervals(
                    delong_test(y, rows[f"prob_{a}"].to_numpy(), rows[f"prob_{b}"].to_numpy())
                )
            )
            for a, b in COMPARISONS
            if a in models and b in models
        }
    return Evaluation(
        run_id=run_id,
        kind=kind,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        models=metrics,
        per_site=per_site,
        delong=delong,
        calibration=cal,
        decision_curves=curves,
        roc=roc,
        thresholds={name: float(m.threshold) for name, m in models.items()},
        selected_features={
            name: {str(k): float(v) for k, v in m.selected_features().items()}
            for name, m in models.items()
        },
        notes=(_icc_note(models, data),),
        drift=drift(models.get("COMB") or next(iter(models.values())), data),
        cohort_flow=cohort_flow,
        versions={**data.lineage, **(versions or {})},
    )


def _icc_note(models: dict[str, FittedModel], data: FeatureData) -> str:
    """Which repeat delineations the ICC filter used, if any (a note of the report)."""
    pairs = data.pairs(data.cases.index[data.cases["split"] == "training"])
    if not any(m.icc_applied for m in models.values()):
        return (
            "ICC filter NOT applied: the training cases have no reader-2 or repeat delineations "
            "and no perturbed masks (SLN_PERTURB_REPEATS)"
        )
    if icc_source(pairs) == "perturbed masks":
        cases = len(next(iter(pairs.values()))[0])
        return (
            f"ICC filter on perturbed masks (erosion/dilation + contour noise) of {cases} "
            "training cases: the cohort has no repeat delineations among its training cases"
        )
    sizes = ", ".join(f"{k} {len(v[0])} training cases" for k, v in pairs.items())
    return f"ICC filter on repeat delineations ({sizes})"


def drift(model: FittedModel, data: FeatureData, top: int = 5) -> dict[str, SiteDrift]:
    """PSI of the model's input features (after its feature steps) per site vs training."""
    X = model.pipeline[:-2].transform(data.reader1)
    training = data.cases["split"] == "training"
    reference = X[training.to_numpy()]
    out = {}
    for site, rows in data.cases.groupby("site"):
        other = X.loc[rows.index]
        if len(other) < 10:
            continue
        table = psi_table(reference, other).sort_values(ascending=False)
        out[str(site)] = SiteDrift(
            n=int(len(other)),
            psi_max=float(table.max()),
            psi_mean=float(table.mean()),
            features_over_0_25=int((table > 0.25).sum()),
            top=tuple(FeaturePsi(str(f), float(v)) for f, v in table.head(top).items()),
        )
    return out


def cohort_flow_counts(store: FeatureStore) -> CohortFlow:
    """Cases in, quarantined, per split and site, labelled: the report's data-flow box."""
    cohort = current_cohort(store.read("cohort"))
    quarantine = store.read("quarantine")
    return CohortFlow(
        cases_in=int(len(cohort)),
        quarantined=int(quarantine["case_id"].nunique()) if not quarantine.empty else 0,
        per_split={str(k): int(v) for k, v in cohort["split"].value_counts().items()},
        per_site={str(k): int(v) for k, v in cohort["site"].value_counts().items()},
        labelled=int(cohort["label"].notna().sum()),
        unlabelled=int(cohort["label"].isna().sum()),
    )


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
    split: str = "validation",
) -> Promotion:
    """Promote unless the candidate's AUC on ``split`` is significantly below the
    champion's: paired DeLong test on the labelled ``split`` cases both can score (each
    model on its own feature data), one-sided at ``alpha``; promote without a test when
    fewer than 10 such cases or a single class remain."""
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
                candidate.predict_proba(data.reader1.loc[ids]),
                champion.predict_proba(champion_data.reader1.loc[ids]),
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
    split: str = "validation",
) -> Promotion:
    """:func:`promotion_decision` against the registered champion ``current`` (as
    :func:`tasks.models.registry.champion` gives it; None: promote, there is none yet),
    its COMB model scored on the features it was trained with, at
    ``settings.promote_alpha``."""
    if current is None:
        return Promotion(True, "no champion yet")
    bundle = load_bundle(current["mlflow_run_id"], settings, store)
    lineage = bundle["lineage"]
    theirs = load_features(store, lineage["params_hash"], lineage["cnn_model_version"])
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
    scored["predicted_COMB"] = (scored["prob_COMB"] >= comb.threshold).astype("int8")
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
