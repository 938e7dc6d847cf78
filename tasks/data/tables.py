"""The feature store's tables: one spec per Delta table, used by the store, planning and commits.

A :class:`TableSpec` names a table, its key columns (a row is unique on them: the store's
no-duplicates invariant), the column stamped with the commit time, and the dtypes of the
columns every row has. Feature tables add their own value columns (one per radiomics
feature, one per embedding component) beside these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import pandas as pd

from tasks.data.schema import FILE_COLUMNS


@dataclass(frozen=True)
class TableSpec:
    name: str
    keys: tuple[str, ...]  # unique together: a commit never stores a key twice
    timestamp: str  # set when a row is committed
    dtypes: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def typed(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with exactly the spec's columns, in order, cast to their dtypes (a copy)."""
        frame = frame.copy()
        for col, dtype in self.dtypes.items():
            if col not in frame:
                frame[col] = pd.Series([None] * len(frame), dtype=dtype)
            elif dtype.startswith("datetime64"):
                frame[col] = pd.to_datetime(frame[col], utc=True).astype(dtype)
            else:
                frame[col] = frame[col].astype(dtype)
        return frame[list(self.dtypes)].reset_index(drop=True)


def _spec(name: str, keys: tuple[str, ...], timestamp: str, dtypes: dict[str, str]) -> TableSpec:
    return TableSpec(name, keys, timestamp, MappingProxyType(dtypes))


_UTC = "datetime64[us, UTC]"

# One row per case version: a changed file or clinical field adds a version.
COHORT = _spec(
    "cohort",
    ("case_id", "case_version"),
    "ingested_at",
    {
        "case_id": "string",
        "case_version": "string",
        "patient_key": "string",
        "site": "string",
        "exam_date": "string",
        "label": "Int8",
        "split": "string",
        "split_source": "string",
        **{col: "string" for col in FILE_COLUMNS},
        **{f"{col}_sha256": "string" for col in FILE_COLUMNS},
        "pixel_spacing_mm": "float64",
        "pixel_spacing_source": "string",  # manifest | us_region | pixel_spacing | none
        "bmus_frame": "Int64",  # DICOM cine loops: the frame measured (1-based)
        "cdus_frame": "Int64",
        "manifest": "string",
        "run_id": "string",
        "ingested_at": _UTC,
    },
)
# One row per problem found in a manifest row or while extracting a case.
QUARANTINE = _spec(
    "quarantine",
    ("quarantine_id",),
    "detected_at",
    {
        "quarantine_id": "string",
        "stage": "string",
        "case_id": "string",
        "manifest_row": "Int64",
        "column": "string",
        "file": "string",
        "reason": "string",
        "manifest": "string",
        "run_id": "string",
        "detected_at": _UTC,
    },
)
# One row per case x region x mask variant x (image, mask, params) lineage.
RADIOMICS = _spec(
    "radiomics",
    ("case_id", "region", "mask_variant", "image_sha256", "mask_sha256", "params_hash"),
    "extracted_at",
    {
        "case_id": "string",
        "region": "string",
        "mask_variant": "string",
        "image_sha256": "string",
        "mask_sha256": "string",
        "params_hash": "string",
        "run_id": "string",
        "code_version": "string",
        "extracted_at": _UTC,
    },
)
# One row per case x mask variant x CNN model version x (image, mask) lineage.
EMBEDDINGS = _spec(
    "embeddings",
    ("case_id", "mask_variant", "model_version", "image_sha256", "mask_sha256"),
    "embedded_at",
    {
        "case_id": "string",
        "mask_variant": "string",
        "model_version": "string",
        "image_sha256": "string",
        "mask_sha256": "string",
        "crop_size": "Int64",
        "worker": "string",
        "run_id": "string",
        "code_version": "string",
        "embedded_at": _UTC,
    },
)
# One row per validate run x scored case.
PREDICTIONS = _spec(
    "predictions",
    ("run_id", "case_id"),
    "scored_at",
    {"run_id": "string", "case_id": "string", "scored_at": _UTC},
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec for spec in (COHORT, QUARANTINE, RADIOMICS, EMBEDDINGS, PREDICTIONS)
}
FEATURE_TABLES = (COHORT, RADIOMICS, EMBEDDINGS)  # the versions a trained model pins


def current_cohort(cohort: pd.DataFrame) -> pd.DataFrame:
    """The latest version of every case (older versions stay stored for lineage): the last
    by commit time, then by version, so two versions committed together resolve the same way
    on every read. ``cohort``: rows of the cohort table (``case_id``, ``ingested_at`` and
    ``case_version`` at least)."""
    if cohort.empty:
        return cohort
    ordered = cohort.sort_values(["ingested_at", "case_version"])
    return (
        ordered.drop_duplicates("case_id", keep="last")
        .sort_values("case_id")
        .reset_index(drop=True)
    )
