"""The data model's names: manifest columns, splits, mask variants.

One definition for every column and set name the system knows; every stage imports them
from here (the manifest schema, the split names, which masks a case is measured with).
"""

from __future__ import annotations

import difflib
import hashlib
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

SPLITS = ("training", "validation", "testing")

# The manifest schema: one typed definition for every column the system knows.
REQUIRED_COLUMNS = ("case_id", "site", "bmus_image", "bmus_mask")
# Files and the image whose grid a mask must match (None: an image itself).
FILE_COLUMNS: dict[str, str | None] = {
    "bmus_image": None,
    "bmus_mask": "bmus_image",
    "cdus_image": None,
    "cdus_mask": "cdus_image",
    "bmus_mask_reader2": "bmus_image",
    "bmus_mask_repeat": "bmus_image",
}
MANIFEST_COLUMNS = (
    "case_id",
    "patient_id",
    "site",
    "exam_date",
    "label",
    "split",
    *FILE_COLUMNS,
    "pixel_spacing_mm",
)
# DICOM cine loops: the column naming the frame (1-based, as viewers number them) of each
# image. Optional: a manifest of one-frame files (what the writers here emit) leaves them out.
FRAME_COLUMNS = {"bmus_image": "bmus_frame", "cdus_image": "cdus_frame"}
KNOWN_COLUMNS = (*MANIFEST_COLUMNS, *FRAME_COLUMNS.values())  # every column validation reads
# Identifiers: stripped and Unicode NFC at ingest, at most this long, no control characters.
ID_COLUMNS = ("case_id", "patient_id", "site")
MAX_ID_LENGTH = 128
# Where a row's pixel_spacing_mm came from (tasks.data.validate decides).
SPACING_SOURCES = ("manifest", "us_region", "pixel_spacing", "header", "none")
# Mask variants a manifest can give (variant -> column).
MASK_VARIANTS = {
    "reader1": "bmus_mask",
    "reader2": "bmus_mask_reader2",
    "repeat": "bmus_mask_repeat",
}
# Mask variants the system generates (variant -> the manifest column of its source mask).
# "perturbed": reader 1's mask eroded/dilated and with contour noise
# (tasks.features.imaging.perturb_mask), the ICC filter's repeat when a case has no real repeat.
PERTURBED = "perturbed"
GENERATED_VARIANTS = {PERTURBED: "bmus_mask"}
# Bump when tasks.features.imaging.perturb_mask changes: the derived mask hash (the store's lineage
# key) changes with it, so perturbed rows are extracted again rather than mixed.
PERTURBATION_VERSION = "v1"
REPEAT_COLUMNS = ("bmus_mask_reader2", "bmus_mask_repeat")


class MaskVariant(NamedTuple):
    """One mask a case is measured with."""

    name: str  # a MASK_VARIANTS or GENERATED_VARIANTS key
    column: str  # manifest column of the mask file it is read (or generated) from
    mask_sha256: str | None  # the file's hash, or the derived id of a generated mask


def known(value: Any) -> bool:
    """True for a usable value: not None/NaN/NA (as pandas rows carry them), not ""."""
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return False
    return str(value).strip() != ""


def perturbed_mask_sha(reader1_sha256: str) -> str:
    """Derived id of a perturbed mask: from its source mask and the perturbation version."""
    payload = f"{reader1_sha256}:{PERTURBED}:{PERTURBATION_VERSION}"
    return hashlib.sha256(payload.encode()).hexdigest()


def case_variants(case: Mapping[str, Any], perturb: bool) -> list[MaskVariant]:
    """The mask variants one ``cohort`` row is measured with: the one place that decides.

    Every manifest variant whose file the row has, then ``perturbed`` when ``perturb`` is on
    (``settings.perturb_repeats``) and the row has a reader-1 mask but neither a reader-2
    nor a repeat delineation: real repeats are the better evidence, so a case that has one
    is never perturbed.
    """
    out = [
        MaskVariant(name, column, _sha(case, column))
        for name, column in MASK_VARIANTS.items()
        if known(case.get(column))
    ]
    source = GENERATED_VARIANTS[PERTURBED]
    if perturb and known(case.get(source)) and not any(known(case.get(c)) for c in REPEAT_COLUMNS):
        sha = _sha(case, source)
        out.append(MaskVariant(PERTURBED, source, perturbed_mask_sha(sha) if sha else None))
    return out


def frame_column(column: str) -> str | None:
    """The frame column that applies to a file column: its image's (a mask's is its image's)."""
    image = FILE_COLUMNS.get(column) or column
    return FRAME_COLUMNS.get(image)


def _sha(case: Mapping[str, Any], column: str) -> str | None:
    value = case.get(f"{column}_sha256")
    return str(value) if known(value) else None


def normalise_id(value: Any) -> str | None:
    """An identifier as stored: stripped, Unicode NFC (an NFC and an NFD "Café" are one
    case); None when missing."""
    return unicodedata.normalize("NFC", str(value).strip()) if known(value) else None


def id_problem(column: str, value: str | None) -> str | None:
    """Reason an identifier is refused, or None. Never echoes the value: a patient_id is
    personal data, and a hostile one (newlines, bidi overrides) would forge log lines."""
    if value is None:
        return None
    if len(value) > MAX_ID_LENGTH:
        return f"{column} is longer than {MAX_ID_LENGTH} characters"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value):
        return f"{column} holds control, format or unassigned characters"
    return None


def unknown_columns(columns: Iterable[Any]) -> dict[str, str | None]:
    """Manifest columns validation does not read, each with the known column it is closest
    to (a misspelt optional column), if any."""
    out: dict[str, str | None] = {}
    for name in (str(c) for c in columns):
        if name not in KNOWN_COLUMNS:
            close = difflib.get_close_matches(name.lower(), KNOWN_COLUMNS, n=1, cutoff=0.8)
            out[name] = close[0] if close else None
    return out
