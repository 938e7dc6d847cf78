"""Preview of a written synthetic cohort: a contact sheet for a person to look at.

Reads the PNGs a manifest names under ``out_dir`` and writes ``out_dir/preview.png``: per
case the B-mode frame with its reader-1 mask contour in green beside the CDUS frame.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage


def _preview_cases(manifest: pd.DataFrame, n_cases: int) -> pd.DataFrame:
    """A few cases covering both labels and both sites, in case order."""
    groups = manifest.groupby(["site", "label"], sort=True)
    per_group = max(1, n_cases // max(groups.ngroups, 1))
    picked = groups.head(per_group)
    if len(picked) < n_cases:
        rest = manifest.drop(picked.index).head(n_cases - len(picked))
        picked = pd.concat([picked, rest])
    return picked.sort_index().head(n_cases)


def _contour(mask: np.ndarray) -> np.ndarray:
    """Outline pixels of a 0/255 mask, two pixels wide so it survives downscaling."""
    inside = mask > 0
    return ndimage.binary_dilation(inside & ~ndimage.binary_erosion(inside))


def write_preview(out_dir: Path, manifest: pd.DataFrame, n_cases: int = 8) -> Path:
    """Contact sheet: per case the B-mode with its mask contour, then the CDUS frame.

    Four columns (two cases per row); each pair is captioned with case, label and site.
    """
    tile_w, tile_h, caption_h = 250, 200, 16
    cases = _preview_cases(manifest, n_cases)
    n_rows = math.ceil(len(cases) / 2)
    sheet = Image.new("RGB", (4 * tile_w, n_rows * (tile_h + caption_h)), "black")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, case in enumerate(cases.itertuples(index=False)):
        bmus = np.asarray(Image.open(out_dir / case.bmus_image).convert("RGB")).copy()
        bmus[_contour(np.asarray(Image.open(out_dir / case.bmus_mask)))] = (0, 255, 0)
        cdus = Image.open(out_dir / case.cdus_image).convert("RGB")
        x = (k % 2) * 2 * tile_w
        y = (k // 2) * (tile_h + caption_h)
        for j, tile in enumerate((Image.fromarray(bmus), cdus)):
            sheet.paste(
                tile.resize((tile_w, tile_h), Image.Resampling.BILINEAR),
                (x + j * tile_w, y + caption_h),
            )
        stage = "N>=1" if case.label == 1 else "N0"
        draw.text(
            (x + 4, y + 2),
            f"{case.case_id}  {stage}  site {case.site}  {case.split}",
            fill="white",
            font=font,
        )
    path = out_dir / "preview.png"
    sheet.save(path)
    return path
