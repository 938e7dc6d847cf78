"""Per-validation-run report: one self-contained HTML page and the same numbers as JSON.

The validate flow gathers every number of a run into one ``evaluation`` dict (metrics per
model and set with their confidence intervals, DeLong tests, calibration, decision curves,
ROC inputs, thresholds, selected features, cohort flow, versions, drift, checks, notes) and
calls :func:`write_report`, which writes ``<folder>/report.html`` and
``<folder>/report.json`` through fsspec (a local folder or ``s3://...``).

- :func:`report_json`: the evaluation as plain JSON (numpy types converted; NaN and
  infinities become ``null``; ROC inputs replaced by the ROC curves).
- :func:`metrics_table`: one row per model and set, rounded, for a Prefect table artifact.
- :func:`render_html`: the page; figures are PNGs embedded as base64, the CSS is inline, so
  the file can be mailed or archived on its own. Every string from the evaluation is
  escaped with :func:`html.escape`; a missing set or an undefined number shows as "—".

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
backend state), so the module is safe to call from worker threads.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from tasks.data.uris import is_uri, join

MODELS = ("ONLY_HF", "ONLY_DF", "COMB")
SETS = ("training", "validation", "testing")
SET_LABELS = {
    "training": "Training",
    "validation": "External validation",
    "testing": "Testing",
}
MODEL_COLOURS = {"ONLY_HF": "#1f77b4", "ONLY_DF": "#2ca02c", "COMB": "#d62728"}
EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
DISCLAIMER = (
    "Research software for decision support, not a cleared medical device; "
    "validate locally before clinical use."
)
RATIOS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
RATIO_LABELS = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
}
DASH = "—"
FEATURE_BARS = 25  # most features drawn in the COMB coefficient chart
DPI = 110


# ---------------------------------------------------------------------------------------
# Plain values
# ---------------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    """A finite float, or None for None / NaN / inf / anything not a number."""
    if value is None or isinstance(value, bool | np.bool_):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _plain(obj: Any) -> Any:
    """``obj`` as JSON-ready Python: numpy scalars and arrays converted, NaN/inf -> None."""
    if obj is None or isinstance(obj, str | bool):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _num(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [_plain(v) for v in obj.tolist()]
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # DataFrame
        return [_plain(r) for r in obj.to_dict("records")]
    if hasattr(obj, "to_dict") and hasattr(obj, "index"):  # Series
        return _plain(obj.to_dict())
    if isinstance(obj, list | tuple | set | frozenset):
        return [_plain(v) for v in obj]
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return _plain(obj.item())
    return str(obj)


def _list(obj: Any) -> list:
    """A list from None, a list/tuple or a numpy array (whose truth value is ambiguous)."""
    if obj is None:
        return []
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, str):
        return [obj]
    return list(obj)


def _pair(ci: Any) -> tuple[Any, Any]:
    """``(lo, hi)`` of an interval given as a list, tuple or array; Nones when absent."""
    values = _list(ci) if isinstance(ci, list | tuple | np.ndarray) else []
    lo, hi = (values + [None, None])[:2]
    return lo, hi


def _records(obj: Any) -> list[dict]:
    """Rows of a curve given as a list of dicts, a dict of lists or a DataFrame."""
    if obj is None:
        return []
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):
        return list(obj.to_dict("records"))
    if isinstance(obj, Mapping):
        lengths = {len(v) for v in obj.values() if isinstance(v, list | tuple | np.ndarray)}
        if len(lengths) == 1:
            n = lengths.pop()
            return [{k: v[i] for k, v in obj.items()} for i in range(n)]
        return []
    return [r for r in obj if isinstance(r, Mapping)]


def _ordered(keys: Iterable[str], canonical: tuple[str, ...]) -> list[str]:
    """Canonical names first, in their order, then any others in the order given."""
    keys = list(dict.fromkeys(keys))
    return [k for k in canonical if k in keys] + [k for k in keys if k not in canonical]


def _models(evaluation: Mapping) -> list[str]:
    return _ordered((evaluation.get("models") or {}).keys(), MODELS)


def _sets_of(by_set: Mapping | None) -> list[str]:
    return _ordered((k for k, v in (by_set or {}).items() if v is not None), SETS)


def _all_sets(tree: Mapping | None) -> list[str]:
    """Sets present under any model of ``{model: {set: ...}}``."""
    keys: list[str] = []
    for by_set in (tree or {}).values():
        if isinstance(by_set, Mapping):
            keys.extend(_sets_of(by_set))
    return _ordered(keys, SETS)


def _colour(model: str, models: list[str]) -> str:
    if model in MODEL_COLOURS:
        return MODEL_COLOURS[model]
    extras = [m for m in models if m not in MODEL_COLOURS]
    return EXTRA_COLOURS[extras.index(model) % len(EXTRA_COLOURS)]


def _roc_points(y: Any, prob: Any) -> dict[str, Any] | None:
    """ROC curve of one model on one set, or None when a class is missing."""
    if y is None or prob is None:
        return None
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    keep = np.isfinite(y) & np.isfinite(p)
    y, p = y[keep], p[keep]
    if y.size != p.size or y.size == 0 or np.unique(y).size < 2:
        return None
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=True)
    return {"fpr": fpr, "tpr": tpr, "n": int(y.size), "n_pos": int(y.sum())}


def _roc_input(evaluation: Mapping, model: str, set_name: str) -> tuple[Any, Any]:
    entry = ((evaluation.get("roc") or {}).get(model) or {}).get(set_name) or {}
    return entry.get("y"), entry.get("prob", entry.get("score"))


# ---------------------------------------------------------------------------------------
# JSON and table
# ---------------------------------------------------------------------------------------
def report_json(evaluation: Mapping) -> dict:
    """The evaluation as plain, strictly JSON-serialisable Python.

    Every key of ``evaluation`` is kept, with numpy scalars and arrays converted and NaN or
    infinite numbers turned into ``None`` (``json.dumps(..., allow_nan=False)`` accepts
    the result). ``roc`` (per-case labels and probabilities) is replaced by the curves:
    ``{model: {set: {"fpr": [...], "tpr": [...], "n", "n_pos"}}}``, ``None`` for a set
    with a single class. ``disclaimer`` is added. The input is not modified.
    """
    out = _plain({k: v for k, v in evaluation.items() if k != "roc"})
    roc = evaluation.get("roc") or {}
    out["roc"] = {
        str(model): {
            str(s): _plain(_roc_points(*_roc_input(evaluation, model, s))) for s in _sets_of(by_set)
        }
        for model, by_set in roc.items()
        if isinstance(by_set, Mapping)
    }
    out["disclaimer"] = DISCLAIMER
    return out


def _r3(value: Any) -> float | None:
    x = _num(value)
    return None if x is None else round(x, 3)


def metrics_table(evaluation: Mapping) -> list[dict]:
    """One row per model and set present: ``model``, ``set``, ``n``, ``auc``, ``auc_lo``,
    ``auc_hi``, ``accuracy``, ``sensitivity``, ``specificity``, ``ppv``, ``npv``; numbers
    rounded to 3 decimals, ``None`` where undefined (a Prefect table artifact)."""
    rows = []
    models = evaluation.get("models") or {}
    for model in _models(evaluation):
        for set_name in _sets_of(models.get(model)):
            m = models[model][set_name]
            lo, hi = _pair(m.get("auc_ci"))
            n = _num(m.get("n"))
            rows.append(
                {
                    "model": model,
                    "set": set_name,
                    "n": None if n is None else int(n),
                    "auc": _r3(m.get("auc")),
                    "auc_lo": _r3(lo),
                    "auc_hi": _r3(hi),
                    **{name: _r3(m.get(name)) for name in RATIOS},
                }
            )
    return rows


# ---------------------------------------------------------------------------------------
# Formatting for the page
# ---------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _f(value: Any, digits: int = 3) -> str:
    x = _num(value)
    return DASH if x is None else f"{x:.{digits}f}"


def _int(value: Any) -> str:
    x = _num(value)
    return DASH if x is None else f"{int(x):d}"


def _est_ci(value: Any, ci: Any, digits: int = 3) -> str:
    """``0.781 (0.702–0.860)``, the estimate alone without a CI, or a dash."""
    est = _f(value, digits)
    if est == DASH:
        return DASH
    lo, hi = _pair(ci)
    if _num(lo) is None or _num(hi) is None:
        return est
    return f"{est} ({_f(lo, digits)}–{_f(hi, digits)})"


def _p(value: Any) -> str:
    x = _num(value)
    if x is None:
        return DASH
    return "&lt;0.001" if x < 0.001 else f"{x:.3f}"


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


def _value(value: Any) -> str:
    """Any value from the evaluation, escaped; dicts and lists as compact JSON."""
    if value is None or (isinstance(value, float | np.floating) and not math.isfinite(value)):
        return DASH
    if isinstance(value, Mapping | list | tuple):
        return f"<code>{_e(json.dumps(_plain(value), sort_keys=True))}</code>"
    if isinstance(value, float | np.floating):
        return _f(value)
    return _e(value)


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------
def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _panels(n: int, height: float = 4.1) -> tuple[Figure, list]:
    fig = Figure(figsize=(4.3 * n, height), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    return fig, list(axes)


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7.5, framealpha=0.9, **kwargs)


def _roc_figure(evaluation: Mapping) -> Figure | None:
    roc = evaluation.get("roc") or {}
    sets = _all_sets(roc)
    if not sets:
        return None
    models = _ordered(roc.keys(), MODELS)
    metrics = evaluation.get("models") or {}
    fig, axes = _panels(len(sets))
    for ax, set_name in zip(axes, sets, strict=True):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999", label="Chance")
        drawn = 0
        title = SET_LABELS.get(set_name, set_name)
        for model in models:
            y, prob = _roc_input(evaluation, model, set_name)
            if y is not None and title == SET_LABELS.get(set_name, set_name):
                y_arr = np.asarray(y, dtype=float)
                title += f"  (n={y_arr.size}, {int(np.nansum(y_arr))} positive)"
            curve = _roc_points(y, prob)
            if curve is None:
                continue
            m = (metrics.get(model) or {}).get(set_name) or {}
            auc = _est_ci(m.get("auc"), m.get("auc_ci"))
            ax.plot(
                curve["fpr"],
                curve["tpr"],
                lw=1.6,
                color=_colour(model, models),
                label=f"{model}  AUC {auc}",
            )
            drawn += 1
        if not drawn:
            ax.text(
                0.5,
                0.5,
                "ROC undefined\n(single class or no data)",
                ha="center",
                va="center",
                fontsize=9,
                color="#666666",
            )
        ax.set(
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
            aspect="equal",
            xlabel="1 − specificity",
            ylabel="Sensitivity",
        )
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        _legend(ax, loc="lower right")
    return fig


def _calibration_figure(evaluation: Mapping) -> Figure | None:
    cal = evaluation.get("calibration") or {}
    sets = _all_sets(cal)
    if not sets:
        return None
    models = _ordered(cal.keys(), MODELS)
    fig, axes = _panels(len(sets))
    for ax, set_name in zip(axes, sets, strict=True):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999", label="Ideal")
        for model in models:
            c = (cal.get(model) or {}).get(set_name)
            if not c:
                continue
            pts = [
                (_num(r.get("mean_predicted")), _num(r.get("observed", r.get("observed_fraction"))))
                for r in _records(c.get("curve", c.get("reliability")))
            ]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            if not pts:
                continue
            x, y = zip(*sorted(pts), strict=True)
            label = (
                f"{model}  int {_f(c.get('intercept'), 2)}, slope {_f(c.get('slope'), 2)}, "
                f"Brier {_f(c.get('brier'), 3)}"
            )
            ax.plot(x, y, marker="o", ms=3.5, lw=1.4, color=_colour(model, models), label=label)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            aspect="equal",
            xlabel="Mean predicted probability",
            ylabel="Observed fraction positive",
        )
        ax.set_title(SET_LABELS.get(set_name, set_name), fontsize=10)
        ax.grid(alpha=0.3)
        _legend(ax, loc="lower right")
    return fig


def _decision_figure(evaluation: Mapping) -> Figure | None:
    dc = evaluation.get("decision_curves") or {}
    sets = _all_sets(dc)
    if not sets:
        return None
    models = _ordered(dc.keys(), MODELS)
    fig, axes = _panels(len(sets))
    for ax, set_name in zip(axes, sets, strict=True):
        top: list[float] = []
        thresholds: list[float] = []
        treat_all: dict[float, float] = {}
        for model in models:
            rows = _records((dc.get(model) or {}).get(set_name))
            pts = [(_num(r.get("threshold")), _num(r.get("net_benefit_model"))) for r in rows]
            pts = sorted((t, v) for t, v in pts if t is not None and v is not None)
            for r in rows:
                t, a = _num(r.get("threshold")), _num(r.get("net_benefit_all"))
                if t is not None and a is not None:
                    treat_all.setdefault(t, a)
            if not pts:
                continue
            t, v = zip(*pts, strict=True)
            ax.plot(t, v, lw=1.6, color=_colour(model, models), label=model)
            top.extend(v)
            thresholds.extend(t)
        if treat_all:
            t, a = zip(*sorted(treat_all.items()), strict=True)
            ax.plot(t, a, lw=1.0, color="#555555", ls="-.", label="Treat all")
            top.extend(a)
            thresholds.extend(t)
        if thresholds:
            ax.axhline(0.0, lw=1.0, color="black", label="Treat none")
            ax.set_xlim(min(0.0, min(thresholds)), max(thresholds))
            ax.set_ylim(-0.05, max(max(top), 0.0) + 0.05)
        else:
            ax.text(0.5, 0.5, "No decision curve", ha="center", va="center", color="#666666")
        ax.set(xlabel="Threshold probability", ylabel="Net benefit")
        ax.set_title(SET_LABELS.get(set_name, set_name), fontsize=10)
        ax.grid(alpha=0.3)
        _legend(ax, loc="upper right")
    return fig


def _features(evaluation: Mapping, model: str) -> list[tuple[str, float | None]]:
    """``(name, coef)`` sorted by |coef|, largest first (undefined coefficients last)."""
    raw = (evaluation.get("selected_features") or {}).get(model)
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        items = [(str(k), _num(v)) for k, v in raw.items()]
    else:
        items = [
            (str(r.get("feature", r.get("name"))), _num(r.get("coef", r.get("coefficient"))))
            for r in _records(raw)
        ]
    return sorted(items, key=lambda kv: (kv[1] is None, -abs(kv[1] or 0.0), kv[0]))


def _feature_figure(evaluation: Mapping, model: str = "COMB") -> Figure | None:
    items = [(k, v) for k, v in _features(evaluation, model) if v is not None][:FEATURE_BARS]
    if not items:
        return None
    items = items[::-1]  # largest at the top
    names = [k if len(k) <= 48 else k[:22] + "…" + k[-25:] for k, _ in items]
    values = [v for _, v in items]
    fig = Figure(figsize=(7.5, 0.8 + 0.26 * len(items)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colours = ["#d62728" if v > 0 else "#1f77b4" for v in values]
    ax.barh(range(len(items)), values, color=colours, height=0.7)
    ax.set_yticks(range(len(items)), names, fontsize=7.5)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel("Coefficient (standardised features; red raises, blue lowers the risk)")
    ax.set_title(f"{model}: selected features", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------
def _figure(fig: Figure | None, fig_id: str, caption: str) -> str:
    if fig is None:
        return '<p class="muted">No data for this figure.</p>'
    data = _png(fig)
    return (
        f'<figure id="{fig_id}"><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _checks_html(checks: Mapping | None) -> str:
    if not checks:
        return '<p class="check none">No acceptance checks recorded for this run.</p>'
    floor = checks.get("auc_floor")
    floor_txt = f" (AUC floor {_f(floor, 2)})" if _num(floor) is not None else ""
    failed = [str(x) for x in _list(checks.get("failed"))]
    if checks.get("passed") and not failed:
        return f'<p class="check pass">&#10004; All checks passed{floor_txt}.</p>'
    items = "".join(f"<li>{_e(x)}</li>" for x in failed) or "<li>(no reason given)</li>"
    return f'<div class="check fail">&#10008; Checks failed{floor_txt}:<ul>{items}</ul></div>'


def _metric_rows(
    by_key: Mapping, models: list[str], keys: list[str], thresholds: Mapping
) -> list[list[str]]:
    rows = []
    for model in models:
        for key in keys:
            m = (by_key.get(model) or {}).get(key)
            label = SET_LABELS.get(key, key)
            if m is None:
                rows.append([_e(model), _e(label)] + [DASH] * 10)
                continue
            counts = [_int(m.get(k)) for k in ("tp", "fp", "tn", "fn")]
            rows.append(
                [
                    _e(model),
                    _e(label),
                    _int(m.get("n")),
                    f"<b>{_est_ci(m.get('auc'), m.get('auc_ci'))}</b>",
                    *(_est_ci(m.get(r), m.get(f"{r}_ci")) for r in RATIOS),
                    _f(m.get("brier")),
                    _f(thresholds.get(model)),
                    DASH if DASH in counts else "/".join(counts),
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


def _metrics_html(evaluation: Mapping) -> str:
    models = _models(evaluation)
    sets = _all_sets(evaluation.get("models"))
    thresholds = evaluation.get("thresholds") or {}
    rows = _metric_rows(evaluation.get("models") or {}, models, sets, thresholds)
    table = _table(_METRIC_HEADERS, rows, "metrics")
    per_site = evaluation.get("per_site") or {}
    site_models = _ordered(per_site.keys(), MODELS)
    sites = sorted({s for v in per_site.values() if isinstance(v, Mapping) for s in v})
    site_rows = _metric_rows(per_site, site_models, sites, thresholds)
    site_headers = ["Model", "Site", *_METRIC_HEADERS[2:]]
    return (
        '<section id="metrics"><h2>1. Discrimination and classification</h2>'
        '<p class="muted">AUC with DeLong 95% CI; accuracy, sensitivity, specificity, PPV and '
        "NPV with Wilson 95% CIs at the threshold chosen on the training set (Youden index) "
        "and applied unchanged to the other sets.</p>"
        f"{table}"
        '<h3 id="per-site">Per site</h3>'
        f"{_table(site_headers, site_rows, 'metrics')}</section>"
    )


def _delong_html(evaluation: Mapping) -> str:
    delong = evaluation.get("delong") or {}
    rows = []
    for set_name in _ordered(delong.keys(), SETS):
        tests = delong.get(set_name) or {}
        for name in sorted(tests, key=lambda k: not str(k).startswith("COMB_vs_")):
            t = tests[name] or {}
            p = _num(t.get("p"))
            cls = ' class="sig"' if p is not None and p < 0.05 else ""
            rows.append(
                [
                    _e(SET_LABELS.get(set_name, set_name)),
                    _e(name.replace("_vs_", " vs ")),
                    _f(t.get("auc_a")),
                    _f(t.get("auc_b")),
                    _est_ci(t.get("diff"), t.get("diff_ci")),
                    _f(t.get("z"), 2),
                    f"<span{cls}>{_p(t.get('p'))}</span>",
                ]
            )
    headers = ["Set", "Comparison", "AUC A", "AUC B", "Difference (95% CI)", "z", "p"]
    return (
        '<section id="delong"><h2>3. DeLong tests</h2>'
        '<p class="muted">Paired two-sided DeLong tests of correlated AUCs on the same cases; '
        "p &lt; 0.05 in bold.</p>"
        f"{_table(headers, rows)}</section>"
    )


def _calibration_html(evaluation: Mapping) -> str:
    cal = evaluation.get("calibration") or {}
    models = _ordered(cal.keys(), MODELS)
    rows = []
    for set_name in _all_sets(cal):
        for model in models:
            c = (cal.get(model) or {}).get(set_name)
            if c is None:
                continue
            n_bins = len(_records(c.get("curve", c.get("reliability"))))
            rows.append(
                [
                    _e(SET_LABELS.get(set_name, set_name)),
                    _e(model),
                    _f(c.get("intercept")),
                    _f(c.get("slope")),
                    _f(c.get("brier")),
                    str(n_bins),
                ]
            )
    headers = ["Set", "Model", "Intercept (ideal 0)", "Slope (ideal 1)", "Brier", "Bins"]
    fig = _figure(
        _calibration_figure(evaluation),
        "fig-calibration",
        "Reliability curves (quantile bins) per set; dashed: perfect calibration.",
    )
    return (
        f'<section id="calibration"><h2>4. Calibration</h2>{fig}{_table(headers, rows)}</section>'
    )


def _features_html(evaluation: Mapping) -> str:
    selected = evaluation.get("selected_features") or {}
    blocks = []
    for model in _ordered(selected.keys(), MODELS):
        items = _features(evaluation, model)
        rows = [[str(i), f"<code>{_e(k)}</code>", _f(v)] for i, (k, v) in enumerate(items, 1)]
        blocks.append(
            f'<div class="feat"><h3>{_e(model)} ({len(items)} features)</h3>'
            f"{_table(['#', 'Feature', 'Coefficient'], rows)}</div>"
        )
    fig = ""
    if "COMB" in selected:
        fig = _figure(
            _feature_figure(evaluation, "COMB"),
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


def _count_table(title: str, counts: Any, canonical: tuple[str, ...] = ()) -> str:
    if not isinstance(counts, Mapping) or not counts:
        return ""
    keys = _ordered(counts.keys(), canonical) if canonical else sorted(counts, key=str)
    rows = [[_e(SET_LABELS.get(k, k)), _int(counts[k])] for k in keys]
    return f'<div class="feat"><h3>{_e(title)}</h3>{_table(["", "Cases"], rows)}</div>'


def _cohort_html(evaluation: Mapping) -> str:
    flow = evaluation.get("cohort_flow") or {}
    main = [
        ("cases_in", "Cases in (manifest)"),
        ("quarantined", "Quarantined"),
        ("with_features", "With features"),
        ("labelled", "Labelled"),
        ("unlabelled", "Unlabelled"),
    ]
    known = {k for k, _ in main} | {"per_split", "per_site"}
    items = [(_e(label), _int(flow.get(k))) for k, label in main if k in flow]
    items += [(_e(k), _value(v)) for k, v in flow.items() if k not in known]
    body = _kv_table(items) if items else '<p class="muted">None recorded.</p>'
    tables = _count_table("Per split", flow.get("per_split"), SETS) + _count_table(
        "Per site", flow.get("per_site")
    )
    return (
        '<section id="cohort"><h2>7. Cohort flow and drift</h2>'
        f'<div class="feats"><div class="feat"><h3>Flow</h3>{body}</div>{tables}</div>'
        f"{_drift_html(evaluation)}</section>"
    )


def _drift_html(evaluation: Mapping) -> str:
    drift = evaluation.get("drift")
    if not drift:
        return ""
    rows = []
    for site in sorted(drift, key=str):
        d = drift[site] or {}
        psi_max = _num(d.get("psi_max"))
        cls = (
            "" if psi_max is None else "bad" if psi_max > 0.25 else "warn" if psi_max > 0.1 else ""
        )
        top = ", ".join(
            f"<code>{_e(t.get('feature'))}</code> {_f(t.get('psi'), 2)}"
            for t in _records(d.get("top"))
        )
        rows.append(
            [
                _e(site),
                _int(d.get("n")),
                f'<span class="{cls}">{_f(psi_max)}</span>' if cls else _f(psi_max),
                _f(d.get("psi_mean")),
                _int(d.get("features_over_0_25")),
                top or DASH,
            ]
        )
    headers = ["Site", "n", "PSI max", "PSI mean", "Features PSI &gt; 0.25", "Top features"]
    return (
        '<h3 id="drift">Drift against training</h3>'
        '<p class="muted">Population stability index per feature; &gt; 0.1 moderate, '
        "&gt; 0.25 large shift.</p>"
        f"{_table(headers, rows)}"
    )


def _versions_html(evaluation: Mapping) -> str:
    versions = evaluation.get("versions") or {}
    tables = versions.get("table_versions") or {}
    models = versions.get("models") or {}
    labels = {
        "params_hash": "Params hash",
        "cnn_model_version": "CNN model version",
        "code_version": "Code version",
    }
    items = [
        (_e(labels.get(k, k)), _value(v))
        for k, v in versions.items()
        if k not in ("table_versions", "models")
    ]
    parts = []
    if items:
        parts.append(f'<div class="feat"><h3>Run</h3>{_kv_table(items)}</div>')
    if isinstance(tables, Mapping) and tables:
        rows = [(_e(k), _value(v)) for k, v in tables.items()]
        parts.append(f'<div class="feat"><h3>Feature-store tables</h3>{_kv_table(rows)}</div>')
    if isinstance(models, Mapping) and models:
        rows = [(_e(k), _value(models[k])) for k in _ordered(models.keys(), MODELS)]
        parts.append(f'<div class="feat"><h3>Models</h3>{_kv_table(rows)}</div>')
    body = "".join(parts) or '<p class="muted">None recorded.</p>'
    notes = [str(n) for n in _list(evaluation.get("notes"))]
    notes_html = (
        "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"
        if notes
        else '<p class="muted">None.</p>'
    )
    return (
        f'<section id="versions"><h2>8. Versions and notes</h2>'
        f'<div class="feats">{body}</div><h3 id="notes">Notes</h3>{notes_html}</section>'
    )


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0;
 color:#1d1d1f;background:#f6f7f9;font-size:14px;line-height:1.45}
main{max-width:1320px;margin:0 auto;padding:18px 28px 40px}
header{background:#fff;border-bottom:1px solid #dde1e6;padding:16px 28px}
header h1{margin:0 0 6px;font-size:22px}
.meta span{display:inline-block;margin-right:22px;color:#444}
.meta b{color:#1d1d1f}
.disclaimer{margin:10px 0 4px;padding:8px 12px;background:#fff8e1;border-left:4px solid #f0b400;
 font-weight:600}
.check{margin:8px 0 0;padding:8px 12px;border-radius:4px;font-weight:600}
.check ul{margin:4px 0 0 18px;font-weight:400}
.check.pass{background:#e6f4ea;color:#1e7b34;border-left:4px solid #1e7b34}
.check.fail{background:#fdecea;color:#b3261e;border-left:4px solid #b3261e}
.check.none{background:#eef0f3;color:#555;border-left:4px solid #999}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:18px 0;
 padding:6px 18px 16px}
h2{font-size:18px;border-bottom:1px solid #eceff3;padding-bottom:6px}
h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:12.5px}
th,td{border:1px solid #dfe3e8;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f0f2f5;font-weight:600}
td:first-child,td:nth-child(2),th:first-child{text-align:left}
tbody tr:nth-child(even){background:#fafbfc}
table.kv th{text-align:left}table.kv td{text-align:left}
table.metrics td:nth-child(4){background:#f3f7ff}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
td code{white-space:nowrap}
figure{margin:10px 0}figure img{max-width:100%;height:auto;display:block}
figcaption{color:#555;font-size:12px;margin-top:4px}
.muted{color:#666}
.sig{font-weight:700}
.warn{color:#a15c00;font-weight:700}.bad{color:#b3261e;font-weight:700}
.feats{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
.feat{min-width:220px}
.scroll{overflow-x:auto}
footer{color:#666;font-size:12px;text-align:center;padding:8px 0 24px}
"""


