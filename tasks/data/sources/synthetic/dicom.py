"""Synthetic cohort as ultrasound DICOM: the same cases as the PNG export, as a scanner and
an annotation tool would write them.

Used by :func:`~tasks.data.sources.synthetic.cohort.generate_cohort` with ``dicom=True``.
Per case, under ``out_dir`` it writes

- ``images/<case_id>_bmus.dcm``: Ultrasound Image Storage, MONOCHROME2, uncompressed, with
  a Sequence of Ultrasound Regions (one tissue region over the frame, PhysicalDeltaX/Y in
  cm from the site's pixel size); the manifest leaves ``pixel_spacing_mm`` empty, so the
  pipeline takes the spacing from the region;
- ``images/<case_id>_cdus.dcm``: the colour Doppler frame, RGB, JPEG-LS lossless, same region;
- ``masks/<case_id>_bmus_mask.dcm``: reader 1's lesion as a DICOM SEG (highdicom) on the
  B-mode frame; the CDUS, reader-2 and repeat masks stay PNG, as mixed exports are common.

The pixels are those of the PNG export, so both give the same radiomics values. Patient
and study values are synthetic (the plan's ids and exam date). UIDs derive from the seed
and case, so the same seed gives the same files.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, UltrasoundImageStorage, generate_uid

from tasks.data.sources.synthetic.case import CaseImages

CM_UNITS = 3  # PhysicalUnitsX/YDirection: cm


def _uid(seed: int, case_id: str, what: str) -> str:
    return generate_uid(entropy_srcs=["sln-synthetic", str(seed), case_id, what])


def region_sequence(shape: tuple[int, int], spacing_mm: float) -> Sequence:
    """One 2D tissue region covering a ``shape`` frame, its pixel size in cm."""
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 0
    region.RegionLocationMaxX1 = shape[1] - 1
    region.RegionLocationMaxY1 = shape[0] - 1
    region.PhysicalUnitsXDirection = CM_UNITS
    region.PhysicalUnitsYDirection = CM_UNITS
    region.PhysicalDeltaX = spacing_mm / 10.0
    region.PhysicalDeltaY = spacing_mm / 10.0
    return Sequence([region])


def us_image(
    pixels: np.ndarray,
    spacing_mm: float,
    *,
    patient_id: str,
    exam_date: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
) -> Dataset:
    """An Ultrasound Image Storage dataset holding one uint8 frame (grey or RGB)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality = "US"
    ds.PatientName, ds.PatientID = f"Synthetic^{patient_id}", patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "F"
    day = date.fromisoformat(exam_date).strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Manufacturer = "sln-radiomics synthetic"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.SequenceOfUltrasoundRegions = region_sequence(pixels.shape[:2], spacing_mm)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds


def lesion_seg(source: Dataset, mask: np.ndarray, sop_uid: str, series_uid: str) -> Dataset:
    """A binary DICOM SEG of ``mask`` (nonzero = lesion) on ``source``'s frame."""
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=hd.sr.CodedConcept(
            "49755003", "SCT", "Morphologic abnormality"
        ),
        segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=(np.asarray(mask) != 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=series_uid,
        series_number=2,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="sln-radiomics synthetic",
        manufacturer_model_name="reader 1",
        software_versions="1",
        device_serial_number="0",
    )


def write_case_dicom(
    out_dir: Path,
    case_id: str,
    images: CaseImages,
    *,
    patient_id: str,
    exam_date: str,
    spacing_mm: float,
    seed: int,
) -> dict[str, str]:
    """Write one case as DICOM (+ PNG masks but reader 1's); return its manifest cells."""
    study = _uid(seed, case_id, "study")
    common = {"patient_id": patient_id, "exam_date": exam_date, "study_uid": study}
    bmus = us_image(
        images.bmus,
        spacing_mm,
        series_uid=_uid(seed, case_id, "bmus-series"),
        sop_uid=_uid(seed, case_id, "bmus"),
        **common,
    )
    cdus = us_image(
        images.cdus,
        spacing_mm,
        series_uid=_uid(seed, case_id, "cdus-series"),
        sop_uid=_uid(seed, case_id, "cdus"),
        **common,
    )
    cdus.compress(JPEGLSLossless)
    cells = {
        "bmus_image": f"images/{case_id}_bmus.dcm",
        "cdus_image": f"images/{case_id}_cdus.dcm",
        "bmus_mask": f"masks/{case_id}_bmus_mask.dcm",
    }
    bmus.save_as(out_dir / cells["bmus_image"], enforce_file_format=True)
    cdus.save_as(out_dir / cells["cdus_image"], enforce_file_format=True)
    seg = lesion_seg(
        bmus, images.mask, _uid(seed, case_id, "seg"), _uid(seed, case_id, "seg-series")
    )
    seg.save_as(out_dir / cells["bmus_mask"], enforce_file_format=True)
    pngs = {
        "cdus_mask": images.mask,
        "bmus_mask_reader2": images.mask_reader2,
        "bmus_mask_repeat": images.mask_repeat,
    }
    for column, array in pngs.items():
        if array is None:
            cells[column] = ""
            continue
        cells[column] = f"masks/{case_id}_{column}.png"
        Image.fromarray(array).save(out_dir / cells[column], compress_level=1)
    return cells
