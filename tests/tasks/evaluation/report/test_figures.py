"""The report's figures: one panel per set, one line per model, what is undefined said so."""

from __future__ import annotations

import base64
from dataclasses import replace

from matplotlib.figure import Figure

from tasks.evaluation.report.figures import (
    FEATURE_BARS,
    calibration_figure,
    decision_figure,
    feature_figure,
    png,
    ranked_features,
    roc_figure,
)
from tests.tasks.evaluation.report.simulated import EVIL, MODELS, build_evaluation


def _labels(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def test_roc_figure_panels_lines_and_titles(evaluation):
    fig = roc_figure(evaluation)
    axes = fig.get_axes()
    sets = (
        ("training", "Training", 160),
        ("validation", "External validation", 90),
        ("testing", "Testing", 60),
    )
    for ax, (split, label, n) in zip(axes, sets, strict=True):
        positives = evaluation.roc["COMB"][split].n_pos
        assert ax.get_title() == f"{label}  (n={n}, {positives} positive)"
    for ax in axes:
        labels = _labels(ax)
        assert labels[0] == "Chance"
        assert [label.split()[0] for label in labels[1:]] == list(MODELS)  # canonical order
    comb = evaluation.models["COMB"]["validation"]
    assert f"COMB  AUC {comb.auc:.3f} ({comb.auc_ci[0]:.3f}–{comb.auc_ci[1]:.3f})" in _labels(
        axes[1]
    )
    curve = evaluation.roc["COMB"]["validation"]
    line = axes[1].get_lines()[3]
    assert tuple(line.get_xdata()) == curve.fpr and tuple(line.get_ydata()) == curve.tpr


def test_roc_figure_single_class_set_says_undefined():
    ev = build_evaluation(single_class_testing=True)
    testing = roc_figure(ev).get_axes()[2]
    assert testing.get_title() == "Testing  (n=60, 0 positive)"
    assert _labels(testing) == ["Chance"]
    assert [t.get_text() for t in testing.texts] == ["ROC undefined\n(single class or no data)"]


def test_calibration_and_decision_figures(evaluation):
    cal = calibration_figure(evaluation).get_axes()
    assert len(cal) == 3
    c = evaluation.calibration["ONLY_HF"]["training"]
    assert _labels(cal[0])[:2] == [
        "Ideal",
        f"ONLY_HF  int {c.intercept:.2f}, slope {c.slope:.2f}, Brier {c.brier:.3f}",
    ]
    points = cal[0].get_lines()[1]
    assert list(points.get_xdata()) == sorted(b.mean_predicted for b in c.curve)
    dca = decision_figure(evaluation).get_axes()
    assert _labels(dca[1]) == [*MODELS, "Treat all", "Treat none"]
    assert dca[1].get_ylim()[0] == -0.05
    treat_all = dca[1].get_lines()[3]
    expected = [r.net_benefit_all for r in evaluation.decision_curves["COMB"]["validation"]]
    assert list(treat_all.get_ydata()) == expected


def test_nothing_to_draw_gives_none(evaluation):
    empty = replace(evaluation, roc={}, calibration={}, decision_curves={}, selected_features={})
    assert roc_figure(empty) is None
    assert calibration_figure(empty) is None
    assert decision_figure(empty) is None
    assert feature_figure(empty) is None
    # A model with an empty set dict draws no panel either.
    assert roc_figure(replace(evaluation, roc={"COMB": {}})) is None


def test_feature_figure_largest_coefficient_on_top(evaluation):
    ranked = ranked_features(evaluation, "COMB")
    assert [k for k, _ in ranked][:2] == ["hf:peritumoral:wavelet-LLH_firstorder_Mean", "df:pc1"]
    assert ranked[-1] == (EVIL, 0.05)
    ax = feature_figure(evaluation).get_axes()[0]
    bars = ax.patches
    assert len(bars) == 5
    assert bars[-1].get_width() == 1.21  # the top bar: the largest |coefficient|
    assert bars[-1].get_facecolor()[:3] != bars[-2].get_facecolor()[:3]  # red vs blue
    many = {f"hf:f{i}": float(i) for i in range(40)}
    big = replace(evaluation, selected_features={"COMB": many})
    assert len(feature_figure(big).get_axes()[0].patches) == FEATURE_BARS


def test_png_is_a_png():
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [0, 1])
    assert base64.b64decode(png(fig))[:8] == b"\x89PNG\r\n\x1a\n"
