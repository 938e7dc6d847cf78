"""The evaluation step on real small data (``sample.py``): every number cross-checked
against the metrics computed directly, the ICC notes, drift, the AUC floor, the promotion
decision, the predictions rows and the cohort counts from a real Delta store."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from deltalake import write_deltalake
from scipy.special import expit
from sklearn.metrics import roc_auc_score, roc_curve

from tasks.config import Settings
from tasks.data.store import FeatureStore
from tasks.evaluation import evaluate as step
from tasks.evaluation.evaluate import (
    check_floor,
    cohort_flow_counts,
    compare_with_champion,
    evaluate,
    prediction_rows,
    promotion_decision,
)
from tasks.evaluation.metrics import delong_test, model_set_metrics
from tasks.evaluation.results import CohortFlow, Evaluation, ModelSetMetrics, Promotion
from tasks.models.features import FeatureData
from tests.tasks.evaluation import sample

SPLITS = ("training", "validation", "testing")


def _rows(data: FeatureData, split: str) -> pd.DataFrame:
    cases = data.cases
    return cases[(cases["split"] == split) & cases["label"].notna()]


def _scores(data, model, rows) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the model's linear predictor (where every number is computed)."""
    y = rows["label"].astype(int).to_numpy()
    return y, model.decision_function(data.reader1.loc[rows.index])


def _evaluate(data, models, **kwargs) -> Evaluation:
    flow = CohortFlow(**sample.COHORT_FLOW)
    return evaluate(models, data, "run-1", "retrain", flow, **kwargs)


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------
def test_every_set_and_site_metric_is_the_metrics_of_its_rows(
    sample_evaluation, feature_data, fitted
):
    ev = sample_evaluation
    assert list(ev.models) == ["ONLY_HF", "ONLY_DF", "COMB"]
    for name, model in fitted.items():
        assert list(ev.models[name]) == list(SPLITS)
        for split in SPLITS:
            y, lp = _scores(feature_data, model, _rows(feature_data, split))
            expected = model_set_metrics(y, expit(lp), model.cutoff, linear_predictor=lp)
            got = ev.models[name][split]
            assert isinstance(got, ModelSetMetrics)
            assert got.n == len(y) and got.auc == expected["auc"]
            assert got.auc_ci == tuple(expected["auc_ci"])
            assert got.sensitivity == expected["sensitivity"] and got.brier == expected["brier"]
            fpr, tpr, _ = roc_curve(y, lp)
            assert ev.roc[name][split].fpr == tuple(fpr) and ev.roc[name][split].n_pos == y.sum()
            assert sum(b.count for b in ev.calibration[name][split].curve) == len(y)
            assert len(ev.decision_curves[name][split]) == 98
    assert ev.thresholds == {name: m.threshold for name, m in fitted.items()}
    assert ev.selected_features["COMB"] == fitted["COMB"].selected_features()
    assert len(ev.selected_features["COMB"]) == 3


def test_delong_compares_comb_with_each_single_family_model(
    sample_evaluation, feature_data, fitted
):
    rows = _rows(feature_data, "validation")
    y, comb = _scores(feature_data, fitted["COMB"], rows)
    _, hf = _scores(feature_data, fitted["ONLY_HF"], rows)
    for split in SPLITS:
        assert list(sample_evaluation.delong[split]) == ["COMB_vs_ONLY_HF", "COMB_vs_ONLY_DF"]
    test = sample_evaluation.delong["validation"]["COMB_vs_ONLY_HF"]
    expected = delong_test(y, comb, hf)
    assert (test.auc_a, test.auc_b, test.p) == (expected["auc_a"], expected["auc_b"], expected["p"])
    # Without ONLY_HF there is nothing to compare COMB with on that side.
    two = {k: fitted[k] for k in ("ONLY_DF", "COMB")}
    assert list(_evaluate(feature_data, two).delong["validation"]) == ["COMB_vs_ONLY_DF"]


