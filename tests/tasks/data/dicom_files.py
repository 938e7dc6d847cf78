"""Ultrasound DICOM files as scanners write them, made with pydicom for the tests.

Not a test module (no ``test_`` prefix); imported as ``tests.tasks.data.dicom_files``.
Every file carries planted identifiers (:data:`IDENTIFIERS`), so any test can look for
them where they must never appear.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

# Header values that identify a patient: none may reach a table, a log or an artifact.
IDENTIFIERS = {
    "PatientName": "Planted^Jane^Zorbulon",
    "PatientID": "MRN-7734219-PLANT",
    "PatientBirthDate": "19610317",
    "StudyDate": "20230914",
    "SeriesDate": "20230914",
    "AcquisitionDate": "20230914",
    "ContentDate": "20230914",
    "InstitutionName": "Hospital Planted Xylo",
    "AccessionNumber": "ACC-9917-PLANT",
    "ReferringPhysicianName": "Doctor^Planted^Quux",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.77342191961",
}
LOSSLESS = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
)


def region(
    left: int, top: int, right: int, bottom: int, delta_cm: float | tuple[float, float] | None
) -> Dataset:
    """One ultrasound region (bounds inclusive); ``delta_cm`` (x, y) in cm, None: no units."""
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = 1, 1, 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = left, top
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = right, bottom
    if delta_cm is not None:
        dx, dy = delta_cm if isinstance(delta_cm, tuple) else (delta_cm, delta_cm)
        item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
        item.PhysicalDeltaX, item.PhysicalDeltaY = dx, dy
    else:
        item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 0
    return item


def dataset(rows: int, columns: int, samples: int, photometric: str, frames: int = 1) -> Dataset:
    """An ultrasound image dataset without pixel data, identifiers planted."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, uid
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.PatientSex, ds.StudyID = "US", "F", "1"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.SeriesNumber = ds.InstanceNumber = 1
    for keyword, value in IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = 33.3
    return ds


