"""Evaluation step: every number the report shows, from fitted models and feature data.

Per model x set (training, external validation, testing) and per site: AUC with DeLong CI,
accuracy / sensitivity / specificity / PPV / NPV with Wilson CIs at the training Youden
threshold, Brier; DeLong paired tests COMB vs ONLY_HF and COMB vs ONLY_DF; calibration
and decision curves; feature drift (PSI) per site against training. Pure: reads nothing,
writes nothing; the report step renders the result.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.data.ingest import current_cohort
from tasks.data.store import FeatureStore
from tasks.evaluation.metrics import (
    calibration,
    decision_curve,
    delong_test,
    model_set_metrics,
    psi_table,
)
from tasks.models.pipelines import SPLITS, FeatureData, FittedModel, icc_source

COMPARISONS = (("COMB", "ONLY_HF"), ("COMB", "ONLY_DF"))


def labelled(data: FeatureData) -> pd.DataFrame:
    return data.cases[data.cases["label"].notna()]


def predictions(models: dict[str, FittedModel], data: FeatureData) -> pd.DataFrame:
    """Probability of every model for every case with features (labelled or not)."""
    X = data.reader1
    out = data.cases.copy()
    for name, model in models.items():
        out[f"prob_{name}"] = model.predict_proba(X)
    return out


def _two_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def evaluate(
    models: dict[str, FittedModel],
    data: FeatureData,
    run_id: str,
    kind: str,
    cohort_flow: dict[str, Any] | None = None,
    versions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The evaluation dict the report renders (see :mod:`tasks.evaluation.report`)."""
    scored = predictions(models, data)
    known = scored[scored["label"].notna()]
    result: dict[str, Any] = {
        "run_id": run_id,
        "kind": kind,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": {},
        "per_site": {},
        "delong": {},
        "calibration": {},
        "decision_curves": {},
        "roc": {},
        "thresholds": {name: float(m.threshold) for name, m in models.items()},
        "selected_features": {name: m.selected_features() for name, m in models.items()},
        "notes": [],
    }
    for name, model in models.items():
        for key in ("models", "calibration", "decision_curves", "roc"):
            result[key][name] = {}
        for split in SPLITS:
            rows = known[known["split"] == split]
            if rows.empty:
                continue
            y = rows["label"].astype(int).to_numpy()
            prob = rows[f"prob_{name}"].to_numpy()
            result["models"][name][split] = model_set_metrics(y, prob, model.threshold)
            result["roc"][name][split] = {"y": y.tolist(), "prob": prob.tolist()}
            if _two_classes(y):
                result["calibration"][name][split] = calibration_summary(y, prob)
                result["decision_curves"][name][split] = decision_curve(y, prob).to_dict("records")
        result["per_site"][name] = {
            str(site): model_set_metrics(
                rows["label"].astype(int).to_numpy(),
                rows[f"prob_{name}"].to_numpy(),
                model.threshold,
            )
            for site, rows in known.groupby("site")
        }
    for split in SPLITS:
        rows = known[known["split"] == split]
        y = rows["label"].astype(int).to_numpy()
        if rows.empty or not _two_classes(y):
            continue
        result["delong"][split] = {
            f"{a}_vs_{b}": delong_test(
                y, rows[f"prob_{a}"].to_numpy(), rows[f"prob_{b}"].to_numpy()
            )
            for a, b in COMPARISONS
            if a in models and b in models
        }
    icc = {name: m.icc_applied for name, m in models.items()}
    pairs = data.pairs(data.cases.index[data.cases["split"] == "training"])
    if any(icc.values()) and icc_source(pairs) == "perturbed masks":
        cases = len(next(iter(pairs.values()))[0])
        result["notes"].append(
            f"ICC filter on perturbed masks (erosion/dilation + contour noise) of {cases} "
            "training cases: the cohort has no repeat delineations among its training cases"
        )
    elif any(icc.values()):
        sizes = ", ".join(f"{k} {len(v[0])} training cases" for k, v in pairs.items())
        result["notes"].append(f"ICC filter on repeat delineations ({sizes})")
    else:
        result["notes"].append(
            "ICC filter NOT applied: the training cases have no reader-2 or repeat delineations "
            "and no perturbed masks (SLN_PERTURB_REPEATS)"
        )
    result["drift"] = drift(models.get("COMB") or next(iter(models.values())), data)
    result["cohort_flow"] = cohort_flow or {}
    result["versions"] = {**data.lineage, **(versions or {})}
    return result