def test_single_class_set_has_metrics_but_no_curves_or_tests(feature_data, fitted):
    cases = feature_data.cases.copy()
    cases.loc[(cases["split"] == "testing") & cases["label"].notna(), "label"] = 0.0
    ev = _evaluate(replace(feature_data, cases=cases), fitted)
    comb = ev.models["COMB"]["testing"]
    assert comb.n_pos == 0 and math.isnan(comb.auc) and comb.specificity > 0
    assert not ev.roc["COMB"]["testing"].defined and ev.roc["COMB"]["testing"].n == comb.n
    assert "testing" not in ev.calibration["COMB"]
    assert "testing" not in ev.decision_curves["COMB"]
    assert list(ev.delong) == ["training", "validation"]


def test_lineage_versions_and_creation_time(feature_data, fitted):
    ev = _evaluate(feature_data, fitted, versions={"cnn": "cnn-x"})
    assert ev.versions == {**sample.LINEAGE, "cnn": "cnn-x"}
    assert ev.kind == "retrain" and ev.run_id == "run-1" and ev.checks is None
    created = datetime.fromisoformat(ev.created_at)
    assert created.utcoffset().total_seconds() == 0


def test_icc_notes(feature_data, fitted, sample_evaluation):
    note = sample_evaluation.notes[0]
    assert note.startswith("ICC filter on delineations") and "inter: n=30" in note
    off = {k: replace(m, icc_applied=False) for k, m in fitted.items()}
    note = _evaluate(feature_data, off).notes[0]
    assert note.startswith("ICC filter NOT applied") and "inter: n=30" in note
    training = feature_data.cases.index[feature_data.cases["split"] == "training"][:24]
    reader1 = feature_data.reader1
    perturbed = replace(
        feature_data, X={"reader1": reader1, "perturbed": reader1.loc[training] * 1.01}
    )
    note = _evaluate(perturbed, fitted).notes[0]
    assert note.startswith("ICC filter on perturbed masks") and "perturbed: n=24" in note


def test_drift_per_site_within_each_set_on_the_models_inputs(sample_evaluation, fitted):
    drift = sample_evaluation.drift
    assert list(drift) == ["validation", "testing"]
    assert sorted(drift["validation"]) == ["C"] and sorted(drift["testing"]) == ["A", "B", "D"]
    site_c = drift["validation"]["C"]
    inputs = list(fitted["COMB"].selected_features())
    assert site_c.model == "COMB" and site_c.features == len(inputs) and site_c.n == 60
    # Only the model's selected inputs are tested: the validation site's shifted feature
    # (feature_4, +1.5 SD) is not one of COMB's, so it is not in the table at all.
    assert {t.feature for t in site_c.top} == set(inputs)
    assert "hf:intratumoral:feature_4" not in inputs
    assert [t.psi for t in site_c.top] == sorted((t.psi for t in site_c.top), reverse=True)
    for site in ("A", "B"):  # no shift: nothing flagged
        assert drift["testing"][site].features_flagged == 0
    assert "too few" in drift["testing"]["D"].note  # five cases


def test_per_site_metrics_within_each_set_only_with_enough_cases(sample_evaluation, feature_data):
    per_site = sample_evaluation.per_site
    assert list(per_site) == ["training", "validation", "testing"]
    cases = feature_data.cases[feature_data.cases["label"].notna()]
    for split, by_site in per_site.items():
        for site, by_model in by_site.items():
            rows = cases[(cases["split"] == split) & (cases["site"] == site)]
            m = by_model["COMB"]
            assert m.n == len(rows) and m.n_pos == int(rows["label"].sum())
            assert m.tp + m.fp + m.tn + m.fn == m.n
            enough = m.n >= 20 and min(m.n_pos, m.n_neg) >= 5
            assert m.enough == enough and (math.isfinite(m.auc) == enough)
    d = per_site["testing"]["D"]["COMB"]  # five negatives only
    assert not d.enough and d.note.startswith("too few") and math.isnan(d.auc)
    # A site's training rows never mix with its testing rows.
    a_train = per_site["training"]["A"]["COMB"]
    assert a_train.n == len(cases[(cases["split"] == "training") & (cases["site"] == "A")])


