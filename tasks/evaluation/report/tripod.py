"""The report's TRIPOD+AI section: the items of the reporting guideline the software can state.

Reads an :class:`~tasks.evaluation.results.Evaluation`; writes nothing. :func:`tripod_section`
gives the items as plain JSON-ready values (``report.json["tripod"]``), :func:`tripod_html`
the same as a section of ``report.html``. Every run's report carries it.

References
----------
.. [1] Collins GS, Moons KGM, Dhiman P, et al. TRIPOD+AI statement: updated guidance for
   reporting clinical prediction models that use regression or machine learning methods.
   BMJ. 2024;385:e078378.
"""

from __future__ import annotations

import html
import math
from typing import Any

from tasks.evaluation.report._format import SET_LABELS, f, present
from tasks.evaluation.results import Evaluation

MISSING_DATA = (
    "Cases without a label are scored but excluded from every performance estimate.",
    "Cases without both feature families (radiomics at the current parameters and "
    "embeddings of the CNN version) are excluded from fitting and evaluation; their number "
    "is the difference between cases in the cohort and cases with features.",
    "A missing feature value is imputed with the training median (fitted on training only).",
    "Manifest rows with a missing required value, an unreadable or mismatched file, a "
    "duplicate or conflicting case, or a patient whose cases would span splits are "
    "quarantined with their reason, never imputed.",
)
NOT_DONE = (
    "No clinical validation: no prospective study, no comparison with clinicians, no "
    "assessment of clinical impact.",
    "No recalibration for a new site; calibration is reported as observed.",
    "Sample size was not planned for this model (Riley et al. criteria not checked).",
    "No assessment of fairness across patient subgroups beyond site.",
)


def _num(value: float) -> float | None:
    return float(value) if isinstance(value, float | int) and math.isfinite(value) else None


def tripod_section(evaluation: Evaluation) -> dict[str, Any]:
    """The TRIPOD+AI items, keyed by item, as plain values."""
    flow, versions = evaluation.cohort_flow, evaluation.versions
    first = next(iter(evaluation.models.values()), {})
    return {
        "guideline": "TRIPOD+AI (Collins et al., BMJ 2024;385:e078378)",
        "data_sources": {
            split: {
                "manifests": list(flow.manifests.get(split, ())),
                "exam_dates": list(flow.exam_dates.get(split, (None, None))),
                "cases": flow.per_split.get(split),
                "patients": flow.patients.get(split),
            }
            for split in flow.per_split
        },
        "participants": {
            "cases_in_cohort": flow.cases_in,
            "cases_with_features": versions.get("cases_with_features"),
            "quarantined_cases": flow.quarantined,
            "quarantine_reasons": dict(flow.quarantine_reasons),
            "labelled": flow.labelled,
            "unlabelled": flow.unlabelled,
            "per_site": dict(flow.per_site),
        },
        "missing_data": list(MISSING_DATA),
        "predictors": {
            "handcrafted": "pyradiomics features of the lesion and its peritumoral ring, "
            f"extraction parameters hash {versions.get('params_hash')}",
            "deep": f"fused embeddings of CNN {versions.get('cnn_model_version')}; "
            f"{_deep_mode(versions.get('deep_features'))}",
            "harmonisation": _harmonisation(evaluation.harmonisation, versions),
            "table_versions": versions.get("table_versions"),
        },
        "sample_size": {
            name: {"n": m.n, "events": m.n_pos, "non_events": m.n_neg} for name, m in first.items()
        },
        "model_specification": {
            model: {
                "type": "logistic regression on the LASSO-selected features",
                "penalty": fit.get("penalty", "not recorded (bundle predates it)"),
                "intercept": _num(fit.get("intercept", math.nan)),
                "coefficients": evaluation.selected_features.get(model, {}),
                "threshold_probability": _num(evaluation.thresholds.get(model, math.nan)),
                "lasso": fit.get("lasso"),
                "icc": fit.get("icc"),
                "features_kept": fit.get("features_kept"),
            }
            for model, fit in (evaluation.model_fits or {m: {} for m in evaluation.models}).items()
        },
        "performance": {
            model: {
                split: {"n": m.n, "auc": _num(m.auc), "auc_ci": [_num(v) for v in m.auc_ci]}
                for split, m in sets.items()
            }
            for model, sets in evaluation.models.items()
        },
        "calibration": {
            model: {
                split: {
                    "intercept": _num(c.intercept),
                    "slope": _num(c.slope),
                    "brier": _num(c.brier),
                }
                for split, c in sets.items()
            }
            for model, sets in evaluation.calibration.items()
        },
        "decision_sets": dict(evaluation.decision_sets),
        "not_done": list(NOT_DONE),
    }


