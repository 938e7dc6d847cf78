"""The report's figures: ROC, reliability and decision curves, COMB's coefficients.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend state),
so the module is safe to call from worker threads; :func:`png` encodes a figure for the
page. Each figure function returns None when the evaluation has nothing to draw.
"""

from __future__ import annotations

import base64
import io

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tasks.evaluation.report._format import MODEL_COLOURS, SET_LABELS, est_ci, f, present
from tasks.evaluation.results import Evaluation
from tasks.models.pipelines import MODELS

FEATURE_BARS = 25  # most features drawn in the COMB coefficient chart
DPI = 110


def png(fig: Figure) -> str:
    """The figure as a base64 PNG."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _panels(n: int, height: float = 4.1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(4.3 * n, height), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    return fig, list(axes)


def _legend(ax: Axes, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7.5, framealpha=0.9, **kwargs)


def roc_figure(evaluation: Evaluation) -> Figure | None:
    """One panel per set: each model's ROC curve, its AUC with CI in the legend."""
    roc = evaluation.roc
    splits = present(roc)
    if not splits:
        return None
    models = [m for m in MODELS if m in roc]
    fig, axes = _panels(len(splits))
    for ax, split in zip(axes, splits, strict=True):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999", label="Chance")
        drawn = 0
        title = SET_LABELS[split]
        for model in models:
            curve = roc[model].get(split)
            if curve is None:
                continue
            if title == SET_LABELS[split]:
                title += f"  (n={curve.n}, {curve.n_pos} positive)"
            if not curve.defined:
                continue
            m = evaluation.models[model][split]
            ax.plot(
                curve.fpr,
                curve.tpr,
                lw=1.6,
                color=MODEL_COLOURS[model],
                label=f"{model}  AUC {est_ci(m.auc, m.auc_ci)}",
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


def calibration_figure(evaluation: Evaluation) -> Figure | None:
    """One panel per set: each model's reliability curve against the diagonal."""
    cal = evaluation.calibration
    splits = present(cal)
    if not splits:
        return None
    models = [m for m in MODELS if m in cal]
    fig, axes = _panels(len(splits))
    for ax, split in zip(axes, splits, strict=True):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999", label="Ideal")
        for model in models:
            c = cal[model].get(split)
            if c is None or not c.curve:
                continue
            x, y = zip(*sorted((b.mean_predicted, b.observed) for b in c.curve), strict=True)
            label = (
                f"{model}  int {f(c.intercept, 2)}, slope {f(c.slope, 2)}, Brier {f(c.brier, 3)}"
            )
            ax.plot(x, y, marker="o", ms=3.5, lw=1.4, color=MODEL_COLOURS[model], label=label)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            aspect="equal",
            xlabel="Mean predicted probability",
            ylabel="Observed fraction positive",
        )
        ax.set_title(SET_LABELS[split], fontsize=10)
        ax.grid(alpha=0.3)
        _legend(ax, loc="lower right")
    return fig


def decision_figure(evaluation: Evaluation) -> Figure | None:
    """One panel per set: net benefit of each model, of treating all and of treating none."""
    dc = evaluation.decision_curves
    splits = present(dc)
    if not splits:
        return None
    models = [m for m in MODELS if m in dc]
    fig, axes = _panels(len(splits))
    for ax, split in zip(axes, splits, strict=True):
        top: list[float] = []
        thresholds: list[float] = []
        treat_all: dict[float, float] = {}
        for model in models:
            rows = dc[model].get(split, ())
            for r in rows:
                treat_all.setdefault(r.threshold, r.net_benefit_all)
            if not rows:
                continue
            t, v = zip(*sorted((r.threshold, r.net_benefit_model) for r in rows), strict=True)
            ax.plot(t, v, lw=1.6, color=MODEL_COLOURS[model], label=model)
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
        ax.set_title(SET_LABELS[split], fontsize=10)
        ax.grid(alpha=0.3)
        _legend(ax, loc="upper right")
    return fig


def ranked_features(evaluation: Evaluation, model: str) -> list[tuple[str, float]]:
    """``(feature, coefficient)`` of ``model``, largest |coefficient| first."""
    selected = evaluation.selected_features.get(model, {})
    return sorted(selected.items(), key=lambda kv: (-abs(kv[1]), kv[0]))


def feature_figure(evaluation: Evaluation, model: str = "COMB") -> Figure | None:
    """Horizontal bars of the model's largest coefficients (at most :data:`FEATURE_BARS`)."""
    items = ranked_features(evaluation, model)[:FEATURE_BARS]
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
