"""Hostile CSV manifests and mutated DICOM bytes through ingest validation: every row
read is stored or quarantined with a reason, and a manifest that cannot be parsed at all
is a :class:`~tasks.data.validate.ManifestError` naming it; nothing else escapes.

- CSV: Hypothesis rows (the Parquet fuzz test's strategies: odd Unicode, control
  characters, NUL, path traversal, the pool's hostile files) written as CSV by pandas, and
  raw CSV text with a hostile structure (unbalanced quotes, ragged rows, duplicate or
  blank headers, a BOM, CR line ends, Latin-1 bytes, formula cells, header-only, empty).
- DICOM: a valid small ultrasound DICOM (pydicom) with its header elements set to hostile
  values (sizes 0 or 65535, frames, bits, samples, photometric, spacing, transfer syntax,
  pixel data cut or grown) or its bytes flipped, cut or spliced, one file per manifest row
  with a valid mask, through :func:`~tasks.data.validate.validate_manifest` (header checks
  and a real decode of what passes them).

``SLN_FUZZ_CASES`` sizes both as in ``test_fuzz.py`` (CSV rows: half of it, DICOM
files: a fifth); the counts go to ``SLN_FUZZ_REPORT`` (``.csv_dicom.json`` appended).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.config import Settings
from tasks.data import uris
from tasks.data.validate import ManifestError, validate_manifest
from tests.reliability.test_fuzz import (  # the Parquet fuzz test's pool and rows
    CASES,
    REASONS,
    clean_row,
    hostile_row,
    pool,  # noqa: F401 (a fixture)
)
from tests.tasks.data import dicom_files

BATCH = 20
CSV_EXAMPLES = max(1, CASES // 2 // BATCH)
DICOM_FILES = 10  # per example (one manifest)
DICOM_EXAMPLES = max(1, CASES // 5 // DICOM_FILES)
SHAPE = (24, 32)
TOTALS: Counter[str] = Counter()
OTHER: set[str] = set()
REFUSED: set[str] = set()  # why whole manifests were refused (for the report)
# Reasons of DICOM headers and CSV structure (before the Parquet test's groups).
DICOM_REASONS = [
    ("no pixels", r"has no pixels"),
    ("channels", r"(channels|samples) per pixel"),
    ("manifest without a required column", r"^manifest has no column"),
    ("DICOM colour model", r"photometric interpretation .* not supported"),
    ("DICOM transfer syntax", r"transfer syntax .* cannot be decoded"),
]


def _kind(reason: str) -> str:
    groups = DICOM_REASONS + REASONS
    return next((name for name, pattern in groups if re.search(pattern, reason)), "other")


def _check(validated, rows: int | None, root: Path) -> None:
    """Every row read stored or quarantined with a reason; stored paths inside the root."""
    cohort, quarantine = validated.cohort, validated.quarantine
    if rows is not None:
        assert validated.rows_in == rows
    assert len(cohort) + quarantine["manifest_row"].nunique() == validated.rows_in
    assert quarantine["reason"].notna().all() and (quarantine["reason"].str.len() > 0).all()
    for column in ("bmus_image", "bmus_mask", "cdus_image", "bmus_mask_reader2"):
        stored = cohort[column].dropna() if column in cohort else []
        assert all(uris.within(str(p), [str(root)]) for p in stored), column
    assert all(c == unicodedata.normalize("NFC", c) for c in cohort["case_id"])
    first = quarantine.drop_duplicates("manifest_row")["reason"]
    TOTALS["rows"] += validated.rows_in
    TOTALS["stored"] += len(cohort)
    TOTALS["quarantined"] += quarantine["manifest_row"].nunique()
    TOTALS.update(f"quarantined: {_kind(r)}" for r in first)
    OTHER.update(r[:120] for r in first if _kind(r) == "other")


def _validate(manifest: Path, roots: Settings, rows: int | None, root: Path) -> None:
    try:
        validated = validate_manifest(str(manifest), roots, "fuzz")
    except ManifestError as exc:  # the whole manifest unreadable: named, never a crash
        assert str(manifest) in str(exc)
        TOTALS["manifests refused"] += 1
        REFUSED.add(str(exc).replace(str(manifest), "<manifest>")[:100])
        return
    TOTALS["manifests read"] += 1
    _check(validated, rows, root)


# -- CSV --------------------------------------------------------------------------------
HEADER = "case_id,patient_id,site,label,bmus_image,bmus_mask,exam_date"
GOOD = "C{i},P{i},A,1,grey.png,mask.png,2023-01-0{d}"
STRUCTURES = [
    "",  # empty file
    HEADER,  # header only
    HEADER + "\n" + GOOD + ",extra,cells",  # ragged: too many cells
    HEADER + "\n" + "C{i},P{i}",  # ragged: too few
    HEADER + "\n" + '"C{i},P{i},A,1,grey.png,mask.png,2023-01-01',  # quote never closed
    HEADER + "\n" + 'C"{i}",P{i},A,1,grey.png,mask.png,2023-01-01',  # quote mid-cell
    "\ufeff" + HEADER + "\n" + GOOD,  # BOM before the header
    HEADER.replace("\n", "\r") + "\r" + GOOD + "\r",  # old Mac line ends
    HEADER + "\r\n" + GOOD + "\r\n",  # CRLF
    HEADER + ",case_id\n" + GOOD + ",C999",  # duplicate header
    HEADER + ",\n" + GOOD + ",",  # blank header
    " case_id , patient_id ,site,label,bmus_image,bmus_mask,exam_date\n" + GOOD,
    HEADER + "\n" + "=cmd|' /C calc'!A0,P{i},A,1,grey.png,mask.png,2023-01-01",  # formula
    HEADER + "\n" + "@SUM(1+1),+P{i},-A,1,grey.png,mask.png,2023-01-01",
    HEADER + "\n" + GOOD + "\n\n\n",  # blank lines
    HEADER + "\n" + "C{i},P{i},A,1,grey.png,mask.png,\x00",  # NUL cell
    HEADER + "\n" + 'C{i},P{i},"A\nB",1,grey.png,mask.png,2023-01-01',  # newline in a cell
    HEADER + "\n" + "C{i},P{i},A\r,1,grey.png,mask.png,2023-01-01",  # a bare CR: a line end
    "case_id;patient_id;site;label;bmus_image;bmus_mask\nC{i};P{i};A;1;grey.png;mask.png",
    "\t".join(HEADER.split(",")) + "\n" + "\t".join(GOOD.split(",")),
]
LATIN1 = HEADER + "\n" + "Caf\xe9{i},P{i},A,1,grey.png,mask.png,2023-01-01"  # not UTF-8


@pytest.fixture(scope="module")
def roots(pool, tmp_path_factory) -> Settings:  # noqa: F811 (the imported fixture)
    return Settings(data_roots=[str(pool)], store=str(tmp_path_factory.mktemp("store")))


def test_hostile_csv_manifests_are_stored_quarantined_or_refused_by_name(pool, roots):  # noqa: F811
    manifest = pool / "manifest.csv"
    started = time.perf_counter()
    TOTALS.clear()
    REFUSED.clear()

    @settings(
        max_examples=CSV_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.lists(st.one_of(clean_row, hostile_row), min_size=BATCH, max_size=BATCH),
        st.lists(st.sampled_from(STRUCTURES), min_size=1, max_size=3),
        st.integers(1, 9),
    )
    def batch(drawn: list[dict], structures: list[str], i: int) -> None:
        # RFC 4180 CSV of hostile cells (CRLF ends, so a lone CR in a cell is quoted: with
        # "\n" ends pandas leaves it bare and any reader takes it for a line break, see
        # STRUCTURES): every row must come back as one row.
        frame = pd.DataFrame(drawn).astype("string")
        frame.to_csv(manifest, index=False, lineterminator="\r\n")
        _validate(manifest, roots, len(drawn), pool)
        # Hostile structure: a clear refusal, or every row read judged.
        for text in structures:
            manifest.write_bytes(text.format(i=i, d=i).encode())
            _validate(manifest, roots, None, pool)
        manifest.write_bytes(LATIN1.format(i=i).encode("latin-1"))
        _validate(manifest, roots, None, pool)

    batch()
    _report("csv", started)
    assert TOTALS["rows"] >= CSV_EXAMPLES * BATCH
    assert TOTALS["stored"] > 0 and TOTALS["quarantined"] > 0
    assert TOTALS["quarantined: other"] == 0, sorted(OTHER)[:10]


# -- DICOM ------------------------------------------------------------------------------
HEADER_VALUES = {
    "Rows": [0, 1, 23, 25, 65535],
    "Columns": [0, 1, 31, 33, 65535],
    "NumberOfFrames": [0, 2, 1000, "x"],
    "SamplesPerPixel": [0, 2, 3, 4, 5, 65535],
    "BitsAllocated": [0, 1, 7, 12, 16, 32, 64],
    "BitsStored": [0, 9, 16, 40],
    "HighBit": [0, 6, 15, 63],
    "PixelRepresentation": [1, 2],
    "PlanarConfiguration": [1, 7],
    "PhotometricInterpretation": [
        "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "MONOCHROME1", "HSV", "", "X" * 16,
    ],
    "PixelSpacing": [[0, 0], [-1, -1], [1e-9, 1e-9], [1e9, 1e9], [0.1], [0.1, 0.1, 0.1]],
    "ImagerPixelSpacing": [[0, 0], [0.05, 0.5]],
}  # fmt: skip
SYNTAXES = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.2", "1.2.3.4"]


def _with_header(base: bytes, keyword: str, value: object) -> bytes | None:
    """``base`` with one element set to a hostile value (None when pydicom will not write it)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(base))
    try:
        if keyword == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        elif keyword == "PixelData":
            ds.PixelData = ds.PixelData[: int(value)] if value >= 0 else ds.PixelData * 3
        else:
            setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
    except Exception:  # noqa: BLE001 (a value pydicom refuses to write is no test case)
        return None
    return out.getvalue()


