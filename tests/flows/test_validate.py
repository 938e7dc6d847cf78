"""The validate flow end to end: score the champion, predictions, report, the AUC floor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tasks.data.store import FeatureStore


@pytest.mark.slow
def test_validate_writes_predictions_and_fails_under_the_floor(trained):
    from flows.validate import validate

    settings, _, summary = trained
    store = FeatureStore(settings.store)
    state = validate(settings, auc_floor=0.0, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["champion"] == summary["registered_version"]
    predictions = store.read("predictions")
    assert len(predictions) == 80 and predictions["run_id"].nunique() == 1
    assert predictions["prob_COMB"].between(0, 1).all()
    assert set(predictions["predicted_COMB"].unique()) <= {0, 1}
    assert not math.isnan(result["auc_COMB_validation"])
    # The champion's training cases were scored with their cross-fitted deep features.
    report = json.loads(Path(result["report"]).with_suffix(".json").read_text())
    assert report["versions"]["deep_features"]["mode"] == "crossfit"

    failed = validate(settings, auc_floor=0.999, return_state=True)
    assert failed.is_failed()
    assert "below the floor" in failed.message
    # The failed run still wrote its predictions (one run more), nothing was lost.
    assert store.read("predictions")["run_id"].nunique() == 2
