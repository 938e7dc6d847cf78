"""Number formatting and labels shared by the report's figures and page."""

from __future__ import annotations

import math

from tasks.evaluation.results import EVALUATION_SETS, Interval

SET_LABELS = {
    "training": "Training",
    "training_new": "Training split, added since the model was fitted",
    "validation": "External validation",
    "testing": "Testing",
}
MODEL_COLOURS = {"ONLY_HF": "#1f77b4", "ONLY_DF": "#2ca02c", "COMB": "#d62728"}
DASH = "—"


def present(tree: dict[str, dict]) -> list[str]:
    """Splits present under any key of ``{key: {split: ...}}``, in :data:`EVALUATION_SETS` order."""
    return [s for s in EVALUATION_SETS if any(s in by_split for by_split in tree.values())]


def f(value: float | None, digits: int = 3) -> str:
    """``value`` to ``digits`` decimals, a dash when missing or not finite."""
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value:.{digits}f}"


def est_ci(value: float, ci: Interval, digits: int = 3) -> str:
    """``0.781 (0.702–0.860)``, the estimate alone without a CI, or a dash."""
    est = f(value, digits)
    if est == DASH:
        return DASH
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return est
    return f"{est} ({f(lo, digits)}–{f(hi, digits)})"