header_mutation = st.one_of(
    st.sampled_from(sorted(HEADER_VALUES)).flatmap(
        lambda k: st.tuples(st.just(k), st.sampled_from(HEADER_VALUES[k]))
    ),
    st.tuples(st.just("TransferSyntaxUID"), st.sampled_from(SYNTAXES)),
    st.tuples(st.just("PixelData"), st.sampled_from([-1, 0, 1, 100, 767])),
)
byte_mutation = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)))),
    st.tuples(st.just("cut"), st.integers(0, 10**6)),
    st.tuples(st.just("splice"), st.tuples(st.integers(0, 10**6), st.binary(max_size=64))),
)
mutation = st.one_of(header_mutation, byte_mutation, st.just(("none", None)))


def _mutate(base: bytes, change: tuple[str, object]) -> bytes:
    kind, arg = change
    if kind == "none":
        return base
    if kind == "flip":
        data = bytearray(base)
        for offset, xor in arg:
            data[offset % len(data)] ^= xor
        return bytes(data)
    if kind == "cut":
        return base[: arg % len(base)]
    if kind == "splice":
        offset, junk = arg
        offset %= len(base)
        return base[:offset] + junk + base[offset:]
    return _with_header(base, kind, arg) or base


def test_mutated_dicom_files_are_stored_or_quarantined_with_a_reason(pool, roots):  # noqa: F811
    grey = dicom_files.speckle(SHAPE)
    mask = (dicom_files.disk(SHAPE, (12, 16), 7) * 255).astype(np.uint8)
    dicom_files.write_png(pool / "dicom_mask.png", mask)
    base = dicom_files.write(pool / "dicom_base.dcm", grey).read_bytes()
    manifest = pool / "dicom_manifest.csv"
    started = time.perf_counter()
    TOTALS.clear()
    REFUSED.clear()

    @settings(
        max_examples=DICOM_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(mutation, min_size=DICOM_FILES, max_size=DICOM_FILES))
    def batch(changes: list[tuple[str, object]]) -> None:
        rows = []
        for k, change in enumerate(changes):
            name = f"fuzz_{k}.dcm"
            (pool / name).write_bytes(_mutate(base, change))
            TOTALS[f"mutation: {change[0]}"] += 1
            rows.append(
                {
                    "case_id": f"D{k}",
                    "patient_id": f"P{k}",
                    "site": "A",
                    "label": k % 2,
                    "bmus_image": name,
                    "bmus_mask": "dicom_mask.png",
                }
            )
        pd.DataFrame(rows).to_csv(manifest, index=False)
        _validate(manifest, roots, len(rows), pool)

    batch()
    _report("dicom", started)
    assert TOTALS["manifests refused"] == 0  # a bad file never sinks the manifest
    assert TOTALS["rows"] >= DICOM_EXAMPLES * DICOM_FILES
    assert TOTALS["stored"] > 0 and TOTALS["quarantined"] > 0
    assert TOTALS["quarantined: other"] == 0, sorted(OTHER)[:10]


def _report(name: str, started: float) -> None:
    report = dict(TOTALS) | {
        "wall_s": round(time.perf_counter() - started, 1),
        "refused": sorted(REFUSED),
    }
    print(name, json.dumps(report, sort_keys=True))
    if out := os.environ.get("SLN_FUZZ_REPORT"):
        Path(f"{out}.{name}.json").write_text(json.dumps(report, indent=1, sort_keys=True))