def test_auc_and_calibration_use_the_linear_predictor_without_saturation_ties(feature_data, fitted):
    # Scale COMB's coefficients up so that predict_proba saturates at exactly 1.0.
    comb = fitted["COMB"]
    pipeline = copy.deepcopy(comb.pipeline)
    pipeline.named_steps["logit"].coef_ *= 60
    pipeline.named_steps["logit"].intercept_ *= 60
    strong = replace(comb, pipeline=pipeline, threshold_lp=comb.cutoff * 60)
    rows = _rows(feature_data, "testing")
    y, lp = _scores(feature_data, strong, rows)
    prob = pipeline.predict_proba(feature_data.reader1.loc[rows.index])[:, 1]
    assert len(np.unique(prob)) < len(prob)  # clipping at 1.0 / 0.0 created ties
    assert len(np.unique(lp)) == len(lp)  # the linear predictor has none
    ev = _evaluate(feature_data, {"COMB": strong})
    assert ev.models["COMB"]["testing"].auc == roc_auc_score(y, lp)
    assert ev.models["COMB"]["testing"].auc != roc_auc_score(y, prob)
    cal = ev.calibration["COMB"]["testing"]
    assert cal.slope == pytest.approx(ev.calibration["COMB"]["testing"].slope) and math.isfinite(
        cal.intercept
    )
    assert abs(cal.slope - 1 / 60 * ev_slope(feature_data, comb)) < 1e-6


def ev_slope(data, model) -> float:
    return _evaluate(data, {"COMB": model}).calibration["COMB"]["testing"].slope


def test_training_cases_added_since_the_fit_are_their_own_set(feature_data, fitted):
    training = _rows(feature_data, "training").index
    mine = {"training_cases": list(training[:80])}
    models = {k: replace(m, fit_info=mine) for k, m in fitted.items()}
    ev = _evaluate(feature_data, models)
    assert list(ev.models["COMB"]) == ["training", "training_new", "validation", "testing"]
    assert ev.models["COMB"]["training"].n == 80
    assert ev.models["COMB"]["training_new"].n == len(training) - 80
    assert any(n.startswith("training_new:") for n in ev.notes)


def test_the_report_lists_which_set_served_which_decision(sample_evaluation):
    sets = sample_evaluation.decision_sets
    assert sets["decision threshold (Youden on the linear predictor)"] == "training"
    promotion = next(v for k, v in sets.items() if k.startswith("promotion"))
    assert promotion.startswith("testing")


# ---------------------------------------------------------------------------------------
# AUC floor
# ---------------------------------------------------------------------------------------
def test_check_floor(sample_evaluation):
    auc = sample_evaluation.models["COMB"]["validation"].auc
    ok = check_floor(sample_evaluation, 0.65)
    assert ok.passed and ok.failed == () and ok.split == "validation" and ok.auc == auc
    low = check_floor(sample_evaluation, 0.9)
    assert not low.passed
    assert low.failed == (f"COMB AUC on validation {auc:.3f} is below the floor 0.900",)
    models = {"COMB": {k: v for k, v in sample_evaluation.models["COMB"].items()}}
    del models["COMB"]["validation"]
    fallback = check_floor(replace(sample_evaluation, models=models), 0.65)
    assert fallback.split == "testing" and fallback.auc == models["COMB"]["testing"].auc
    models["COMB"]["testing"] = replace(models["COMB"]["testing"], auc=math.nan)
    undefined = check_floor(replace(sample_evaluation, models=models), 0.65)
    assert not undefined.passed and "undefined" in undefined.failed[0]


