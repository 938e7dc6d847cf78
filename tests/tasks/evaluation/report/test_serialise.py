"""report.json and the metrics table: shape, confidence intervals, NaN handling, and the
same bytes as before the typed contract for a fixed evaluation."""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import replace
from pathlib import Path

from tasks.evaluation.report import write_report
from tasks.evaluation.report.serialise import metrics_table, plain, report_json
from tasks.evaluation.results import Checks, FeaturePsi
from tests.tasks.evaluation import sample
from tests.tasks.evaluation.report.simulated import EVIL, MODELS, SETS, build_evaluation

BEFORE = Path(__file__).parent.parent / "data" / "report.json"


def strict_loads(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_report_json_shape_and_cis(evaluation):
    snapshot = pickle.dumps(evaluation)
    out = strict_loads(json.dumps(report_json(evaluation), allow_nan=False))
    assert {"models", "delong", "selected_features", "roc", "disclaimer"} <= set(out)
    assert set(out["models"]) == set(MODELS)
    for model in MODELS:
        assert set(out["models"][model]) == set(SETS)
        for s in SETS:
            m = out["models"][model][s]
            assert {
                "auc",
                "auc_ci",
                "accuracy",
                "sensitivity",
                "specificity",
                "ppv",
                "npv",
                "n",
            } <= set(m)
            assert isinstance(m["n"], int)
            for name in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv"):
                lo, hi = m[f"{name}_ci"]
                assert lo <= m[name] <= hi, (model, s, name)
    assert out["delong"]["validation"]["COMB_vs_ONLY_HF"]["p"] is not None
    assert out["selected_features"]["COMB"][EVIL] == 0.05
    assert out["drift"]["validation"]["C"]["features_flagged"] == 1
    assert out["drift"]["validation"]["C"]["critical"] == 0.35
    site = out["per_site"]["training"]["A"]["COMB"]
    assert {"auc", "auc_ci", "n", "tp", "fp", "tn", "fn", "enough"} <= set(site)
    tripod = out["tripod"]
    assert tripod["guideline"].startswith("TRIPOD+AI") and tripod["not_done"]
    assert set(tripod["sample_size"]) == {"training", "validation", "testing"}
    assert out["checks"] == {
        "auc_floor": 0.65,
        "set": "validation",
        "auc": 0.7,
        "passed": True,
        "failed": [],
    }
    # ROC curves that start at (0, 0) and end at (1, 1).
    curve = out["roc"]["COMB"]["validation"]
    assert "prob" not in curve
    assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1 and len(curve["fpr"]) == len(curve["tpr"])
    # The input is left as it was.
    assert pickle.dumps(evaluation) == snapshot


def test_nan_and_inf_become_null():
    ev = build_evaluation(single_class_testing=True)
    test = ev.delong["validation"]["COMB_vs_ONLY_HF"]
    ev.delong["validation"]["COMB_vs_ONLY_HF"] = replace(test, z=math.inf)
    out = report_json(ev)
    text = json.dumps(out, allow_nan=False)  # raises on any NaN left
    assert "NaN" not in text and "Infinity" not in text
    m = strict_loads(text)["models"]["COMB"]["testing"]
    assert m["auc"] is None and m["auc_ci"] == [None, None]
    assert m["sensitivity"] is None and m["specificity"] is not None
    assert out["roc"]["COMB"]["testing"] is None
    assert out["delong"]["validation"]["COMB_vs_ONLY_HF"]["z"] is None
    assert out["calibration"]["COMB"]["testing"]["slope"] is None


def test_checks_only_when_set_and_key_order():
    ev = build_evaluation()
    without = report_json(replace(ev, checks=None))
    assert "checks" not in without
    keys = list(report_json(ev))
    assert keys[-4:] == ["checks", "roc", "tripod", "disclaimer"]
    assert keys[:4] == ["run_id", "kind", "created_at", "models"]


def test_plain_converts_dataclasses_tuples_and_non_finite():
    checks = Checks(auc_floor=0.65, split="testing", auc=math.nan, passed=False, failed=("a",))
    assert plain(checks) == {
        "auc_floor": 0.65,
        "set": "testing",
        "auc": None,
        "passed": False,
        "failed": ["a"],
    }
    assert plain({1: (FeaturePsi("f", -math.inf), 2)}) == {
        "1": [{"feature": "f", "psi": None, "p": None, "flagged": False}, 2]
    }


def test_metrics_table_rows(evaluation):
    rows = metrics_table(evaluation)
    assert len(rows) == len(MODELS) * len(SETS)
    assert [r["model"] for r in rows[:3]] == ["ONLY_HF"] * 3
    assert [r["set"] for r in rows[:3]] == list(SETS)
    keys = [
        "model",
        "set",
        "n",
        "auc",
        "auc_lo",
        "auc_hi",
        "accuracy",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
    ]
    for row in rows:
        assert list(row) == keys
        assert row["auc_lo"] <= row["auc"] <= row["auc_hi"]
        assert all(row[k] == round(row[k], 3) for k in keys[3:])
    json.dumps(rows, allow_nan=False)

    models = {m: dict(by_split) for m, by_split in evaluation.models.items()}
    del models["ONLY_DF"]["testing"]
    models["COMB"]["testing"] = replace(models["COMB"]["testing"], auc=math.nan)
    rows = metrics_table(replace(evaluation, models=models))
    assert len(rows) == 8
    comb_test = next(r for r in rows if (r["model"], r["set"]) == ("COMB", "testing"))
    assert comb_test["auc"] is None


def test_report_json_same_bytes_as_before_the_typed_contract(
    sample_evaluation, feature_data, fitted, tmp_path
):
    # data/report.json was written from the same sample input, evaluated as a validate run
    # (regenerated when report.json gained per-set sites, calibrated drift, model fits,
    # decision sets, the TRIPOD+AI section, and then the harmonisation comparison, its
    # decision set and the deep-feature mode in TRIPOD): any later change to the numbers
    # shows here.
    uris = write_report(sample_evaluation, str(tmp_path / "validate"))
    assert Path(uris["json"]).read_bytes() == BEFORE.read_bytes()
    # A retrain run has no checks: the same document without them.
    retrain = sample.evaluation(feature_data, fitted, "retrain")
    out = report_json(retrain)
    before = json.loads(BEFORE.read_text())
    del before["checks"]
    before["kind"] = "retrain"
    del before["versions"]["champion"]
    before["versions"]["cnn"] = sample.LINEAGE["cnn_model_version"]
    assert json.dumps(out, indent=2) == json.dumps(before, indent=2)