def ybr_422_bytes(rgb: np.ndarray) -> bytes:
    """Native YBR_FULL_422: Y0 Y1 Cb Cr per horizontal pixel pair (chroma of the pair's
    first pixel: the tests give both pixels of a pair one colour)."""
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    out = np.empty((*rgb.shape[:-3], rgb.shape[-3], rgb.shape[-2] // 2, 4), np.uint8)
    out[..., 0], out[..., 1] = ybr[..., 0::2, 0], ybr[..., 1::2, 0]
    out[..., 2], out[..., 3] = ybr[..., 0::2, 1], ybr[..., 0::2, 2]
    return out.tobytes()


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    """One JPEG baseline frame as scanners encode it (RGB input -> YCbCr 4:2:2 in the stream)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling=1)
    return buf.getvalue()


def write(
    path: Path,
    pixels: np.ndarray,
    photometric: str | None = None,
    syntax: str = ExplicitVRLittleEndian,
    regions: list[Dataset] | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    imager_spacing: tuple[float, float] | None = None,
    planar: int = 0,
) -> Path:
    """Write ``pixels`` (uint8: ``[R, C]``, ``[R, C, 3]``, or ``[F, R, C(, 3)]`` with
    ``frames``) as one DICOM file.

    ``photometric`` says how they are stored: MONOCHROME1 stores ``255 - pixels``, YBR_FULL
    and YBR_FULL_422 the YCbCr of RGB ``pixels``; PALETTE COLOR takes index pixels and is
    written by :func:`write_palette`. ``syntax`` JPEG baseline encodes each frame with Pillow.
    """
    multi = pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] != 3)
    frames = pixels.shape[0] if multi else 1
    shape = pixels.shape[1:] if multi else pixels.shape
    samples = 3 if len(shape) == 3 else 1
    photometric = photometric or ("RGB" if samples == 3 else "MONOCHROME2")
    ds = dataset(shape[0], shape[1], samples, photometric, frames)
    if regions:
        ds.SequenceOfUltrasoundRegions = Sequence(regions)
    if pixel_spacing:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_spacing:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if syntax == JPEGBaseline8Bit:
        ds.file_meta.TransferSyntaxUID = syntax
        stack = pixels if multi else pixels[None]
        ds.PixelData = encapsulate([jpeg_bytes(frame) for frame in stack])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
        return path
    if photometric == "MONOCHROME1":
        data = (255 - pixels).astype(np.uint8).tobytes()
    elif photometric == "YBR_FULL":
        data = convert_color_space(pixels, "RGB", "YBR_FULL").tobytes()
    elif photometric == "YBR_FULL_422":
        data = ybr_422_bytes(pixels)
    elif samples == 3 and planar == 1:
        ds.PlanarConfiguration = 1
        data = np.ascontiguousarray(np.moveaxis(pixels, -1, -3)).tobytes()
    else:
        data = np.ascontiguousarray(pixels).tobytes()
    ds.PixelData = data
    if syntax in (RLELossless, JPEGLSLossless):
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def write_palette(path: Path, index: np.ndarray, palette: np.ndarray) -> Path:
    """PALETTE COLOR: ``index`` (uint8) into ``palette`` ([256, 3] uint8), stored as 16-bit
    LUT entries (value x 257) as scanners write them."""
    ds = dataset(*index.shape, 1, "PALETTE COLOR")
    lut = palette.astype(np.uint16) * 257
    for i, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut[:, i].astype("<u2").tobytes())
    ds.PixelData = np.ascontiguousarray(index).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


def speckle(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A B-mode-like uint8 frame with a dark round lesion in the middle."""
    rng = np.random.default_rng(seed)
    lesion = disk(shape[-2:], (shape[-2] // 2, shape[-1] // 2), min(shape[-2:]) // 5)
    return np.clip(rng.rayleigh(40, shape) + 60 - 45 * lesion, 0, 255).astype(np.uint8)


def doppler(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """An RGB colour Doppler frame: grey B-mode with red and blue flow, each colour on
    horizontal pixel pairs (so YBR_FULL_422 subsampling loses nothing)."""
    rng = np.random.default_rng(seed)
    grey = speckle(shape, seed)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    flow = rng.random((shape[0], shape[1] // 2)) < 0.1
    red = np.repeat(flow & (rng.random(flow.shape) < 0.5), 2, axis=1)
    blue = np.repeat(flow, 2, axis=1) & ~red
    rgb[red] = (220, 30, 30)
    rgb[blue] = (30, 60, 210)
    rgb[:, 1::2] = rgb[:, 0::2]
    return rgb


def write_seg(path: Path, source: Path, masks: np.ndarray, frames: list[int] | None = None):
    """A binary DICOM SEG of ``masks`` on the image file ``source``: through highdicom for a
    one-frame image; for the 1-based ``frames`` of a cine loop (``masks`` [N, R, C]) written
    with pydicom, since highdicom wants a frame of reference that ultrasound loops lack."""
    import highdicom as hd
    import pydicom

    image = pydicom.dcmread(source)
    if frames is None:
        description = hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="lesion",
            segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologic"),
            segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        seg = hd.seg.Segmentation(
            source_images=[image],
            pixel_array=masks.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=generate_uid(),
            series_number=2,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="tests",
            manufacturer_model_name="tests",
            software_versions="1",
            device_serial_number="0",
        )
        seg.save_as(path)
        return path
    from pydicom.pixels import pack_bits

    seg = dataset(*masks.shape[-2:], 1, "MONOCHROME2", frames=len(frames))
    seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID = dicom_seg_class()
    seg.Modality, seg.SegmentationType = "SEG", "BINARY"
    seg.BitsAllocated = seg.BitsStored = 1
    seg.HighBit = 0
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel = 1, "lesion"
    seg.SegmentSequence = Sequence([segment])
    groups = []
    for number in frames:
        source_item = Dataset()
        source_item.ReferencedSOPInstanceUID = image.SOPInstanceUID
        source_item.ReferencedFrameNumber = number
        derivation = Dataset()
        derivation.SourceImageSequence = Sequence([source_item])
        identification = Dataset()
        identification.ReferencedSegmentNumber = 1
        group = Dataset()
        group.DerivationImageSequence = Sequence([derivation])
        group.SegmentIdentificationSequence = Sequence([identification])
        groups.append(group)
    seg.PerFrameFunctionalGroupsSequence = Sequence(groups)
    seg.PixelData = pack_bits(masks.astype(np.uint8))
    seg.save_as(path, enforce_file_format=True)
    return path


def dicom_seg_class() -> str:
    from tasks.data.dicom import SEG_SOP_CLASS

    return SEG_SOP_CLASS
