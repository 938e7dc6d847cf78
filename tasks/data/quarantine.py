"""Quarantine rows: every problem a stage finds, in the shape of the ``quarantine`` table.

Reads the problem entries a stage collected (ingest's manifest checks, extraction's
failures); writes nothing: returns the typed rows, each with a stable ``quarantine_id``
so that finding the same problem again never adds a second row to the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import pandas as pd

from tasks.data.tables import QUARANTINE


def quarantine_frame(
    entries: Iterable[Mapping[str, object]], stage: str, manifest: str | None, run_id: str
) -> pd.DataFrame:
    """Quarantine rows (stage, case, column, file, reason) with a stable id for dedup."""
    now = pd.Timestamp(datetime.now(UTC))
    rows = []
    for entry in entries:
        key = "|".join(
            str(entry.get(k)) for k in ("case_id", "manifest_row", "column", "file", "reason")
        )
        rows.append(
            {
                "quarantine_id": hashlib.sha256(f"{stage}|{manifest}|{key}".encode()).hexdigest()[
                    :24
                ],
                "stage": stage,
                "case_id": entry.get("case_id"),
                "manifest_row": entry.get("manifest_row"),
                "column": entry.get("column"),
                "file": entry.get("file"),
                "reason": entry.get("reason"),
                "manifest": manifest,
                "run_id": run_id,
                "detected_at": now,
            }
        )
    return QUARANTINE.typed(pd.DataFrame(rows, columns=list(QUARANTINE.dtypes)))
