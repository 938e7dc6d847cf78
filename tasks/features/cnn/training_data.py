"""Training data of the fine-tuning step: which rows it may see, and how they are split.

Reads ``cohort`` rows (their labels, splits, patient keys and file hashes; a file is hashed
only when its row lacks the hash). Writes nothing. The leakage guard, the early-stopping
fold and the hash of the training data recorded in a fine-tuned model's lineage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tasks.features.cnn.crops import file_sha256
from tasks.features.imaging import case_value


def check_training(cases: Sequence[Mapping[str, Any]]) -> None:
    """Leakage guard: fine-tuning sees labelled training rows only."""
    if not cases:
        raise ValueError("no training cases to fine-tune on")
    wrong = [
        f"{c.get('case_id')} (split={case_value(c, 'split')}, label={case_value(c, 'label')})"
        for c in cases
        if case_value(c, "split") != "training" or case_value(c, "label") is None
    ]
    if wrong:
        raise ValueError(
            "fine-tuning takes labelled training rows only; got " + ", ".join(wrong[:10])
        )
    labels = {int(case_value(c, "label")) for c in cases}
    if labels != {0, 1}:
        raise ValueError(f"fine-tuning needs both classes; the training rows have {labels}")


def early_stopping_fold(
    cases: Sequence[Mapping[str, Any]], share: float, seed: int
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Split training rows into (fit, early-stopping) parts, by patient, per label.

    A patient's lesions stay together (``patient_key``; ``case_id`` where it is missing), so
    the early-stopping loss is not flattered by a sibling lesion. Patients are drawn per
    label (a patient's label is its highest) so both parts keep the class balance; a label
    with a single patient stays in the fit part. Seeded, so a retrain draws the same fold.
    """
    groups: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        key = str(case_value(case, "patient_key") or case["case_id"])
        groups.setdefault(key, []).append(i)
    strata: dict[int, list[str]] = {}
    # Patients in order of first appearance (the callers' case order), not by key value:
    # the draw must not depend on the secret pseudonym key.
    for key in groups:
        label = max(int(case_value(cases[i], "label")) for i in groups[key])
        strata.setdefault(label, []).append(key)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for label in sorted(strata):
        keys = strata[label]
        if len(keys) < 2:
            continue
        n = min(max(round(share * len(keys)), 1), len(keys) - 1)
        held.update(keys[j] for j in rng.permutation(len(keys))[:n])
    fit = [c for key, idx in groups.items() if key not in held for c in (cases[i] for i in idx)]
    val = [c for key, idx in groups.items() if key in held for c in (cases[i] for i in idx)]
    return fit, val


def training_data_sha256(cases: Sequence[Mapping[str, Any]]) -> str:
    """One hash of what the model learnt from: case ids, image and mask hashes, labels."""
    entries = sorted(
        (
            str(c["case_id"]),
            file_sha256(c, "bmus_image"),
            file_sha256(c, "bmus_mask"),
            file_sha256(c, "cdus_image"),
            int(case_value(c, "label")),
        )
        for c in cases
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