# ---------------------------------------------------------------------------------------
# Promotion
# ---------------------------------------------------------------------------------------
def test_promote_when_the_candidate_is_not_worse(feature_data, fitted):
    comb, only_df = fitted["COMB"], fitted["ONLY_DF"]
    same = promotion_decision(comb, feature_data, comb, feature_data, "4", 0.05)
    assert same.promote and same.delong.diff == 0.0 and same.delong.p == 1.0
    # By default on the internal testing set, never on the external validation set.
    assert same.reason.startswith("promoted: testing AUC candidate")
    assert "champion v4" in same.reason and "n=38" in same.reason
    better = promotion_decision(comb, feature_data, only_df, feature_data, "4", 0.05)
    assert better.promote and better.delong.diff > 0
    # Lower on testing, but not significantly: the candidate is not shown worse.
    lower = promotion_decision(only_df, feature_data, comb, feature_data, "4", 0.05, "testing")
    assert lower.promote and lower.delong.diff < 0 and lower.delong.p / 2 >= 0.05


def test_refuse_when_delong_shows_the_candidate_worse(feature_data, fitted):
    comb, only_df = fitted["COMB"], fitted["ONLY_DF"]
    # The DeLong mechanics, on a set where the difference is significant.
    worse = promotion_decision(only_df, feature_data, comb, feature_data, "4", 0.05, "validation")
    assert not worse.promote and worse.reason.startswith("kept champion")
    one_sided = worse.delong.p / 2
    assert worse.delong.diff < 0 and one_sided < 0.05
    assert f"p={one_sided:.3f}" in worse.reason
    # The same evidence at a stricter level is not enough to refuse.
    strict = promotion_decision(
        only_df, feature_data, comb, feature_data, "4", one_sided / 2, "validation"
    )
    assert strict.promote and strict.delong == worse.delong


def test_promote_without_a_test_when_too_few_shared_cases(feature_data, fitted):
    test = _rows(feature_data, "testing").index[:8]
    theirs = replace(feature_data, X={"reader1": feature_data.reader1.loc[test]})
    decision = promotion_decision(fitted["ONLY_DF"], feature_data, fitted["COMB"], theirs, "4", 0.5)
    assert decision == Promotion(True, "too few shared testing cases (8) to compare")


def test_compare_with_champion_without_champion_promotes(feature_data, fitted, tmp_path):
    settings = Settings(store=str(tmp_path))
    decision = compare_with_champion(
        fitted["COMB"], feature_data, None, settings, FeatureStore(settings.store)
    )
    assert decision == Promotion(True, "no champion yet", None)


# ---------------------------------------------------------------------------------------
# Predictions rows and cohort counts
# ---------------------------------------------------------------------------------------
def test_prediction_rows(feature_data, fitted):
    rows = prediction_rows(fitted, feature_data, "run-1", "4")
    assert len(rows) == len(feature_data.cases)  # unlabelled cases are scored too
    assert rows["label"].dtype == "Int8" and rows["label"].isna().sum() == sample.UNLABELLED
    comb = fitted["COMB"]
    lp = comb.decision_function(feature_data.reader1.loc[rows["case_id"]])
    assert (rows["predicted_COMB"] == (lp >= comb.cutoff)).all()
    assert (rows["threshold_COMB"] == comb.threshold).all()
    assert rows["prob_ONLY_HF"].between(0, 1).all()
    assert set(rows["registry_version"]) == {"4"} and set(rows["run_id"]) == {"run-1"}
    assert set(rows["params_hash"]) == {sample.LINEAGE["params_hash"]}
    assert set(rows["cnn_model_version"]) == {sample.LINEAGE["cnn_model_version"]}
    assert str(rows["scored_at"].dt.tz) == "UTC"


