"""The per-run report: JSON shape, HTML sections, escaping, NaN handling, S3 writing.

The evaluation dict is built from simulated predictions of three models on three sets, with
the metrics computed here by hand (sklearn AUC, Hanley-McNeil CI, Wilson CIs), so the test
does not depend on the metrics module.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re

import fsspec
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from tasks.evaluation.report import (
    DISCLAIMER,
    metrics_table,
    render_html,
    report_json,
    write_report,
)

MODELS = ("ONLY_HF", "ONLY_DF", "COMB")
SETS = ("training", "validation", "testing")
EVIL = "<script>alert('x')</script>"
Z = 1.959964


# ---------------------------------------------------------------------------------------
# Simulated evaluation
# ---------------------------------------------------------------------------------------
def _wilson(k: int, n: int) -> tuple[float, list[float]]:
    if n == 0:
        return math.nan, [math.nan, math.nan]
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    return p, [centre - half, centre + half]


def _auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 0.0))


def _m(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    pred = p >= threshold
    tp, fp = int(np.sum(pred & (y == 1))), int(np.sum(pred & (y == 0)))
    fn, tn = int(np.sum(~pred & (y == 1))), int(np.sum(~pred & (y == 0)))
    out = {"n": np.int64(y.size), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, k, n in (
        ("accuracy", tp + tn, y.size),
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
    ):
        out[name], out[f"{name}_ci"] = _wilson(k, n)
    if 0 < y.sum() < y.size:
        auc = float(roc_auc_score(y, p))
        se = _auc_se(auc, int(y.sum()), int(y.size - y.sum()))
        out["auc"] = np.float64(auc)  # numpy scalars must be converted
        out["auc_ci"] = np.array([max(0.0, auc - Z * se), min(1.0, auc + Z * se)])
    else:
        out["auc"], out["auc_ci"] = math.nan, [math.nan, math.nan]
    out["brier"] = float(np.mean((p - y) ** 2))
    return out


def _calibration(y: np.ndarray, p: np.ndarray) -> dict:
    edges = np.quantile(p, np.linspace(0, 1, 6))
    idx = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, 4)
    curve = [
        {
            "mean_predicted": float(p[idx == b].mean()),
            "observed": float(y[idx == b].mean()),
            "count": int(np.sum(idx == b)),
        }
        for b in range(5)
        if np.any(idx == b)
    ]
    lp = np.log(p / (1 - p))
    single = y.min() == y.max()
    slope = math.nan if single else float(np.polyfit(lp, y - p, 1)[0] + 1)
    intercept = math.nan if single else float(np.log(y.mean() / (1 - y.mean())) - lp.mean())
    return {
        "intercept": intercept,
        "slope": slope,
        "brier": float(np.mean((p - y) ** 2)),
        "curve": curve,
    }


def _decision(y: np.ndarray, p: np.ndarray) -> list[dict]:
    rows, n, prev = [], y.size, y.mean()
    for t in np.arange(0.01, 0.99, 0.01):
        odds = t / (1 - t)
        tp, fp = np.sum((p >= t) & (y == 1)), np.sum((p >= t) & (y == 0))
        rows.append(
            {
                "threshold": float(t),
                "net_benefit_model": tp / n - fp / n * odds,
                "net_benefit_all": prev - (1 - prev) * odds,
                "net_benefit_none": 0.0,
            }
        )
    return rows


def _youden(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, thr = roc_curve(y, p)
    return float(min(thr[np.argmax(tpr - fpr)], 1.0))


def _delong_like(y: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> dict:
    if y.min() == y.max():
        return {
            "auc_a": math.nan,
            "auc_b": math.nan,
            "diff": math.nan,
            "z": math.nan,
            "p": math.nan,
        }
    a, b = roc_auc_score(y, pa), roc_auc_score(y, pb)
    se = math.hypot(_auc_se(a, y.sum(), y.size - y.sum()), _auc_se(b, y.sum(), y.size - y.sum()))
    z = (a - b) / se
    return {"auc_a": a, "auc_b": b, "diff": a - b, "z": z, "p": math.erfc(abs(z) / math.sqrt(2))}


def build_evaluation(seed: int = 3, single_class_testing: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    sizes = {"training": 160, "validation": 90, "testing": 60}
    strength = {"ONLY_HF": 1.0, "ONLY_DF": 0.8, "COMB": 1.5}
    data: dict = {}
    for s, n in sizes.items():
        y = (rng.random(n) < 0.35).astype(int)
        if s == "testing" and single_class_testing:
            y[:] = 0
        site = np.where(rng.random(n) < 0.5, "A", "B") if s != "validation" else np.full(n, "C")
        probs = {
            m: 1 / (1 + np.exp(-(strength[m] * (2 * y - 1) + rng.normal(0, 1.3, n) - 0.6)))
            for m in MODELS
        }
        data[s] = (y, probs, site)
    thresholds = {m: _youden(data["training"][0], data["training"][1][m]) for m in MODELS}
    ev: dict = {
        "run_id": "validate-20240601T120000-ab12",
        "kind": "validate",
        "created_at": "2024-06-01T12:00:00+00:00",
        "models": {
            m: {s: _m(y, pr[m], thresholds[m]) for s, (y, pr, _) in data.items()} for m in MODELS
        },
        "per_site": {
            m: {
                site: _m(
                    data["training"][0][data["training"][2] == site],
                    data["training"][1][m][data["training"][2] == site],
                    thresholds[m],
                )
                for site in ("A", "B")
            }
            for m in MODELS
        },
        "delong": {
            s: {f"COMB_vs_{o}": _delong_like(y, pr["COMB"], pr[o]) for o in ("ONLY_HF", "ONLY_DF")}
            for s, (y, pr, _) in data.items()
        },
        "calibration": {
            m: {s: _calibration(y, pr[m]) for s, (y, pr, _) in data.items()} for m in MODELS
        },
        "decision_curves": {
            m: {s: _decision(y, pr[m]) for s, (y, pr, _) in data.items()} for m in MODELS
        },
        "roc": {
            m: {s: {"y": y.tolist(), "prob": pr[m]} for s, (y, pr, _) in data.items()}
            for m in MODELS
        },
        "thresholds": {m: np.float64(t) for m, t in thresholds.items()},
        "selected_features": {
            "COMB": {
                "hf:intratumoral:original_glcm_Idm": 0.83,
                "df:pc3": -0.4,
                "hf:peritumoral:wavelet-LLH_firstorder_Mean": 1.21,
                EVIL: 0.05,
                "df:pc1": np.float64(-0.9),
            },
            "ONLY_HF": {
                "hf:intratumoral:original_glcm_Idm": 0.7,
                "hf:peritumoral:log-sigma-3-0-mm-3D_glszm_ZoneEntropy": -0.3,
            },
            "ONLY_DF": {"df:pc1": -1.1, "df:pc3": 0.2},
        },
        "cohort_flow": {
            "cases_in": 330,
            "quarantined": 6,
            "with_features": 324,
            "per_split": {s: int(n) for s, n in sizes.items()},
            "per_site": {"A": 220, "B": 0, "C": 90},
            "labelled": 310,
            "unlabelled": 14,
        },
        "versions": {
            "table_versions": {"cohort": 3, "radiomics": 7, "embeddings": 2},
            "params_hash": "9f8e7d6c",
            "cnn_model_version": "cnn-2024-05-01",
            "code_version": "083a71c",
            "models": {m: f"{m.lower()}/4" for m in MODELS},
        },
        "drift": {
            "C": {
                "psi_max": 0.41,
                "psi_mean": 0.07,
                "features_over_0_25": np.int64(3),
                "top": [{"feature": EVIL, "psi": 0.41}, {"feature": "df:pc2", "psi": 0.3}],
            }
        },
        "notes": [
            "ICC filter on reader-2 and repeat delineations of 83 training cases",
            "note with <b>markup</b> & ampersand",
        ],
        "checks": {"auc_floor": 0.65, "passed": True, "failed": []},
    }
    return ev


@pytest.fixture(scope="module")
def evaluation() -> dict:
    return build_evaluation()


@pytest.fixture(scope="module")
def page(evaluation) -> str:
    return render_html(evaluation)


def _strict_loads(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------
def test_report_json_shape_and_cis(evaluation):
    out = _strict_loads(json.dumps(report_json(evaluation), allow_nan=False))
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
    assert out["drift"]["C"]["features_over_0_25"] == 3
    # ROC inputs replaced by curves that start at (0, 0) and end at (1, 1).
    curve = out["roc"]["COMB"]["validation"]
    assert "prob" not in curve
    assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1 and len(curve["fpr"]) == len(curve["tpr"])
    # The input is left as it was.
    assert isinstance(evaluation["roc"]["COMB"]["validation"]["prob"], np.ndarray)


def test_nan_and_inf_become_null():
    ev = build_evaluation(single_class_testing=True)
    ev["delong"]["validation"]["COMB_vs_ONLY_HF"]["z"] = math.inf
    out = report_json(ev)
    text = json.dumps(out, allow_nan=False)  # raises on any NaN left
    assert "NaN" not in text and "Infinity" not in text
    m = _strict_loads(text)["models"]["COMB"]["testing"]
    assert m["auc"] is None and m["auc_ci"] == [None, None]
    assert m["sensitivity"] is None and m["specificity"] is not None
    assert out["roc"]["COMB"]["testing"] is None
    assert out["delong"]["validation"]["COMB_vs_ONLY_HF"]["z"] is None
    assert out["calibration"]["COMB"]["testing"]["slope"] is None


# ---------------------------------------------------------------------------------------
# Table artifact
# ---------------------------------------------------------------------------------------
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

    ev = copy.deepcopy(evaluation)
    del ev["models"]["ONLY_DF"]["testing"]
    ev["models"]["COMB"]["testing"]["auc"] = math.nan
    rows = metrics_table(ev)
    assert len(rows) == 8
    comb_test = next(r for r in rows if (r["model"], r["set"]) == ("COMB", "testing"))
    assert comb_test["auc"] is None


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------
SECTIONS = [
    "checks",
    "metrics",
    "per-site",
    "roc",
    "delong",
    "calibration",
    "decision-curves",
    "features",
    "cohort",
    "drift",
    "versions",
    "notes",
]


def test_html_sections_in_order_with_figures(page):
    positions = [page.find(f'id="{s}"') for s in SECTIONS]
    assert all(p > 0 for p in positions), dict(zip(SECTIONS, positions, strict=True))
    assert positions == sorted(positions)
    assert html_escape(DISCLAIMER) in page
    assert page.index("disclaimer") < page.index('id="metrics"')
    # One <img> per figure: ROC, calibration, decision curves, COMB coefficients.
    figures = re.findall(
        r'<figure id="(fig-[a-z]+)"><img [^>]*src="data:image/png;base64,([^"]+)"', page
    )
    assert [f for f, _ in figures] == ["fig-roc", "fig-calibration", "fig-decision", "fig-features"]
    assert page.count("<img") == len(figures)
    for _, data in figures:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in page and "<script" not in page  # self-contained, nothing executable
    assert 'class="check pass"' in page


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_html_escapes_and_content(page, evaluation):
    assert EVIL not in page
    assert html_escape(EVIL) in page
    assert "note with &lt;b&gt;markup&lt;/b&gt; &amp; ampersand" in page
    for model in MODELS:
        assert model in page
    comb = evaluation["models"]["COMB"]["validation"]
    assert f"{comb['auc']:.3f} ({comb['auc_ci'][0]:.3f}–{comb['auc_ci'][1]:.3f})" in page
    assert f"{evaluation['thresholds']['COMB']:.3f}" in page
    # Features sorted by |coef| within the COMB table: 1.21, -0.9, 0.83, -0.4, 0.05.
    block = page[page.index("COMB (5 features)") :]
    block = block[: block.index("</table>")]
    order = ["wavelet-LLH_firstorder_Mean", "df:pc1", "original_glcm_Idm", "df:pc3", EVIL]
    positions = [block.index(html_escape(name)) for name in order]
    assert positions == sorted(positions)
    for text in (
        "9f8e7d6c",
        "cnn-2024-05-01",
        "083a71c",
        "comb/4",
        "Quarantined",
        "External validation",
    ):
        assert text in page


def test_single_class_missing_set_and_failed_checks(tmp_path):
    ev = build_evaluation(single_class_testing=True)
    del ev["models"]["ONLY_DF"]["testing"]
    del ev["roc"]["ONLY_DF"]["testing"]
    del ev["calibration"]["ONLY_DF"]["testing"]
    del ev["drift"]
    ev["checks"] = {
        "auc_floor": 0.65,
        "passed": False,
        "failed": ["COMB validation AUC 0.61 < 0.65", EVIL],
    }
    uris = write_report(ev, str(tmp_path / "nested" / "run"))
    page = (tmp_path / "nested" / "run" / "report.html").read_text(encoding="utf-8")
    assert uris["html"].endswith("report.html") and uris["json"].endswith("report.json")
    assert 'class="check fail"' in page and "COMB validation AUC 0.61 &lt; 0.65" in page
    assert EVIL not in page
    assert 'id="drift"' not in page
    row = re.search(r"<tr><td>COMB</td><td>Testing</td><td>60</td><td><b>([^<]*)</b>", page)
    assert row and row.group(1) == "—"
    assert "<tr><td>ONLY_DF</td><td>Testing</td><td>—</td>" in page
    out = _strict_loads((tmp_path / "nested" / "run" / "report.json").read_text())
    assert out["models"]["COMB"]["testing"]["auc"] is None
    assert "testing" not in out["models"]["ONLY_DF"]


def test_minimal_evaluation_renders():
    ev = {"run_id": "validate-x", "kind": "retrain", "models": {"COMB": {"training": {"n": 0}}}}
    page = render_html(ev)
    assert "No data for this figure" in page and page.count("<img") == 0
    assert 'class="check none"' in page
    assert metrics_table(ev)[0]["auc"] is None
    json.dumps(report_json(ev), allow_nan=False)


def test_write_report_to_s3(evaluation, s3_bucket):
    folder = f"{s3_bucket}/prefix/reports/{evaluation['run_id']}"
    uris = write_report(evaluation, folder)
    assert uris == {"html": f"{folder}/report.html", "json": f"{folder}/report.json"}
    with fsspec.open(uris["json"], "r", encoding="utf-8") as fh:
        out = _strict_loads(fh.read())
    assert out["run_id"] == evaluation["run_id"]
    assert out["models"]["COMB"]["validation"]["n"] == 90
    with fsspec.open(uris["html"], "r", encoding="utf-8") as fh:
        text = fh.read()
    assert text.startswith("<!DOCTYPE html>") and text.count("<img") == 4
