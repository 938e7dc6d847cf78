"""Training data of fine-tuning: leakage guard, early-stopping fold, training-data hash."""

from __future__ import annotations

import pytest

from tasks.features.cnn.training_data import (
    check_training,
    early_stopping_fold,
    training_data_sha256,
)


def test_early_stopping_fold_is_grouped_stratified_and_seeded():
    cases = [
        {"case_id": f"C{i}", "patient_key": f"P{i // 2}", "label": (i // 2) % 2} for i in range(20)
    ]
    fit, val = early_stopping_fold(cases, 0.2, seed=3)
    assert len(fit) + len(val) == 20
    assert {c["patient_key"] for c in fit}.isdisjoint({c["patient_key"] for c in val})
    assert sorted(c["label"] for c in val) == [0, 0, 1, 1]  # one patient of each label
    again = early_stopping_fold(cases, 0.2, seed=3)[1]
    assert [c["case_id"] for c in again] == [c["case_id"] for c in val]


def test_check_training_needs_rows_of_both_classes():
    with pytest.raises(ValueError, match="no training cases"):
        check_training([])
    ones = [{"case_id": f"C{i}", "split": "training", "label": 1} for i in range(3)]
    with pytest.raises(ValueError, match="needs both classes"):
        check_training(ones)
    check_training([*ones, {"case_id": "C9", "split": "training", "label": 0}])


def test_training_data_hash_follows_content_not_order():
    rows = [
        {"case_id": f"C{i}", "label": i % 2, "bmus_image": f"/x/{i}.png"}
        | {"bmus_image_sha256": f"i{i}", "bmus_mask": f"/x/m{i}.png", "bmus_mask_sha256": f"m{i}"}
        for i in range(4)
    ]
    sha = training_data_sha256(rows)
    assert len(sha) == 64 and training_data_sha256(rows[::-1]) == sha
    relabelled = [rows[0] | {"label": 1}, *rows[1:]]
    assert training_data_sha256(relabelled) != sha
    remasked = [rows[0] | {"bmus_mask_sha256": "other"}, *rows[1:]]
    assert training_data_sha256(remasked) != sha
