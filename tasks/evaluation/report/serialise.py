"""The report's numbers as JSON (``report.json``) and as a table (a Prefect table artifact).

- :func:`report_json`: the evaluation as plain, strictly JSON-serialisable Python: NaN and
  infinities become ``null``, tuples lists, dataclasses objects keyed by field name; a ROC
  curve undefined for its set (a single class) is ``null``.
- :func:`metrics_table`: one row per model and set, rounded.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

from tasks.evaluation.report.tripod import tripod_section
from tasks.evaluation.results import EVALUATION_SETS, Evaluation
from tasks.models.pipelines import MODELS

DISCLAIMER = (
    "Research software for decision support, not a cleared medical device; "
    "validate locally before clinical use."
)
RATIOS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")


def plain(value: Any) -> Any:
    """``value`` as JSON-ready Python: dataclasses as dicts (in field order, a field's
    ``json`` metadata naming its key), tuples as lists, NaN and infinities as None."""
    if is_dataclass(value) and not isinstance(value, type):
        return {
            field.metadata.get("json", field.name): plain(getattr(value, field.name))
            for field in fields(value)
        }
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return value


def report_json(evaluation: Evaluation) -> dict[str, Any]:
    """``report.json``: every field of the evaluation in its order, ``checks`` only when
    set, then the ROC curves (``{model: {set: {"fpr", "tpr", "n", "n_pos"} | None}}``), the
    TRIPOD+AI items (:func:`~tasks.evaluation.report.tripod.tripod_section`) and the
    disclaimer."""
    out = {
        f.name: plain(getattr(evaluation, f.name))
        for f in fields(evaluation)
        if f.name not in ("roc", "checks")
    }
    if evaluation.checks is not None:
        out["checks"] = plain(evaluation.checks)
    out["roc"] = {
        model: {split: plain(curve) if curve.defined else None for split, curve in by_split.items()}
        for model, by_split in evaluation.roc.items()
    }
    out["tripod"] = plain(tripod_section(evaluation))
    out["disclaimer"] = DISCLAIMER
    return out


def _r3(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


def metrics_table(evaluation: Evaluation) -> list[dict[str, Any]]:
    """One row per model and set present: ``model``, ``set``, ``n``, ``auc``, ``auc_lo``,
    ``auc_hi``, ``accuracy``, ``sensitivity``, ``specificity``, ``ppv``, ``npv``; numbers
    rounded to 3 decimals, ``None`` where undefined (a Prefect table artifact)."""
    rows = []
    for model in (m for m in MODELS if m in evaluation.models):
        by_split = evaluation.models[model]
        for split in (s for s in EVALUATION_SETS if s in by_split):
            m = by_split[split]
            lo, hi = m.auc_ci
            rows.append(
                {
                    "model": model,
                    "set": split,
                    "n": m.n,
                    "auc": _r3(m.auc),
                    "auc_lo": _r3(lo),
                    "auc_hi": _r3(hi),
                    **{name: _r3(getattr(m, name)) for name in RATIOS},
                }
            )
    return rows
