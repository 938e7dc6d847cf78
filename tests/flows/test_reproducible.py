"""The same inputs, settings and seed give the same numbers: the whole pipeline (cohort
flow, retrain with cross-fitted CNNs and the harmonisation comparison) run a second time
from empty stores on the same synthetic cohort gives the first run's report.json numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# Everything of a report that is a number the models or the data produced (run ids, times,
# table and CNN versions and manifest paths differ between runs by design).
NUMBERS = (
    "models",
    "per_site",
    "delong",
    "calibration",
    "decision_curves",
    "roc",
    "thresholds",
    "selected_features",
    "drift",
    "model_fits",
    "harmonisation",
)


def _numbers(report: dict[str, Any]) -> dict[str, Any]:
    out = {key: report[key] for key in NUMBERS}
    out["tripod"] = {
        k: report["tripod"][k]
        for k in ("sample_size", "model_specification", "performance", "calibration")
    }
    out["deep_features"] = {
        k: v for k, v in report["versions"]["deep_features"].items() if k == "mode" or k == "folds"
    }
    return out


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Every leaf where two reports differ, as 'path: a != b' (the assertion names them)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in one run" for k in sorted(set(a) ^ set(b), key=str)]
        for k in a.keys() & b.keys():
            out += _differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _report(summary: dict[str, Any]) -> dict[str, Any]:
    return json.loads(Path(summary["report"]).with_name("report.json").read_text())


@pytest.mark.slow
def test_a_second_run_from_empty_stores_repeats_every_number(trained, tmp_path):
    from flows.cohort import cohort as cohort_flow
    from flows.retrain import retrain
    from tasks.data.sources.synthetic import generate_cohort

    settings, first_cohort, first = trained
    manifest = generate_cohort(tmp_path / "cohort", n_patients=80, seed=4)
    again = settings.model_copy(update={"store": str(tmp_path / "store")})
    second_cohort = cohort_flow(str(manifest), again)
    second = retrain(again)
    for key in ("cases_new", "radiomics_rows", "radiomics_rows_normalised", "embedding_rows"):
        assert second_cohort[key] == first_cohort[key], key
    assert second["run_id"] != first["run_id"]
    a, b = _numbers(_report(first)), _numbers(_report(second))
    assert a["models"]["COMB"]["testing"]["auc"] is not None
    differences = _differences(a, b)
    assert not differences, "report.json differs between two identical runs:\n" + "\n".join(
        sorted(differences)[:40]
    )