def render_html(evaluation: Mapping) -> str:
    """The self-contained report page (figures as base64 PNG, inline CSS)."""
    run_id = evaluation.get("run_id", "")
    meta = "".join(
        f"<span>{label}: <b>{_e(evaluation.get(key) or DASH)}</b></span>"
        for key, label in (("run_id", "Run"), ("kind", "Kind"), ("created_at", "Created"))
    )
    header = (
        f"<header><h1>SLN metastasis prediction — validation report</h1>"
        f'<div class="meta">{meta}</div>'
        f'<p class="disclaimer" id="disclaimer">{_e(DISCLAIMER)}</p>'
        f'<div id="checks">{_checks_html(evaluation.get("checks"))}</div></header>'
    )
    roc = _figure(
        _roc_figure(evaluation),
        "fig-roc",
        "ROC curves per set; legend: AUC with DeLong 95% CI.",
    )
    dca = _figure(
        _decision_figure(evaluation),
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
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Report {_e(run_id)}</title><style>{_CSS}</style></head><body>"
        f"{header}<main>{''.join(sections)}</main>"
        f"<footer>{_e(DISCLAIMER)} Report for run {_e(run_id)}.</footer></body></html>\n"
    )


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
def write_report(evaluation: Mapping, folder: str) -> dict:
    """Write ``<folder>/report.html`` and ``<folder>/report.json``; return their URIs.

    ``folder`` is a local path (created when missing) or an fsspec URI such as
    ``s3://bucket/prefix/reports/<run_id>``. The JSON is :func:`report_json`, dumped with
    ``allow_nan=False``. Returns ``{"html": uri, "json": uri}``.
    """
    folder = str(folder)
    if not is_uri(folder):
        folder = os.path.abspath(os.path.expanduser(folder))
        os.makedirs(folder, exist_ok=True)
    payload = json.dumps(report_json(evaluation), indent=2, allow_nan=False)
    page = render_html(evaluation)
    uris = {"html": join(folder, "report.html"), "json": join(folder, "report.json")}
    with fsspec.open(uris["json"], "w", encoding="utf-8") as fh:
        fh.write(payload)
    with fsspec.open(uris["html"], "w", encoding="utf-8") as fh:
        fh.write(page)
    return uris
