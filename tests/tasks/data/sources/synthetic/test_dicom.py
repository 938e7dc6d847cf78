"""Synthetic cohort as ultrasound DICOM: the PNG export's pixels, the site's pixel size in
the ultrasound regions, reader 1 as a DICOM SEG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from tasks.data import dicom
from tasks.data.sources.synthetic import SITES, generate_cohort
from tasks.features.imaging import read_image


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    png = generate_cohort(root / "png", n_patients=4, seed=11)
    dcm = generate_cohort(root / "dcm", n_patients=4, seed=11, dicom=True)
    read = lambda path: pd.read_csv(path, dtype=str, keep_default_na=False)  # noqa: E731
    return root, read(png), read(dcm)


def _pixels(path) -> np.ndarray:
    return sitk.GetArrayFromImage(read_image(str(path)))


def test_dicom_cohort_holds_the_png_cohorts_pixels(twins):
    root, png, dcm = twins
    assert list(dcm.columns) == list(png.columns)
    assert (dcm["pixel_spacing_mm"] == "").all() and (png["pixel_spacing_mm"] != "").all()
    for (_, p), (_, d) in zip(png.iterrows(), dcm.iterrows(), strict=True):
        assert d["bmus_image"].endswith(".dcm") and d["bmus_mask"].endswith(".dcm")
        for column in ("bmus_image", "cdus_image", "cdus_mask", "bmus_mask_reader2"):
            if p[column]:
                assert np.array_equal(
                    _pixels(root / "dcm" / d[column]), _pixels(root / "png" / p[column])
                )
        seg = dicom.read_seg(str(root / "dcm" / d["bmus_mask"]))
        assert np.array_equal(seg, _pixels(root / "png" / p["bmus_mask"]) != 0)


def test_dicom_cohort_carries_the_site_pixel_size_in_its_regions(twins):
    root, png, dcm = twins
    for (_, p), (_, d) in zip(png.iterrows(), dcm.iterrows(), strict=True):
        header = dicom.read_header(str(root / "dcm" / d["bmus_image"]))
        assert header.photometric == "MONOCHROME2" and len(header.regions) == 1
        spacing, source = dicom.file_spacing(header, (10, 10, 20, 20))
        assert source == "us_region"
        expected = SITES[d["site"]].pixel_spacing_mm
        assert spacing == (expected, expected) and expected == float(p["pixel_spacing_mm"])
        cdus = pydicom.dcmread(root / "dcm" / d["cdus_image"], stop_before_pixels=True)
        assert cdus.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
        assert cdus.PatientID == d["patient_id"]  # synthetic ids only
