"""The README's result tables come from a report.json, not from hand-copying."""

from __future__ import annotations

import json

from tasks.evaluation.report import write_report
from tasks.evaluation.report.readme import main, readme_tables


def test_tables_carry_the_reports_numbers(sample_evaluation, tmp_path, capsys):
    uris = write_report(sample_evaluation, str(tmp_path / "r"))
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    text = readme_tables(report)
    comb = sample_evaluation.models["COMB"]["testing"]
    assert f"{comb.auc:.3f} ({comb.auc_ci[0]:.3f}–{comb.auc_ci[1]:.3f}) ({comb.n})" in text
    assert "| testing | D | COMB | 5 | too few |" in text
    assert "inputs drifted" in text and "LASSO 1-SE fallback" in text
    assert main([uris["json"]]) == 0
    assert capsys.readouterr().out == text
    assert main([]) == 2
