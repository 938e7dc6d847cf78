"""Hostile manifests and image bytes through ingest validation: every case is stored or
quarantined with a reason, nothing escapes, memory stays bounded.

Each Hypothesis example is a Parquet manifest of ``BATCH`` rows (Parquet keeps any string,
NUL and lone odd code points included) drawn from random and hostile values: odd Unicode,
control characters, NFC/NFD twins, duplicate ids, missing values, path traversal
(``../../etc/passwd``, absolute paths and URIs outside the data root) and a pool of image
files (valid small PNGs grey/RGB/RGBA/16-bit, JPEG, one-slice and multi-slice NIfTI,
truncated PNG/JPEG, headers promising 900 M pixels, random bytes, colour and grey masks).
Each manifest goes through :func:`tasks.data.validate.validate_manifest` (schema, ids,
header checks, a real read of every file that passes, masks, duplicates, splits) with no
Prefect server. ``SLN_FUZZ_CASES`` rows in all (``make fuzz``: 10000); the counts go to
``SLN_FUZZ_REPORT`` when set.
"""

from __future__ import annotations

import json
import os
import re
import resource
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.config import Settings
from tasks.data import uris
from tasks.data.validate import validate_manifest
from tests.tasks.data import hostile_files as hostile

CASES = int(os.environ.get("SLN_FUZZ_CASES", "1000"))
BATCH = 20
EXAMPLES = max(1, -(-CASES // BATCH))
# Growth of this process's resident memory over the test (the suite before it may already
# have a large peak): a decoded 30000 x 30000 header alone would add 900 MB.
RSS_GROWTH_LIMIT_MB = 600
SHAPE = (40, 56)

# Quarantine reasons, grouped for the counts (values stripped: the first pattern that fits).
REASONS = [
    ("missing value", r"^missing value"),
    ("outside data roots", r"outside the configured data roots"),
    ("file not found", r"^file not found"),
    ("vanished", r"vanished"),
    ("truncated", r"^truncated file"),
    ("over max_image_side", r"max_image_side"),
    ("over max_image_pixels", r"max_image_pixels"),
    ("over max_frames", r"max_frames"),
    ("spacing out of range", r"plausible range"),
    ("spacing disagrees with file", r"disagrees with the file"),
    ("unreadable image", r"^unreadable image"),
    ("colour mask", r"colour channels differ"),
    ("mask size", r"does not match the image size"),
    ("mask not binary", r"not binary"),
    ("mask empty", r"mask is empty"),
    ("mask without image", r"mask given without"),
    ("bad id", r"(holds control|longer than \d+ characters)"),
    ("duplicate case_id", r"duplicate case_id"),
    ("bad label", r"^label must be"),
    ("bad exam_date", r"^exam_date must be"),
    ("bad pixel_spacing_mm", r"^pixel_spacing_mm must be"),
    ("bad split", r"^split must be"),
    ("bad frame", r"frame"),
    ("patient split leak", r"split|testing"),
]
TOTALS: Counter[str] = Counter()
OTHER: set[str] = set()  # reasons no pattern fits (the test fails on them: name them)


def _kind(reason: str) -> str:
    return next((name for name, pattern in REASONS if re.search(pattern, reason)), "other")


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """The data root: one file of each kind, and a file just outside it."""
    root = tmp_path_factory.mktemp("fuzz") / "root"
    root.mkdir()
    grey, mask = hostile.speckle(SHAPE), hostile.disk(SHAPE)
    files = {
        "grey.png": hostile.png(grey),
        "rgb.png": hostile.png(np.stack([grey, grey // 2, grey], -1)),
        "rgba.png": hostile.png(np.stack([grey, grey, grey, np.full_like(grey, 200)], -1)),
        "grey16.png": hostile.png16(grey.astype(np.uint16) * 257),
        "grey.jpg": hostile.jpeg(grey),
        "mask.png": hostile.png(mask),
        "mask01.png": hostile.png(mask // 255),
        "mask_rgba.png": hostile.png(hostile.rgba(mask), "RGBA"),
        "mask_drawn.png": hostile.png(hostile.rgba(mask, disagree=True), "RGBA"),
        "mask_empty.png": hostile.png(np.zeros(SHAPE, np.uint8)),
        "mask_grey.png": hostile.png(grey),
        "mask_small.png": hostile.png(hostile.disk((10, 12))),
        "half.png": hostile.cut(hostile.png(grey)),
        "half.jpg": hostile.cut(hostile.jpeg(grey)),
        "huge.png": hostile.huge_png(30000, 30000),
        "big.png": hostile.huge_png(5000, 5000),
        "random.png": np.random.default_rng(0).bytes(512),
        "random.bin": np.random.default_rng(1).bytes(2048),
        "empty.png": b"",
        "text.jpg": b"not a jpeg at all",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    hostile.volume(root / "slice.nii.gz", grey[None], (0.1, 0.1, 1.0))
    hostile.volume(root / "mask_slice.nii", mask[None])
    hostile.volume(root / "cine.nii.gz", np.stack([grey] * 3))
    hostile.volume(root / "tiny_spacing.nii", grey[None], (1e-5, 1e-5, 1.0))
    (root / "folder.png").mkdir()
    (root.parent / "outside.png").write_bytes(files["grey.png"])
    return root


NAMES = [
    "grey.png", "rgb.png", "rgba.png", "grey16.png", "grey.jpg", "mask.png", "mask01.png",
    "mask_rgba.png", "mask_drawn.png", "mask_empty.png", "mask_grey.png", "mask_small.png",
    "half.png", "half.jpg", "huge.png", "big.png", "random.png", "random.bin", "empty.png",
    "text.jpg", "slice.nii.gz", "mask_slice.nii", "cine.nii.gz", "tiny_spacing.nii",
    "folder.png", "missing.png",
]  # fmt: skip
HOSTILE_PATHS = [
    "../outside.png", "../../etc/passwd", "/etc/passwd", "/etc/../etc/shadow",
    "file:///etc/passwd", "s3://another-bucket/grey.png", "~/grey.png", "./../root/../outside.png",
    "grey.png/../../outside.png", "grey.png\x00.txt", "C:\\Windows\\win.ini", "//server/share/x",
    "\u202egnp.yerg", "gre\u0301y.png", "",
]  # fmt: skip
ODD = [
    "Café", unicodedata.normalize("NFD", "Café"), "\u200b", "\ufeffBOM", "a\nb", "a\r\nb",
    "\x00", "'; DROP TABLE cohort; --", "<script>", "%s%s%n", "{0}", "nan", "NaN", "None",
    "null", " ", "\t", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ﬁ", "İ", "x" * 300, "\U0010ffff", "..", "/",
]  # fmt: skip

IMAGES = ["grey.png", "rgb.png", "rgba.png", "grey16.png", "grey.jpg", "slice.nii.gz"]
MASKS = ["mask.png", "mask01.png", "mask_rgba.png", "mask_slice.nii"]

ids = st.one_of(
    st.sampled_from([f"C{i}" for i in range(40)]),  # duplicates across and within rows
    st.sampled_from(ODD),
    st.text(max_size=20),
    st.none(),
)
values = st.one_of(st.none(), st.sampled_from(ODD), st.text(max_size=12))
paths = st.one_of(st.sampled_from(NAMES), st.sampled_from(HOSTILE_PATHS), st.text(max_size=15))
hostile_row = st.fixed_dictionaries(
    {
        "case_id": ids,
        "patient_id": st.one_of(ids, st.none()),
        "site": st.one_of(st.sampled_from(["A", "B", "Café"]), values),
        "exam_date": st.one_of(st.sampled_from(["2024-02-29", "2023-02-29", "2024-1-1"]), values),
        "label": st.one_of(st.sampled_from(["0", "1", "1.0", "2", "-0"]), values),
        "split": st.one_of(st.sampled_from(["training", "TESTING", "validation", "dev"]), values),
        "pixel_spacing_mm": st.one_of(
            st.sampled_from(["0.1", "0.08", "1e-9", "50", "inf", "-1", "0", "1e400"]), values
        ),
        "bmus_image": st.one_of(st.sampled_from(IMAGES), paths),
        "bmus_mask": st.one_of(st.sampled_from(MASKS), paths),
        "bmus_frame": st.one_of(st.none(), st.sampled_from(["1", "2", "0", "1.5", "9" * 30])),
        "cdus_image": st.one_of(st.none(), paths),
        "bmus_mask_reader2": st.one_of(st.none(), paths),
        "PatientName": st.one_of(st.none(), st.text(max_size=8)),
        "pixel_spacing": st.one_of(st.none(), values),  # a misspelt optional column
    }
)

# Half the rows are clean apart from their files, so the files' own checks are reached.
clean_row = st.fixed_dictionaries(
    {
        "case_id": st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=6, max_size=12),
        "site": st.sampled_from(["A", "B"]),
        "label": st.sampled_from(["0", "1", None]),
        "pixel_spacing_mm": st.sampled_from([None, "0.1", "0.08"]),
        "bmus_image": st.one_of(st.sampled_from(IMAGES), st.sampled_from(NAMES + HOSTILE_PATHS)),
        "bmus_mask": st.one_of(st.sampled_from(MASKS), st.sampled_from(NAMES + HOSTILE_PATHS)),
        "cdus_image": st.one_of(st.none(), st.sampled_from(["rgb.png", "grey.jpg", "half.jpg"])),
        "cdus_mask": st.one_of(st.none(), st.sampled_from(["mask.png", "mask_drawn.png"])),
    }
)
rows = st.lists(st.one_of(clean_row, hostile_row), min_size=BATCH, max_size=BATCH)


def test_every_fuzzed_case_is_stored_or_quarantined_with_a_reason(pool, tmp_path_factory):
    roots = Settings(data_roots=[str(pool)], store=str(tmp_path_factory.mktemp("store")))
    manifest = pool / "manifest.parquet"
    started = time.perf_counter()
    process = psutil.Process()
    rss_start = process.memory_info().rss

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(rows)
    def batch(drawn: list[dict]) -> None:
        pd.DataFrame(drawn).astype("string").to_parquet(manifest)
        validated = validate_manifest(str(manifest), roots, "fuzz")
        cohort, quarantine = validated.cohort, validated.quarantine
        assert validated.rows_in == len(drawn)
        # Every row: stored, or quarantined with a reason (duplicates included).
        assert len(cohort) + quarantine["manifest_row"].nunique() == len(drawn)
        assert quarantine["reason"].notna().all() and (quarantine["reason"].str.len() > 0).all()
        for column in ("bmus_image", "bmus_mask", "cdus_image", "bmus_mask_reader2"):
            stored = cohort[column].dropna() if column in cohort else []
            assert all(uris.within(str(p), [str(pool)]) for p in stored), column
        assert all(c == unicodedata.normalize("NFC", c) for c in cohort["case_id"])
        TOTALS["cases"] += len(drawn)
        TOTALS["stored"] += len(cohort)
        TOTALS["quarantined"] += quarantine["manifest_row"].nunique()
        first = quarantine.drop_duplicates("manifest_row")["reason"]
        TOTALS.update(f"quarantined: {_kind(r)}" for r in first)
        OTHER.update(r[:120] for r in first if _kind(r) == "other")
        growth_mb = (process.memory_info().rss - rss_start) / 2**20
        assert growth_mb < RSS_GROWTH_LIMIT_MB, f"RSS grew {growth_mb:.0f} MB"

    batch()
    TOTALS["crashes"] += 0  # an escaped exception fails the test before this line
    report = dict(TOTALS) | {
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if out := os.environ.get("SLN_FUZZ_REPORT"):
        Path(out).write_text(json.dumps(report, indent=1, sort_keys=True))
    assert TOTALS["cases"] >= CASES
    assert TOTALS["stored"] > 0 and TOTALS["quarantined"] > 0
    assert TOTALS["quarantined: other"] == 0, sorted(OTHER)[:10]
