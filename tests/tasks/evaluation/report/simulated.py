"""A simulated evaluation for the report tests, its numbers computed here by hand.

Three models on three sets from simulated predictions, with the metrics computed in this
module (sklearn AUC and ROC curve, Hanley-McNeil CI, Wilson CIs, hand calibration and net
benefit), so the report tests do not depend on the metrics module or the evaluation step.
Strings meant to be escaped (``EVIL``) sit in feature names, drift and checks.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from tasks.evaluation.results import (
    Calibration,
    Checks,
    CohortFlow,
    DelongTest,
    Evaluation,
    FeaturePsi,
    ModelSetMetrics,
    NetBenefit,
    ReliabilityBin,
    RocCurve,
    SiteDrift,
    SiteMetrics,
)

MODELS = ("ONLY_HF", "ONLY_DF", "COMB")
SETS = ("training", "validation", "testing")
EVIL = "<script>alert('x')</script>"
Z = 1.959964
NAN2 = (math.nan, math.nan)


def _wilson(k: int, n: int) -> tuple[float, tuple[float, float]]:
    if n == 0:
        return math.nan, NAN2
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    return p, (centre - half, centre + half)


def _auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 0.0))


def _site(y: np.ndarray, p: np.ndarray, threshold: float) -> SiteMetrics:
    m = set_metrics(y, p, threshold)
    enough = m.n >= 20 and min(m.n_pos, m.n_neg) >= 5
    auc, ci = (m.auc, m.auc_ci) if enough else (math.nan, (math.nan, math.nan))
    note = "" if enough else "too few"
    return SiteMetrics(m.n, m.n_pos, m.n_neg, m.tp, m.fp, m.tn, m.fn, auc, ci, enough, note)


def set_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> ModelSetMetrics:
    pred = p >= threshold
    tp, fp = int(np.sum(pred & (y == 1))), int(np.sum(pred & (y == 0)))
    fn, tn = int(np.sum(~pred & (y == 1))), int(np.sum(~pred & (y == 0)))
    ratios = {}
    for name, k, n in (
        ("accuracy", tp + tn, y.size),
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
    ):
        ratios[name], ratios[f"{name}_ci"] = _wilson(k, n)
    if 0 < y.sum() < y.size:
        auc = float(roc_auc_score(y, p))
        se = _auc_se(auc, int(y.sum()), int(y.size - y.sum()))
        auc_ci = (max(0.0, auc - Z * se), min(1.0, auc + Z * se))
    else:
        auc, auc_ci = math.nan, NAN2
    return ModelSetMetrics(
        n=int(y.size),
        n_pos=tp + fn,
        n_neg=tn + fp,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        threshold=threshold,
        **ratios,
        auc=auc,
        auc_ci=auc_ci,
        brier=float(np.mean((p - y) ** 2)),
    )


def _calibration(y: np.ndarray, p: np.ndarray) -> Calibration:
    edges = np.quantile(p, np.linspace(0, 1, 6))
    idx = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, 4)
    curve = tuple(
        ReliabilityBin(float(p[idx == b].mean()), float(y[idx == b].mean()), int(np.sum(idx == b)))
        for b in range(5)
        if np.any(idx == b)
    )
    lp = np.log(p / (1 - p))
    single = y.min() == y.max()
    slope = math.nan if single else float(np.polyfit(lp, y - p, 1)[0] + 1)
    intercept = math.nan if single else float(np.log(y.mean() / (1 - y.mean())) - lp.mean())
    return Calibration(int(y.size), intercept, slope, float(np.mean((p - y) ** 2)), curve)


def _decision(y: np.ndarray, p: np.ndarray) -> tuple[NetBenefit, ...]:
    rows, n, prev = [], y.size, y.mean()
    for t in np.arange(0.01, 0.99, 0.01):
        odds = t / (1 - t)
        tp, fp = np.sum((p >= t) & (y == 1)), np.sum((p >= t) & (y == 0))
        model, treat_all = float(tp / n - fp / n * odds), float(prev - (1 - prev) * odds)
        rows.append(NetBenefit(float(t), model, treat_all, 0.0))
    return tuple(rows)


def _roc(y: np.ndarray, p: np.ndarray) -> RocCurve:
    if y.min() == y.max():
        return RocCurve((), (), int(y.size), int(y.sum()))
    fpr, tpr, _ = roc_curve(y, p)
    return RocCurve(tuple(fpr.tolist()), tuple(tpr.tolist()), int(y.size), int(y.sum()))


def _youden(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, thr = roc_curve(y, p)
    return float(min(thr[np.argmax(tpr - fpr)], 1.0))


def _delong_like(y: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> DelongTest:
    if y.min() == y.max():
        return DelongTest(math.nan, math.nan, math.nan, math.nan, math.nan, NAN2)
    a, b = float(roc_auc_score(y, pa)), float(roc_auc_score(y, pb))
    se = math.hypot(_auc_se(a, y.sum(), y.size - y.sum()), _auc_se(b, y.sum(), y.size - y.sum()))
    z = (a - b) / se
    return DelongTest(
        a, b, a - b, z, math.erfc(abs(z) / math.sqrt(2)), (a - b - Z * se, a - b + Z * se)
    )


def build_evaluation(seed: int = 3, single_class_testing: bool = False) -> Evaluation:
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
    y_train, p_train, site_train = data["training"]
    return Evaluation(
        run_id="validate-20240601T120000-ab12",
        kind="validate",
        created_at="2024-06-01T12:00:00+00:00",
        models={
            m: {s: set_metrics(y, pr[m], thresholds[m]) for s, (y, pr, _) in data.items()}
            for m in MODELS
        },
        per_site={
            "training": {
                site: {
                    m: _site(
                        y_train[site_train == site], p_train[m][site_train == site], thresholds[m]
                    )
                    for m in MODELS
                }
                for site in ("A", "B")
            }
        },
        delong={
            s: {f"COMB_vs_{o}": _delong_like(y, pr["COMB"], pr[o]) for o in ("ONLY_HF", "ONLY_DF")}
            for s, (y, pr, _) in data.items()
        },
        calibration={
            m: {s: _calibration(y, pr[m]) for s, (y, pr, _) in data.items()} for m in MODELS
        },
        decision_curves={
            m: {s: _decision(y, pr[m]) for s, (y, pr, _) in data.items()} for m in MODELS
        },
        roc={m: {s: _roc(y, pr[m]) for s, (y, pr, _) in data.items()} for m in MODELS},
        thresholds=thresholds,
        selected_features={
            "COMB": {
                "hf:intratumoral:original_glcm_Idm": 0.83,
                "df:pc3": -0.4,
                "hf:peritumoral:wavelet-LLH_firstorder_Mean": 1.21,
                EVIL: 0.05,
                "df:pc1": -0.9,
            },
            "ONLY_HF": {
                "hf:intratumoral:original_glcm_Idm": 0.7,
                "hf:peritumoral:log-sigma-3-0-mm-3D_glszm_ZoneEntropy": -0.3,
            },
            "ONLY_DF": {"df:pc1": -1.1, "df:pc3": 0.2},
        },
        notes=(
            "ICC filter on reader-2 and repeat delineations of 83 training cases",
            "note with <b>markup</b> & ampersand",
        ),
        drift={
            "validation": {
                "C": SiteDrift(
                    n=90,
                    psi_max=0.41,
                    psi_mean=0.07,
                    features_flagged=1,
                    critical=0.35,
                    top=(FeaturePsi(EVIL, 0.41, 0.004, True), FeaturePsi("df:pc2", 0.3)),
                    model="COMB",
                    features=5,
                )
            }
        },
        cohort_flow=CohortFlow(
            cases_in=330,
            quarantined=6,
            per_split=dict(sizes),
            per_site={"A": 220, "B": 0, "C": 90},
            labelled=310,
            unlabelled=14,
        ),
        versions={
            "table_versions": {"cohort": 3, "radiomics": 7, "embeddings": 2},
            "params_hash": "9f8e7d6c",
            "cnn_model_version": "cnn-2024-05-01",
            "code_version": "083a71c",
            "champion": "sln-comb v4",
        },
        checks=Checks(auc_floor=0.65, split="validation", auc=0.7, passed=True, failed=()),
    )
