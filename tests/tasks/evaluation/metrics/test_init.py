"""The metrics package exports each family's public functions under one name."""

from __future__ import annotations

import importlib

import tasks.evaluation.metrics as metrics

FAMILIES = {
    "roc": {"auc_ci", "delong_components", "delong_roc_variance", "delong_test"},
    "binary": {"classification_metrics", "model_set_metrics", "wilson_ci", "youden_threshold"},
    "calibration": {"calibration"},
    "decision": {"decision_curve"},
    "drift": {"drift_bins", "psi", "psi_permutation_test", "psi_table"},
}


def test_every_public_name_is_its_family_module_function():
    assert set(metrics.__all__) == set().union(*FAMILIES.values())
    for family, names in FAMILIES.items():
        module = importlib.import_module(f"tasks.evaluation.metrics.{family}")
        for name in names:
            assert getattr(metrics, name) is getattr(module, name), (family, name)
            assert getattr(module, name).__module__ == module.__name__


def test_old_import_path_keeps_working():
    from tasks.evaluation.metrics import delong_test, youden_threshold

    assert delong_test([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.8, 0.2])["diff"] == 1.0
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.35
