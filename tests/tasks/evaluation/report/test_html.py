"""The report page: sections in order, figures embedded, escaping, missing and undefined
values, checks."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import replace

import numpy as np

from tasks.evaluation.report import (
    DISCLAIMER,
    metrics_table,
    render_html,
    report_json,
    write_report,
)
from tasks.evaluation.results import Checks, CohortFlow, Evaluation
from tests.tasks.evaluation.report.simulated import EVIL, MODELS, build_evaluation, set_metrics

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


def html_escape(text: str) -> str:
    return html.escape(text, quote=True)


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


def test_html_escapes_and_content(page, evaluation):
    assert EVIL not in page
    assert html_escape(EVIL) in page
    assert "note with &lt;b&gt;markup&lt;/b&gt; &amp; ampersand" in page
    for model in MODELS:
        assert model in page
    comb = evaluation.models["COMB"]["validation"]
    assert f"{comb.auc:.3f} ({comb.auc_ci[0]:.3f}–{comb.auc_ci[1]:.3f})" in page
    assert f"{evaluation.thresholds['COMB']:.3f}" in page
    assert f"<td>{comb.tp}/{comb.fp}/{comb.tn}/{comb.fn}</td>" in page
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
        "sln-comb v4",
        "Quarantined",
        "External validation",
    ):
        assert text in page
    # Drift: one feature over the permutation critical value is flagged, of five.
    assert '<span class="bad">1</span> of 5' in page
    # Per site within each set; the TRIPOD+AI section in every report.
    assert "Per site, within each set" in page and 'id="tripod"' in page
    assert "No clinical validation" in page


def test_single_class_missing_set_and_failed_checks(tmp_path):
    ev = build_evaluation(single_class_testing=True)
    del ev.models["ONLY_DF"]["testing"]
    del ev.roc["ONLY_DF"]["testing"]
    del ev.calibration["ONLY_DF"]["testing"]
    failed = ("COMB validation AUC 0.61 < 0.65", EVIL)
    ev = replace(
        ev,
        drift={},
        checks=Checks(auc_floor=0.65, split="validation", auc=0.61, passed=False, failed=failed),
    )
    uris = write_report(ev, str(tmp_path / "nested" / "run"))
    page = (tmp_path / "nested" / "run" / "report.html").read_text(encoding="utf-8")
    assert uris["html"].endswith("report.html") and uris["json"].endswith("report.json")
    assert 'class="check fail"' in page and "COMB validation AUC 0.61 &lt; 0.65" in page
    assert EVIL not in page
    assert 'id="drift"' not in page
    row = re.search(r"<tr><td>COMB</td><td>Testing</td><td>60</td><td><b>([^<]*)</b>", page)
    assert row and row.group(1) == "—"
    assert "<tr><td>ONLY_DF</td><td>Testing</td><td>—</td>" in page
    out = json.loads((tmp_path / "nested" / "run" / "report.json").read_text())
    assert out["models"]["COMB"]["testing"]["auc"] is None
    assert "testing" not in out["models"]["ONLY_DF"]


def test_minimal_evaluation_renders():
    single = set_metrics(np.zeros(4, int), np.array([0.1, 0.2, 0.6, 0.7]), 0.5)
    ev = Evaluation(
        run_id="validate-x",
        kind="retrain",
        created_at="2024-06-01T12:00:00+00:00",
        models={"COMB": {"training": single}},
        per_site={},
        delong={},
        calibration={},
        decision_curves={},
        roc={},
        thresholds={"COMB": 0.5},
        selected_features={},
        notes=(),
        drift={},
        cohort_flow=CohortFlow(0, 0, {}, {}, 0, 0),
        versions={},
    )
    page = render_html(ev)
    assert "No data for this figure" in page and page.count("<img") == 0
    assert 'class="check none"' in page
    assert "<tr><td>COMB</td><td>Training</td><td>4</td><td><b>—</b>" in page
    assert metrics_table(ev)[0]["auc"] is None
    json.dumps(report_json(ev), allow_nan=False)


def test_undefined_numbers_show_a_dash():
    ev = build_evaluation()
    ev.delong["validation"]["COMB_vs_ONLY_HF"] = replace(
        ev.delong["validation"]["COMB_vs_ONLY_HF"], p=math.nan, z=math.nan
    )
    page = render_html(ev)
    row = re.search(r"<tr><td>External validation</td><td>COMB vs ONLY_HF</td>(.*?)</tr>", page)
    assert row and row.group(1).endswith("<td>—</td><td><span>—</span></td>")
