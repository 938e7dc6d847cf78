"""Quarantine rows: typed like the table, with an id that is stable for the same problem."""

from __future__ import annotations

from tasks.data.quarantine import quarantine_frame
from tasks.data.tables import QUARANTINE

ENTRY = {
    "case_id": "C1",
    "manifest_row": 3,
    "column": "bmus_mask",
    "file": "/d/c1.png",
    "reason": "mask is empty (no foreground pixel)",
}


def test_rows_have_the_tables_columns_and_dtypes():
    frame = quarantine_frame([ENTRY], "ingest", "/d/manifest.csv", "run-1")
    assert list(frame.columns) == list(QUARANTINE.dtypes)
    assert {c: str(t) for c, t in frame.dtypes.items()} == dict(QUARANTINE.dtypes)
    row = frame.iloc[0]
    assert (row["stage"], row["case_id"], row["manifest_row"]) == ("ingest", "C1", 3)
    assert (row["column"], row["file"], row["reason"]) == (
        "bmus_mask",
        "/d/c1.png",
        "mask is empty (no foreground pixel)",
    )
    assert (row["manifest"], row["run_id"]) == ("/d/manifest.csv", "run-1")
    assert row["detected_at"].tzname() == "UTC"
    assert len(row["quarantine_id"]) == 24


def test_the_id_is_stable_across_runs_and_differs_per_problem():
    first = quarantine_frame([ENTRY], "ingest", "m.csv", "run-1")["quarantine_id"].iloc[0]
    # Another run finding the same problem: the same id, so the store keeps one row.
    assert quarantine_frame([ENTRY], "ingest", "m.csv", "run-2")["quarantine_id"].iloc[0] == first
    for other in (
        quarantine_frame([ENTRY], "radiomics", "m.csv", "run-1"),
        quarantine_frame([ENTRY], "ingest", "n.csv", "run-1"),
        quarantine_frame([ENTRY | {"reason": "other"}], "ingest", "m.csv", "run-1"),
        quarantine_frame([ENTRY | {"manifest_row": 4}], "ingest", "m.csv", "run-1"),
    ):
        assert other["quarantine_id"].iloc[0] != first


def test_missing_fields_are_null_and_no_entries_give_an_empty_typed_frame():
    frame = quarantine_frame([{"case_id": "C2", "reason": "failed"}], "embeddings", None, "r")
    row = frame.iloc[0]
    assert row[["manifest_row", "column", "file", "manifest"]].isna().all()
    empty = quarantine_frame([], "ingest", None, "r")
    assert empty.empty and list(empty.columns) == list(QUARANTINE.dtypes)
    assert str(empty["manifest_row"].dtype) == "Int64"


def test_entries_may_be_any_iterable_of_mappings():
    frame = quarantine_frame((dict(ENTRY, case_id=f"C{i}") for i in range(3)), "ingest", None, "r")
    assert frame["case_id"].tolist() == ["C0", "C1", "C2"]
    assert frame["quarantine_id"].nunique() == 3
