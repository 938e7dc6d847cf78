"""A row's files: the re-ingest fast path takes only files whose path, frame and bytes are
those the stored version was validated with, and the pixel size only where it was kept."""

from __future__ import annotations

import pytest

from tasks.config import Settings
from tasks.data.headers import Limits
from tasks.data.row_files import Problem, _stored_file_spacing, unchanged_files
from tasks.data.schema import FILE_COLUMNS
from tasks.data.validate import validate_manifest


@pytest.fixture
def stored(tiny_cohort) -> dict[str, dict]:
    """The validated cohort of the tiny manifest, as ingest passes it: case id -> row."""
    cohort = validate_manifest(str(tiny_cohort), Settings(), "r").cohort
    return cohort.set_index("case_id").to_dict("index")


def _files(previous: dict) -> dict[str, str]:
    return {col: previous[col] for col in FILE_COLUMNS if isinstance(previous.get(col), str)}


def _fast(files: dict, previous: dict) -> tuple[bool, dict, list[Problem]]:
    """The fast path for a row of ``files`` (manifest spacing 0.1, no frames)."""
    record = {"pixel_spacing_mm": 0.1, "bmus_frame": None, "cdus_frame": None}
    problems: list[Problem] = []
    taken = unchanged_files(files, record, previous, Limits.defaults(), problems)
    return taken, record, problems


def test_unchanged_files_are_taken_without_a_decode(stored, decoded):
    previous = stored["T002"]
    taken, record, problems = _fast(_files(previous), previous)
    assert taken and problems == [] and decoded == []
    for col, uri in _files(previous).items():
        assert (record[col], record[f"{col}_sha256"]) == (uri, previous[f"{col}_sha256"])
    assert (record["pixel_spacing_mm"], record["pixel_spacing_source"]) == (0.1, "manifest")


@pytest.mark.parametrize(
    "change",
    [
        {"bmus_mask_sha256": "0" * 64},  # the bytes changed since
        {"bmus_frame": 2},  # another frame of the file
        {"cdus_image": None},  # a file the stored version did not have
    ],
    ids=["bytes", "frame", "columns"],
)
def test_anything_else_is_left_to_the_full_read(stored, decoded, change):
    previous = {**stored["T002"], **change}
    taken, record, problems = _fast(_files(stored["T002"]), previous)
    assert not taken and problems == [] and decoded == []
    assert not any(col in record for col in FILE_COLUMNS)  # nothing half-filled


def test_the_stored_pixel_size_is_used_only_where_it_came_from_the_file():
    nrrd, png = "/data/a.nrrd", "/data/a.png"
    found = {"pixel_spacing_mm": 0.07, "pixel_spacing_source": "us_region"}
    given = {"pixel_spacing_mm": 0.1, "pixel_spacing_source": "manifest"}
    assert _stored_file_spacing(nrrd, found) == (0.07, "us_region")
    assert _stored_file_spacing(nrrd, {"pixel_spacing_source": "none"}) == (None, "none")
    # The manifest's value was used: a header's own was only compared with it, not kept.
    assert _stored_file_spacing(nrrd, given) is None
    assert _stored_file_spacing(png, given) == (None, "none")  # a PNG has none
