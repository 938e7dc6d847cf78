"""BUS-BRA source: a cohort manifest over the real BUS-BRA breast ultrasound dataset.

BUS-BRA (Gómez-Flores et al., Med Phys 2024) has B-mode images and expert lesion masks
with benign/malignant pathology, no Doppler and no lymph-node status. It serves as a
real-image proxy task: label = malignant, site = scanner, patient = BUS-BRA ``Case``.
One scanner is held out as external validation; a patient with any image from that
scanner goes wholly to validation so no patient straddles splits. Training/testing are
left empty for ``ingest`` to derive (stratified, grouped by patient, seeded).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

# Short, stable site names for the four scanners in bus_data.csv.
SCANNERS = {
    "GE Logiq 7": "LOGIQ7",
    "GE Logiq 5": "LOGIQ5",
    "Toshiba Aplio 300": "APLIO300",
    "U-Systems": "USYSTEMS",
}


def site_of(device: str) -> str:
    """Site name of a ``Device`` cell: the scanner's short name, else its sanitised text."""
    for prefix, site in SCANNERS.items():
        if device.startswith(prefix):
            return site
    return re.sub(r"[^A-Z0-9]+", "", device.upper())[:16] or "UNKNOWN"


def busbra_manifest(
    data: str | Path,
    out: str | Path,
    validation_site: str = "APLIO300",
    limit_patients: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Write a manifest for BUS-BRA at ``out`` (CSV) and return it.

    ``limit_patients`` keeps a seeded random subset of patients (all their images), for
    quick runs; None keeps all 1,064.
    """
    data = Path(data).resolve()
    table = pd.read_csv(data / "bus_data.csv", dtype=str)
    missing = {"ID", "Case", "Pathology", "Device"} - set(table.columns)
    if missing:
        raise ValueError(f"{data / 'bus_data.csv'}: missing columns {sorted(missing)}")
    if limit_patients:
        patients = np.sort(table["Case"].unique())
        keep = np.random.default_rng(seed).choice(
            patients, size=min(limit_patients, len(patients)), replace=False
        )
        table = table[table["Case"].isin(keep)]
    sites = table["Device"].map(site_of)
    held_out = set(table.loc[sites == validation_site, "Case"])
    manifest = pd.DataFrame(
        {
            "case_id": table["ID"],
            "patient_id": "BUSBRA-" + table["Case"],
            "site": sites,
            "exam_date": "",
            "label": (table["Pathology"].str.strip().str.lower() == "malignant").astype(int),
            "split": np.where(table["Case"].isin(held_out), "validation", ""),
            # Absolute paths: the dataset stays where it is (read-only), never copied.
            "bmus_image": [str(data / "Images" / f"{i}.png") for i in table["ID"]],
            "bmus_mask": [
                str(data / "Masks" / f"mask_{i.removeprefix('bus_')}.png") for i in table["ID"]
            ],
            "cdus_image": "",
            "cdus_mask": "",
            "bmus_mask_reader2": "",
            "bmus_mask_repeat": "",
            "pixel_spacing_mm": "",
        }
    ).sort_values("case_id")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(out, index=False)
    return manifest
