"""Synthetic cohort step: a stand-in for a two-hospital breast ultrasound export.

Until real data arrive, :func:`generate_cohort` writes a cohort that looks and behaves like
one hospital export: for every patient a B-mode image (BMUS, greyscale PNG), a colour
Doppler image (CDUS, RGB PNG) and a reader-1 lesion mask, plus repeat delineations
(reader 2, reader-1 repeat) for a share of the cases. Under ``out_dir`` it writes

- ``manifest.csv``: one row per case in the cohort manifest schema
  (:data:`tasks.data.schema.MANIFEST_COLUMNS`), paths relative to ``out_dir``;
- ``images/<case_id>_bmus.png``, ``images/<case_id>_cdus.png``;
- ``masks/<case_id>_bmus_mask.png``, ``masks/<case_id>_cdus_mask.png`` (same geometry) and,
  where a repeat exists, ``masks/<case_id>_bmus_mask_reader2.png`` and
  ``masks/<case_id>_bmus_mask_repeat.png``;
- ``latent.csv``: the latent factors and logit behind every label, for auditing only;
- ``preview.png`` on request: a contact sheet of a few cases.

With ``dicom=True`` the images and reader 1's mask are ultrasound DICOM and a DICOM SEG
instead (:mod:`~tasks.data.sources.synthetic.dicom`), the pixel size in their ultrasound
regions rather than in the manifest.

The cohort plan comes from :func:`~tasks.data.sources.synthetic.plan.plan_cohort`, each
case from :func:`~tasks.data.sources.synthetic.case.synthesize_case`. Everything is
deterministic per seed: the plan and each case draw from their own random streams.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from threadpoolctl import threadpool_limits

from tasks.data.schema import MANIFEST_COLUMNS
from tasks.data.sources.synthetic.case import CaseImages, synthesize_case
from tasks.data.sources.synthetic.dicom import write_case_dicom
from tasks.data.sources.synthetic.latent import LATENT_COLUMNS
from tasks.data.sources.synthetic.plan import PAPER_PATIENTS, plan_cohort
from tasks.data.sources.synthetic.preview import write_preview


def _save_png(array: np.ndarray, path: Path) -> None:
    # Speckle barely compresses; the fastest zlib level keeps writing cheap.
    Image.fromarray(array).save(path, compress_level=1)


def write_case(out_dir: Path, case_id: str, images: CaseImages) -> dict[str, str]:
    """Write one case's PNGs; return its manifest path cells (relative, '' when absent)."""
    files = {
        "bmus_image": (f"images/{case_id}_bmus.png", images.bmus),
        "bmus_mask": (f"masks/{case_id}_bmus_mask.png", images.mask),
        "cdus_image": (f"images/{case_id}_cdus.png", images.cdus),
        # The CDUS frame shares the B-mode geometry, so its mask is the same delineation.
        "cdus_mask": (f"masks/{case_id}_cdus_mask.png", images.mask),
        "bmus_mask_reader2": (f"masks/{case_id}_bmus_mask_reader2.png", images.mask_reader2),
        "bmus_mask_repeat": (f"masks/{case_id}_bmus_mask_repeat.png", images.mask_repeat),
    }
    cells = {}
    for column, (relative, array) in files.items():
        if array is None:
            cells[column] = ""
            continue
        _save_png(array, out_dir / relative)
        cells[column] = relative
    return cells


def generate_cohort(
    out_dir: str | Path,
    n_patients: int = PAPER_PATIENTS,
    seed: int = 0,
    repeat_share: float = 0.3,
    preview: bool = False,
    progress: Callable[[int, int], None] | None = None,
    dicom: bool = False,
) -> Path:
    """Write out_dir/manifest.csv plus the images it names; return the manifest path.

    Parameters
    ----------
    out_dir : folder to write into (created; files of an earlier run are overwritten).
    n_patients : cohort size; 450 reproduces the paper's 276 / 69 / 105 split.
    seed : the same seed gives byte-identical files.
    repeat_share : share of cases with reader-2 and reader-1 repeat masks.
    preview : also write ``preview.png``, a contact sheet of a few cases.
    progress : called as ``progress(done, total)`` after every case.
    dicom : write ultrasound DICOM (regions with the pixel size) and a DICOM SEG for
        reader 1; ``pixel_spacing_mm`` is then left empty: the pipeline reads the files'.
    """
    out_dir = Path(out_dir)
    for folder in ("images", "masks"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    plan = plan_cohort(n_patients, seed, repeat_share)
    cells = []
    # The matrix products are tiny: BLAS threads only add contention (measured 1.7x slower).
    with threadpool_limits(limits=1, user_api="blas"):
        for done, case in enumerate(plan.itertuples(index=False), start=1):
            images = synthesize_case(case, seed, with_repeats=bool(case.has_repeat))
            if dicom:
                spacing = {"spacing_mm": case.pixel_spacing_mm, "seed": seed}
                ids = {"patient_id": case.patient_id, "exam_date": case.exam_date}
                cells.append(write_case_dicom(out_dir, case.case_id, images, **ids, **spacing))
            else:
                cells.append(write_case(out_dir, case.case_id, images))
            if progress is not None:
                progress(done, len(plan))
    manifest = pd.concat([plan, pd.DataFrame(cells, index=plan.index)], axis=1)
    if dicom:
        manifest["pixel_spacing_mm"] = ""
    manifest_path = out_dir / "manifest.csv"
    manifest.to_csv(manifest_path, columns=list(MANIFEST_COLUMNS), index=False)
    plan.to_csv(
        out_dir / "latent.csv", columns=list(LATENT_COLUMNS), index=False, float_format="%.6f"
    )
    if preview:
        write_preview(out_dir, manifest)
    return manifest_path