def drift(model: FittedModel, data: FeatureData, top: int = 5) -> dict[str, Any]:
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
        out[str(site)] = {
            "n": int(len(other)),
            "psi_max": float(table.max()),
            "psi_mean": float(table.mean()),
            "features_over_0_25": int((table > 0.25).sum()),
            "top": [{"feature": f, "psi": float(v)} for f, v in table.head(top).items()],
        }
    return out


def calibration_summary(y: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
    cal = calibration(y, prob)
    curve = cal.pop("reliability").rename(columns={"observed_fraction": "observed"})
    cal["curve"] = curve[["mean_predicted", "observed", "count"]].to_dict("records")
    return cal


def cohort_flow_counts(store: FeatureStore) -> dict[str, Any]:
    """Cases in, quarantined, per split and site, labelled: the report's data-flow box."""
    cohort = current_cohort(store.read("cohort"))
    quarantine = store.read("quarantine")
    return {
        "cases_in": int(len(cohort)),
        "quarantined": int(quarantine["case_id"].nunique()) if not quarantine.empty else 0,
        "per_split": {str(k): int(v) for k, v in cohort["split"].value_counts().items()},
        "per_site": {str(k): int(v) for k, v in cohort["site"].value_counts().items()},
        "labelled": int(cohort["label"].notna().sum()),
        "unlabelled": int(cohort["label"].isna().sum()),
    }


def compare_with_champion(
    candidate: FittedModel,
    data: FeatureData,
    current: dict[str, Any] | None,
    settings: Any,
    store: FeatureStore,
    split: str = "validation",
) -> dict[str, Any]:
    """Promote unless the candidate's external-validation AUC is significantly below the
    champion's (paired DeLong on the cases both can score, one-sided at ``promote_alpha``)."""
    from tasks.models.pipelines import load_features
    from tasks.models.registry import load_bundle

    if current is None:
        return {"promote": True, "reason": "no champion yet"}
    bundle = load_bundle(current["mlflow_run_id"], settings, store)
    lineage = bundle["lineage"]
    theirs = load_features(store, lineage["params_hash"], lineage["cnn_model_version"])
    cases = data.cases
    ids = cases.index[(cases["split"] == split) & cases["label"].notna()]
    ids = ids.intersection(theirs.reader1.index)
    y = cases.loc[ids, "label"].astype(int).to_numpy()
    if len(ids) < 10 or len(np.unique(y)) < 2:
        return {"promote": True, "reason": f"too few shared {split} cases ({len(ids)}) to compare"}
    test = delong_test(
        y,
        candidate.predict_proba(data.reader1.loc[ids]),
        bundle["models"]["COMB"].predict_proba(theirs.reader1.loc[ids]),
    )
    one_sided = test["p"] / 2 if test["diff"] < 0 else 1 - test["p"] / 2
    worse = one_sided < settings.promote_alpha
    verdict = "kept champion" if worse else "promoted"
    reason = (
        f"{verdict}: {split} AUC candidate {test['auc_a']:.3f} vs champion v{current['version']} "
        f"{test['auc_b']:.3f} (DeLong one-sided p={one_sided:.3f}, n={len(ids)})"
    )
    return {"promote": not worse, "reason": reason, "delong": test}


# -- Prefect wrappers ------------------------------------------------------------------------
evaluate_task = task(evaluate, name="evaluate", cache_policy=NO_CACHE)
compare_with_champion_task = task(
    compare_with_champion, name="compare-with-champion", cache_policy=NO_CACHE
)


def check_floor(evaluation: dict[str, Any], floor: float, split: str = "validation") -> dict:
    """A failed check when COMB's AUC on ``split`` (else testing) is under ``floor``."""
    sets = evaluation["models"].get("COMB", {})
    chosen = split if split in sets else "testing"
    auc = sets.get(chosen, {}).get("auc", float("nan"))
    failed = []
    if not np.isfinite(auc):
        failed.append(f"COMB AUC on {chosen} is undefined (one class or no cases)")
    elif auc < floor:
        failed.append(f"COMB AUC on {chosen} {auc:.3f} is below the floor {floor:.3f}")
    return {"auc_floor": floor, "set": chosen, "auc": auc, "passed": not failed, "failed": failed}


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