def test_write_predictions_stores_each_run_once(feature_data, fitted, tmp_path):
    store = FeatureStore(str(tmp_path / "store"))
    scored, written = step.write_predictions(fitted, feature_data, "run-1", "4", store)
    assert scored == written == len(feature_data.cases)
    # the same run again writes nothing: (run_id, case_id) is the table's key
    assert step.write_predictions(fitted, feature_data, "run-1", "4", store) == (scored, 0)
    assert step.write_predictions(fitted, feature_data, "run-2", "4", store)[1] == scored
    assert store.read("predictions").groupby(["run_id", "case_id"]).size().max() == 1


def test_cohort_flow_counts_from_the_store(tmp_path):
    store = FeatureStore(str(tmp_path / "store"))
    cohort = pd.DataFrame(
        {
            "case_id": ["a", "b", "c", "d", "d"],
            "case_version": ["1", "1", "1", "1", "2"],
            "ingested_at": pd.to_datetime(["2024-01-01"] * 4 + ["2024-02-01"], utc=True),
            "split": ["training", "training", "validation", "testing", "training"],
            "site": ["A", "A", "B", "B", "B"],
            "label": pd.array([1, 0, None, 1, 0], dtype="Int8"),
            "exam_date": ["2023-01-02", "2023-03-01", "2023-02-01", "2023-01-05", "2023-04-01"],
            "manifest": "m.csv",
            "patient_key": ["p1", "p1", "p2", "p3", "p3"],
        }
    )
    write_deltalake(store.uri("cohort"), cohort)
    counts = cohort_flow_counts(store)
    # Case d counts once, in its latest version; no quarantine table yet.
    assert counts == CohortFlow(
        cases_in=4,
        quarantined=0,
        per_split={"training": 3, "validation": 1},
        per_site={"A": 2, "B": 2},
        labelled=3,
        unlabelled=1,
        exam_dates={"training": ("2023-01-02", "2023-04-01"), "validation": ("2023-02-01",) * 2},
        manifests={"training": ("m.csv",), "validation": ("m.csv",)},
        quarantine_reasons={},
        patients={"training": 2, "validation": 1},
    )
    quarantine = pd.DataFrame(
        {"case_id": ["x", "x", "y"], "reason": ["file not found", "file not found", "bad: 1"]}
    )
    write_deltalake(store.uri("quarantine"), quarantine)
    counts = cohort_flow_counts(store)
    assert counts.quarantined == 2 and counts.quarantine_reasons == {"bad": 1, "file not found": 1}


@pytest.mark.parametrize(
    "wrapper, fn, name",
    [
        (step.evaluate_task, evaluate, "evaluate"),
        (step.check_floor_task, check_floor, "check-floor"),
        (step.compare_with_champion_task, compare_with_champion, "compare-with-champion"),
        (step.write_predictions_task, step.write_predictions, "write-predictions"),
        (step.cohort_flow_counts_task, cohort_flow_counts, "cohort-flow-counts"),
    ],
)
def test_prefect_tasks_wrap_the_steps(wrapper, fn, name):
    assert wrapper.fn is fn and wrapper.name == name


@pytest.mark.slow
def test_tasks_pass_the_typed_evaluation_in_a_flow(prefect_api, feature_data, fitted, tmp_path):
    from prefect import flow

    from tasks.evaluation.report import write_report_task

    @flow(name="evaluate-and-report")
    def run() -> tuple[Evaluation, dict[str, str]]:
        flow_counts = CohortFlow(**sample.COHORT_FLOW)
        evaluation = step.evaluate_task(fitted, feature_data, "r1", "validate", flow_counts)
        evaluation = evaluation.with_checks(step.check_floor_task(evaluation, 0.99))
        return evaluation, write_report_task(evaluation, str(tmp_path / "r1"))

    evaluation, report = run()
    assert isinstance(evaluation, Evaluation) and not evaluation.checks.passed
    assert report["json"] == str(tmp_path / "r1" / "report.json")
    written = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert written["checks"]["failed"] == list(evaluation.checks.failed)