def _deep_mode(deep: dict[str, Any] | None) -> str:
    """How the training rows' deep features were made (cross-fitted or in-sample)."""
    if not deep or deep.get("mode") != "crossfit":
        return (
            "training rows embedded in-sample by the final CNN (it was fine-tuned on them)"
            if deep
            else "training rows' embedding mode not recorded"
        )
    return (
        f"cross-fitted CNN logit: each training row's from the one of {deep.get('folds')} "
        "fold CNNs (grouped by patient) that never saw it, other rows' from the final CNN "
        "(fine-tuned CNNs share their output scale, not their embedding space)"
    )


def _harmonisation(comparison: dict[str, Any], versions: dict[str, Any]) -> str:
    """The scanner harmonisation the models use, and how it was chosen."""
    if not comparison:
        option = versions.get("harmonisation", "none")
        return f"scanner harmonisation: {option}"
    compared = ", ".join(comparison.get("options", {})) or "none"
    return (
        f"scanner harmonisation: {comparison['chosen']} (compared: {compared}; "
        f"rule: {comparison['rule']})"
    )


def _e(value: Any) -> str:
    return html.escape(str(value))


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def tripod_html(evaluation: Evaluation) -> str:
    """The TRIPOD+AI section of ``report.html``."""
    t = tripod_section(evaluation)
    sources = "".join(
        f"<li>{_e(SET_LABELS.get(k, k))}: {_e(v['cases'])} cases, {_e(v['patients'])} patients, "
        f"exams {_e(v['exam_dates'][0])} to {_e(v['exam_dates'][1])}; "
        f"manifests {_e(', '.join(v['manifests']) or 'not recorded')}</li>"
        for k, v in t["data_sources"].items()
    )
    p = t["participants"]
    reasons = ", ".join(f"{k} ({v})" for k, v in p["quarantine_reasons"].items()) or "none"
    sizes = "".join(
        f"<li>{_e(SET_LABELS.get(k, k))}: n={v['n']}, events={v['events']}</li>"
        for k, v in t["sample_size"].items()
    )
    specs = []
    for model, spec in t["model_specification"].items():
        coefs = ", ".join(f"{_e(k)} {f(v)}" for k, v in spec["coefficients"].items())
        lasso = spec["lasso"] or {}
        fallback = (
            " (1-SE fallback: nothing selected at the rule's penalty)"
            if lasso.get("fallback")
            else ""
        )
        specs.append(
            f"<li><b>{_e(model)}</b>: {_e(spec['type'])}, penalty {_e(spec['penalty'])}; "
            f"intercept {f(spec['intercept'])}; coefficients (standardised) {coefs}; "
            f"threshold {f(spec['threshold_probability'])}{_e(fallback)}</li>"
        )
    perf = "".join(
        f"<li>{_e(model)} {_e(SET_LABELS.get(s, s))}: AUC {f(v['auc'])} "
        f"({f(v['auc_ci'][0])}–{f(v['auc_ci'][1])}), n={v['n']}</li>"
        for model, sets in t["performance"].items()
        for s, v in sets.items()
        if s in present(evaluation.models)
    )
    cal = "".join(
        f"<li>{_e(model)} {_e(SET_LABELS.get(s, s))}: intercept {f(v['intercept'])}, "
        f"slope {f(v['slope'])}, Brier {f(v['brier'])}</li>"
        for model, sets in t["calibration"].items()
        for s, v in sets.items()
    )
    decisions = "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in t["decision_sets"].items())
    return (
        '<section id="tripod"><h2>9. TRIPOD+AI items</h2>'
        f'<p class="muted">{_e(t["guideline"])}</p>'
        f"<h3>Data sources and dates</h3><ul>{sources}</ul>"
        f"<h3>Participants</h3><p>{p['cases_in_cohort']} cases in the cohort, "
        f"{_e(p['cases_with_features'])} with features, {p['quarantined_cases']} quarantined "
        f"({_e(reasons)}); {p['labelled']} labelled, {p['unlabelled']} unlabelled.</p>"
        f"<h3>Missing data</h3>{_list(t['missing_data'])}"
        "<h3>Predictors</h3>"
        f"{_list([t['predictors'][k] for k in ('handcrafted', 'deep', 'harmonisation')])}"
        f"<h3>Sample size and events</h3><ul>{sizes}</ul>"
        f"<h3>Model specification</h3><ul>{''.join(specs)}</ul>"
        f"<h3>Performance</h3><ul>{perf}</ul>"
        f"<h3>Calibration</h3><ul>{cal}</ul>"
        f"<h3>Which set served which decision</h3><ul>{decisions}</ul>"
        f"<h3>Not done</h3>{_list(t['not_done'])}</section>"
    )
