"""The data model's names: manifest columns, mask variants and the perturbed mask's id."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from tasks.data.schema import (
    FILE_COLUMNS,
    MANIFEST_COLUMNS,
    MASK_VARIANTS,
    PERTURBATION_VERSION,
    REPEAT_COLUMNS,
    REQUIRED_COLUMNS,
    case_variants,
    known,
    perturbed_mask_sha,
)
from tests.tasks.data.rows import case_row


def test_perturbed_mask_id_is_derived_from_reader1_and_the_version():
    expected = hashlib.sha256(f"abc:perturbed:{PERTURBATION_VERSION}".encode()).hexdigest()
    assert perturbed_mask_sha("abc") == expected
    assert PERTURBATION_VERSION == "v1"
    assert perturbed_mask_sha("abc") != perturbed_mask_sha("abd")


def test_perturbed_variant_only_with_the_flag_and_without_real_repeats():
    names = lambda case, perturb: [v.name for v in case_variants(case, perturb)]  # noqa: E731
    assert names(case_row(), False) == ["reader1"]
    assert names(case_row(), True) == ["reader1", "perturbed"]
    assert names(case_row(reader2=True), True) == ["reader1", "reader2"]
    assert names(case_row(repeat=True), True) == ["reader1", "repeat"]
    assert names(case_row(reader2=True, repeat=True), True) == ["reader1", "reader2", "repeat"]
    for empty in (None, "", float("nan"), pd.NA):  # no reader-1 mask, nothing to perturb
        assert names({**case_row(), "bmus_mask": empty}, True) == []
    # A repeat column that is present but empty is no repeat.
    assert names({**case_row(), "bmus_mask_repeat": ""}, True) == ["reader1", "perturbed"]

    perturbed = case_variants(case_row(), True)[1]
    assert perturbed.column == "bmus_mask"  # generated from reader 1's file
    assert perturbed.mask_sha256 == perturbed_mask_sha("m1-C1")
    # A row without hashes (a bare test row) still gets the variant, without an id.
    bare = {"case_id": "X", "bmus_mask": "/d/x.png"}
    assert case_variants(bare, True)[1].mask_sha256 is None


def test_manifest_variants_carry_their_column_and_file_hash():
    variants = case_variants(case_row(reader2=True), False)
    assert [(v.column, v.mask_sha256) for v in variants] == [
        ("bmus_mask", "m1-C1"),
        ("bmus_mask_reader2", "r2-C1"),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        (float("nan"), False),
        (pd.NA, False),
        (pd.NaT, False),
        (np.nan, False),
        ("", False),
        ("  ", False),
        ("x", True),
        (0, True),
        (0.0, True),
    ],
)
def test_known(value, expected):
    assert known(value) is expected


def test_the_manifest_columns_are_consistent():
    assert set(REQUIRED_COLUMNS) <= set(MANIFEST_COLUMNS)
    assert set(FILE_COLUMNS) <= set(MANIFEST_COLUMNS)
    # Every mask names an image of the manifest whose grid it must match.
    assert {v for v in FILE_COLUMNS.values() if v} <= {c for c, v in FILE_COLUMNS.items() if not v}
    assert set(MASK_VARIANTS.values()) <= set(FILE_COLUMNS)
    assert set(REPEAT_COLUMNS) == set(MASK_VARIANTS.values()) - {MASK_VARIANTS["reader1"]}
    assert len(MANIFEST_COLUMNS) == len(set(MANIFEST_COLUMNS))
