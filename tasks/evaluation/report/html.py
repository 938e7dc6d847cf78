"""The report page: one self-contained HTML file from an :class:`Evaluation`.

Figures are PNGs embedded as base64 (:mod:`tasks.evaluation.report.figures`), the CSS is
inline, so the file can be mailed or archived on its own. Every string from the
evaluation is escaped with :func:`html.escape`; a missing set or an undefined number
shows as "—". Sections: checks, metrics (per set and per site), ROC, DeLong tests,
calibration, decision curves, selected features, cohort flow and drift, versions and notes.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from matplotlib.figure import Figure

from tasks.data.schema import SPLITS
from tasks.evaluation.report._format import DASH, SET_LABELS, est_ci, f, present
from tasks.evaluation.report._style import CSS
from tasks.evaluation.report.figures import (
    FEATURE_BARS,
    calibration_figure,
    decision_figure,
    feature_figure,
    png,
    ranked_features,
    roc_figure,
)
from tasks.evaluation.report.serialise import DISCLAIMER, RATIOS
from tasks.evaluation.report.tripod import tripod_html
from tasks.evaluation.results import Checks, Evaluation, ModelSetMetrics
from tasks.models.pipelines import MODELS

RATIO_LABELS = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _p(value: float) -> str:
    text = f(value)
    if text == DASH:
        return DASH
    return "&lt;0.001" if value < 0.001 else text


def _value(value: Any) -> str:
    """A lineage value, escaped; a dash for None."""
    if value is None:
        return DASH
    if isinstance(value, float):
        return f(value)
    return _e(value)


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table; ``headers`` and cells must already be escaped HTML."""
    if not rows:
        return '<p class="muted">None recorded.</p>'
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return (
        f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _kv_table(items: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in items)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _figure(fig: Figure | None, fig_id: str, caption: str) -> str:
    if fig is None:
        return '<p class="muted">No data for this figure.</p>'
    data = png(fig)
    return (
        f'<figure id="{fig_id}"><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------
def _checks_html(checks: Checks | None) -> str:
    if checks is None:
        return '<p class="check none">No acceptance checks recorded for this run.</p>'
    floor = f(checks.auc_floor, 2)
    floor_txt = f" (AUC floor {floor})" if floor != DASH else ""
    if checks.passed and not checks.failed:
        return f'<p class="check pass">&#10004; All checks passed{floor_txt}.</p>'
    items = "".join(f"<li>{_e(x)}</li>" for x in checks.failed) or "<li>(no reason given)</li>"
    return f'<div class="check fail">&#10008; Checks failed{floor_txt}:<ul>{items}</ul></div>'


def _metric_rows(
    by_key: dict[str, dict[str, ModelSetMetrics]],
    models: list[str],
    keys: list[str],
    thresholds: dict[str, float],
) -> list[list[str]]:
    rows = []
    for model in models:
        for key in keys:
            m = by_key.get(model, {}).get(key)
            label = SET_LABELS.get(key, key)
            if m is None:
                rows.append([_e(model), _e(label)] + [DASH] * 10)
                continue
            rows.append(
                [
                    _e(model),
                    _e(label),
                    str(m.n),
                    f"<b>{est_ci(m.auc, m.auc_ci)}</b>",
                    *(est_ci(getattr(m, r), getattr(m, f"{r}_ci")) for r in RATIOS),
                    f(m.brier),
                    f(thresholds.get(model)),
                    f"{m.tp}/{m.fp}/{m.tn}/{m.fn}",
                ]
            )
    return rows


_METRIC_HEADERS = [
    "Model",
    "Set",
    "n",
    "AUC (95% CI)",
    *(f"{RATIO_LABELS[r]} (95% CI)" for r in RATIOS),
    "Brier",
    "Threshold",
    "TP/FP/TN/FN",
]


def _metrics_html(evaluation: Evaluation) -> str:
    models = [m for m in MODELS if m in evaluation.models]
    rows = _metric_rows(
        evaluation.models, models, present(evaluation.models), evaluation.thresholds
    )
    table = _table(_METRIC_HEADERS, rows, "metrics")
    return (
        '<section id="metrics"><h2>1. Discrimination and classification</h2>'
        '<p class="muted">AUC with DeLong 95% CI; accuracy, sensitivity, specificity, PPV and '
        "NPV with Wilson 95% CIs at the threshold chosen on the training set (Youden index) "
        "and applied unchanged to the other sets.</p>"
        f"{table}"
        f"{_per_site_html(evaluation)}{_harmonisation_html(evaluation)}</section>"
    )


def _harmonisation_html(evaluation: Evaluation) -> str:
    """Every model's AUC per set under each scanner harmonisation option of the run."""
    h = evaluation.harmonisation
    if not h.get("options"):
        return ""
    sets = [s for s in SPLITS if any(s in m for o in h["options"].values() for m in o.values())]
    rows = []
    for option, by_model in h["options"].items():
        for model in (m for m in MODELS if m in by_model):
            cells = []
            for split in sets:
                m = by_model[model].get(split)
                cells.append(est_ci(m["auc"], m["auc_ci"]) + f" ({m['n']})" if m else DASH)
            mark = "<b>chosen</b>" if option == h["chosen"] else ""
            rows.append([_e(option), _e(model), *cells, mark])
    headers = ["Option", "Model", *(f"AUC {SET_LABELS[s]} (n)" for s in sets), ""]
    missing = "".join(
        f"<li>{_e(option)}: not compared ({_e(why)})</li>"
        for option, why in h.get("unavailable", {}).items()
    )
    combat = h.get("combat") or {}
    note = (
        f" ComBat reference site {_e(combat['reference_site'])}; training sites "
        f"{_e(', '.join(combat.get('training_sites', [])))}; a site new to the model is "
        "harmonised from its own unlabelled rows."
        if combat.get("reference_site")
        else ""
    )
    return (
        '<h3 id="harmonisation">Scanner harmonisation compared</h3>'
        f'<p class="muted">Chosen: <b>{_e(h["chosen"])}</b>; rule: {_e(h["rule"])}.{note}</p>'
        f"{_table(headers, rows, 'metrics')}"
        f"{f'<ul>{missing}</ul>' if missing else ''}"
    )


def _per_site_html(evaluation: Evaluation) -> str:
    """Per site within each set; "too few" where a site lacks the cases for an AUC."""
    rows = []
    for split in present({"": evaluation.per_site}):
        for site, by_model in sorted(evaluation.per_site[split].items()):
            for model in (m for m in MODELS if m in by_model):
                m = by_model[model]
                auc = f"<b>{est_ci(m.auc, m.auc_ci)}</b>" if m.enough else _e(m.note)
                rows.append(
                    [
                        _e(SET_LABELS.get(split, split)),
                        _e(site),
                        _e(model),
                        str(m.n),
                        f"{m.n_pos}/{m.n_neg}",
                        auc,
                        f"{m.tp}/{m.fp}/{m.tn}/{m.fn}",
                    ]
                )
    headers = ["Set", "Site", "Model", "n", "Pos/Neg", "AUC (95% CI)", "TP/FP/TN/FN"]
    return (
        '<h3 id="per-site">Per site, within each set</h3>'
        '<p class="muted">A site\'s AUC is shown only with n &ge; 20 and &ge; 5 of each class.</p>'
        f"{_table(headers, rows, 'metrics')}"
    )


def _delong_html(evaluation: Evaluation) -> str:
    rows = []
    for split in (s for s in SPLITS if s in evaluation.delong):
        for name, t in evaluation.delong[split].items():
            cls = ' class="sig"' if t.p < 0.05 else ""
            rows.append(
                [
                    _e(SET_LABELS[split]),
                    _e(name.replace("_vs_", " vs ")),
                    f(t.auc_a),
                    f(t.auc_b),
                    est_ci(t.diff, t.diff_ci),
                    f(t.z, 2),
                    f"<span{cls}>{_p(t.p)}</span>",
                ]
            )
    headers = ["Set", "Comparison", "AUC A", "AUC B", "Difference (95% CI)", "z", "p"]
    return (
        '<section id="delong"><h2>3. DeLong tests</h2>'
        '<p class="muted">Paired two-sided DeLong tests of correlated AUCs on the same cases; '
        "p &lt; 0.05 in bold.</p>"
        f"{_table(headers, rows)}</section>"
    )


def _calibration_html(evaluation: Evaluation) -> str:
    cal = evaluation.calibration
    models = [m for m in MODELS if m in cal]
    rows = []
    for split in present(cal):
        for model in models:
            c = cal[model].get(split)
            if c is None:
                continue
            rows.append(
                [
                    _e(SET_LABELS[split]),
                    _e(model),
                    f(c.intercept),
                    f(c.slope),
                    f(c.brier),
                    str(len(c.curve)),
                ]
            )
    headers = ["Set", "Model", "Intercept (ideal 0)", "Slope (ideal 1)", "Brier", "Bins"]
    fig = _figure(
        calibration_figure(evaluation),
        "fig-calibration",
        "Reliability curves (quantile bins) per set; dashed: perfect calibration.",
    )
    return (
        f'<section id="calibration"><h2>4. Calibration</h2>{fig}{_table(headers, rows)}</section>'
    )


def _features_html(evaluation: Evaluation) -> str:
    selected = evaluation.selected_features
    blocks = []
    for model in (m for m in MODELS if m in selected):
        items = ranked_features(evaluation, model)
        rows = [[str(i), f"<code>{_e(k)}</code>", f(v)] for i, (k, v) in enumerate(items, 1)]
        blocks.append(
            f'<div class="feat"><h3>{_e(model)} ({len(items)} features)</h3>'
            f"{_table(['#', 'Feature', 'Coefficient'], rows)}</div>"
        )
    fig = ""
    if "COMB" in selected:
        fig = _figure(
            feature_figure(evaluation, "COMB"),
            "fig-features",
            f"COMB coefficients, largest |coefficient| first (at most {FEATURE_BARS}).",
        )
    body = "".join(blocks) or '<p class="muted">None recorded.</p>'
    return (
        '<section id="features"><h2>6. Selected features</h2>'
        '<p class="muted">Logistic-regression coefficients, sorted by absolute value. '
        "Prefixes: <code>hf:</code> handcrafted radiomics, <code>df:</code> deep features."
        f'</p>{fig}<div class="feats">{body}</div></section>'
    )


def _count_table(title: str, counts: dict[str, int], keys: list[str]) -> str:
    if not counts:
        return ""
    rows = [[_e(SET_LABELS.get(k, k)), str(counts[k])] for k in keys]
    return f'<div class="feat"><h3>{_e(title)}</h3>{_table(["", "Cases"], rows)}</div>'


def _cohort_html(evaluation: Evaluation) -> str:
    flow = evaluation.cohort_flow
    items = [
        (_e(label), str(getattr(flow, key)))
        for key, label in (
            ("cases_in", "Cases in (manifest)"),
            ("quarantined", "Quarantined"),
            ("labelled", "Labelled"),
            ("unlabelled", "Unlabelled"),
        )
    ]
    splits = [s for s in SPLITS if s in flow.per_split]
    splits += [s for s in flow.per_split if s not in SPLITS]
    tables = _count_table("Per split", flow.per_split, splits) + _count_table(
        "Per site", flow.per_site, sorted(flow.per_site, key=str)
    )
    return (
        '<section id="cohort"><h2>7. Cohort flow and drift</h2>'
        f'<div class="feats"><div class="feat"><h3>Flow</h3>{_kv_table(items)}</div>{tables}</div>'
        f"{_drift_html(evaluation)}</section>"
    )


def _drift_html(evaluation: Evaluation) -> str:
    rows = []
    for split, by_site in evaluation.drift.items():
        for site in sorted(by_site, key=str):
            d = by_site[site]
            top = ", ".join(
                f"<code>{_e(t.feature)}</code> {f(t.psi, 2)}{' &#9873;' if t.flagged else ''}"
                for t in d.top
            )
            n_flagged = d.features_flagged
            flagged = f'<span class="bad">{n_flagged}</span>' if n_flagged else "0"
            rows.append(
                [
                    _e(SET_LABELS.get(split, split)),
                    _e(site),
                    str(d.n),
                    f"{flagged} of {d.features}",
                    f(d.critical),
                    f(d.psi_max),
                    top or _e(d.note) or DASH,
                ]
            )
    if not rows:
        return ""
    headers = ["Set", "Site", "n", "Features flagged", "Critical PSI", "PSI max", "Top features"]
    return (
        '<h3 id="drift">Drift against training</h3>'
        '<p class="muted">Population stability index of the model\'s selected input features, '
        "bins from training quantiles; a feature is flagged (&#9873;) when its PSI exceeds the "
        "critical value of a permutation null (training and site pooled and resampled; "
        "family-wise 5%), so sampling noise at a small site is not read as drift.</p>"
        f"{_table(headers, rows)}"
    )


def _versions_html(evaluation: Evaluation) -> str:
    versions = evaluation.versions
    tables = versions.get("table_versions") or {}
    labels = {"params_hash": "Params hash", "cnn_model_version": "CNN model version"}
    items = [
        (_e(labels.get(k, k)), _value(v)) for k, v in versions.items() if k != "table_versions"
    ]
    parts = []
    if items:
        parts.append(f'<div class="feat"><h3>Run</h3>{_kv_table(items)}</div>')
    if tables:
        rows = [(_e(k), _value(v)) for k, v in tables.items()]
        parts.append(f'<div class="feat"><h3>Feature-store tables</h3>{_kv_table(rows)}</div>')
    body = "".join(parts) or '<p class="muted">None recorded.</p>'
    notes_html = (
        "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in evaluation.notes) + "</ul>"
        if evaluation.notes
        else '<p class="muted">None.</p>'
    )
    return (
        f'<section id="versions"><h2>8. Versions and notes</h2>'
        f'<div class="feats">{body}</div><h3 id="notes">Notes</h3>{notes_html}</section>'
    )


def render_html(evaluation: Evaluation) -> str:
    """The self-contained report page (figures as base64 PNG, inline CSS)."""
    run_id = evaluation.run_id
    meta = "".join(
        f"<span>{label}: <b>{_e(value or DASH)}</b></span>"
        for value, label in (
            (evaluation.run_id, "Run"),
            (evaluation.kind, "Kind"),
            (evaluation.created_at, "Created"),
        )
    )
    header = (
        f"<header><h1>SLN metastasis prediction — validation report</h1>"
        f'<div class="meta">{meta}</div>'
        f'<p class="disclaimer" id="disclaimer">{_e(DISCLAIMER)}</p>'
        f'<div id="checks">{_checks_html(evaluation.checks)}</div></header>'
    )
    roc = _figure(
        roc_figure(evaluation),
        "fig-roc",
        "ROC curves per set; legend: AUC with DeLong 95% CI.",
    )
    dca = _figure(
        decision_figure(evaluation),
        "fig-decision",
        "Net benefit of each model against treating all and treating none "
        "(y-axis clipped at −0.05).",
    )
    sections = [
        _metrics_html(evaluation),
        f'<section id="roc"><h2>2. ROC curves</h2>{roc}</section>',
        _delong_html(evaluation),
        _calibration_html(evaluation),
        f'<section id="decision-curves"><h2>5. Decision curves</h2>{dca}</section>',
        _features_html(evaluation),
        _cohort_html(evaluation),
        _versions_html(evaluation),
        tripod_html(evaluation),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Report {_e(run_id)}</title><style>{CSS}</style></head><body>"
        f"{header}<main>{''.join(sections)}</main>"
        f"<footer>{_e(DISCLAIMER)} Report for run {_e(run_id)}.</footer></body></html>\n"
    )
