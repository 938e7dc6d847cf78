"""Table specs: keys and timestamps are typed columns, ``typed()`` casts and orders."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.data.schema import FILE_COLUMNS
from tasks.data.tables import (
    COHORT,
    EMBEDDINGS,
    FEATURE_TABLES,
    PREDICTIONS,
    QUARANTINE,
    RADIOMICS,
    TABLES,
    TableSpec,
    current_cohort,
)


def test_the_five_tables_are_in_tables_by_name():
    assert TABLES == {
        "cohort": COHORT,
        "quarantine": QUARANTINE,
        "radiomics": RADIOMICS,
        "embeddings": EMBEDDINGS,
        "predictions": PREDICTIONS,
    }
    assert FEATURE_TABLES == (COHORT, RADIOMICS, EMBEDDINGS)


@pytest.mark.parametrize("spec", list(TABLES.values()), ids=list(TABLES))
def test_keys_and_timestamp_are_typed_columns(spec: TableSpec):
    assert spec.keys and set(spec.keys) <= set(spec.dtypes)
    assert len(set(spec.keys)) == len(spec.keys)
    assert spec.dtypes[spec.timestamp] == "datetime64[us, UTC]"
    assert spec.timestamp not in spec.keys  # a re-run's rows must match the stored ones


@pytest.mark.parametrize("spec", list(TABLES.values()), ids=list(TABLES))
def test_a_spec_is_frozen(spec: TableSpec):
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.dtypes["case_id"] = "int64"  # type: ignore[index]


def test_the_cohort_has_a_path_and_a_hash_per_file_column():
    for col in FILE_COLUMNS:
        assert COHORT.dtypes[col] == COHORT.dtypes[f"{col}_sha256"] == "string"
    assert "patient_id" not in COHORT.dtypes  # only the pseudonymous patient_key is stored


def test_typed_casts_orders_and_fills_missing_columns():
    frame = pd.DataFrame(
        {
            "detected_at": ["2024-05-01T10:00:00+02:00"],
            "manifest_row": [3.0],
            "extra": ["dropped"],
            "case_id": ["C1"],
            "quarantine_id": ["q1"],
        },
        index=[7],
    )
    out = QUARANTINE.typed(frame)
    assert list(out.columns) == list(QUARANTINE.dtypes)
    assert {c: str(t) for c, t in out.dtypes.items()} == dict(QUARANTINE.dtypes)
    assert out.index.tolist() == [0]
    assert out.at[0, "manifest_row"] == 3
    assert out.at[0, "detected_at"] == pd.Timestamp("2024-05-01T08:00:00", tz="UTC")
    assert out[["stage", "reason", "file"]].isna().all(axis=None)


def test_typed_on_an_empty_frame_gives_the_empty_table():
    out = COHORT.typed(pd.DataFrame())
    assert out.empty and list(out.columns) == list(COHORT.dtypes)
    assert str(out["label"].dtype) == "Int8"
    assert str(out["pixel_spacing_mm"].dtype) == "float64"


def test_typed_refuses_a_value_that_does_not_fit_its_dtype():
    with pytest.raises((TypeError, ValueError)):
        COHORT.typed(pd.DataFrame({"label": ["N1"]}))


def test_typed_leaves_the_callers_frame_alone():
    frame = pd.DataFrame({"case_id": ["C1"], "manifest_row": [3.0]})
    QUARANTINE.typed(frame)
    assert frame.columns.tolist() == ["case_id", "manifest_row"]
    assert str(frame["manifest_row"].dtype) == "float64"


def test_current_cohort_keeps_the_latest_version_of_each_case():
    at = pd.to_datetime(["2024-01-01", "2024-03-01", "2024-02-01", "2024-02-01"], utc=True)
    stored = pd.DataFrame(
        {
            "case_id": ["B", "B", "A", "A"],
            "case_version": ["b-old", "b-new", "a-1", "a-2"],
            "ingested_at": at,
        }
    )
    current = current_cohort(stored)
    assert current["case_id"].tolist() == ["A", "B"]
    # Same commit time: the version order decides, so the choice is deterministic.
    assert current["case_version"].tolist() == ["a-2", "b-new"]
    assert current.index.tolist() == [0, 1]
    empty = pd.DataFrame(columns=["case_id"])
    assert current_cohort(empty) is empty
