"""Ultrasound DICOM: every colour model and transfer syntax read as its PNG twin, cine
frames, spacing from the regions, SEG masks, header checks before any decode."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless

from tasks.data import dicom
from tasks.features.imaging import read_image, read_mask, to_grey
from tests.tasks.data import dicom_files as files


def pixels(uri, frame=None) -> np.ndarray:
    return sitk.GetArrayFromImage(read_image(str(uri), frame))


@pytest.fixture
def grey() -> np.ndarray:
    return files.speckle((48, 64))


@pytest.fixture
def rgb() -> np.ndarray:
    return files.doppler((48, 64))


# -- colour models: pixel for pixel against the same image as PNG ---------------------------
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_grey_models_read_as_their_png(tmp_path, grey, photometric):
    dcm = files.write(tmp_path / "a.dcm", grey, photometric)
    png = files.write_png(tmp_path / "a.png", grey)
    assert np.array_equal(pixels(dcm), pixels(png))
    assert read_image(str(dcm)).GetDimension() == 2


@pytest.mark.parametrize("planar", [0, 1])
def test_rgb_reads_as_its_png_in_either_planar_configuration(tmp_path, rgb, planar):
    dcm = files.write(tmp_path / "a.dcm", rgb, "RGB", planar=planar)
    png = files.write_png(tmp_path / "a.png", rgb)
    image = read_image(str(dcm))
    assert image.GetNumberOfComponentsPerPixel() == 3 and image.GetDimension() == 2
    assert np.array_equal(pixels(dcm), pixels(png))
    # The grey B-mode of an RGB frame: the same luminance as the PNG's.
    from_png = to_grey(read_image(str(png)))
    assert np.array_equal(sitk.GetArrayFromImage(to_grey(image)), sitk.GetArrayFromImage(from_png))


@pytest.mark.parametrize("photometric", ["YBR_FULL", "YBR_FULL_422"])
def test_ybr_reads_as_rgb_within_the_8_bit_round_trip(tmp_path, rgb, photometric):
    # RGB -> YCbCr -> RGB in 8 bits moves a channel by at most one level; grey pixels
    # (Cb = Cr = 128) come back exactly.
    dcm = files.write(tmp_path / "a.dcm", rgb, photometric)
    png = pixels(files.write_png(tmp_path / "a.png", rgb))
    got = pixels(dcm)
    assert got.shape == png.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - png).max() <= 1
    grey_pixels = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    assert np.array_equal(got[grey_pixels], png[grey_pixels])


def test_palette_colour_reads_as_its_rgb_png(tmp_path):
    rng = np.random.default_rng(3)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    dcm = files.write_palette(tmp_path / "a.dcm", index, palette)
    png = files.write_png(tmp_path / "a.png", palette[index])
    assert np.array_equal(pixels(dcm), pixels(png))


# -- transfer syntaxes ---------------------------------------------------------------------
@pytest.mark.parametrize("syntax", files.LOSSLESS, ids=lambda uid: uid.name)
@pytest.mark.parametrize("colour", [False, True], ids=["grey", "rgb"])
def test_lossless_transfer_syntaxes_read_as_the_png(tmp_path, grey, rgb, syntax, colour):
    image = rgb if colour else grey
    dcm = files.write(tmp_path / "a.dcm", image, syntax=syntax)
    assert dicom.read_header(str(dcm)).transfer_syntax == syntax
    assert np.array_equal(pixels(dcm), pixels(files.write_png(tmp_path / "a.png", image)))


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "ybr_full_422"])
def test_jpeg_baseline_reads_as_the_same_jpeg_stream(tmp_path, grey, rgb, colour):
    # Lossy: the reference is the same JPEG stream decoded on its own, as a .jpg export.
    image = rgb if colour else grey
    photometric = "YBR_FULL_422" if colour else "MONOCHROME2"
    dcm = files.write(tmp_path / "a.dcm", image, photometric, syntax=JPEGBaseline8Bit)
    expected = np.asarray(Image.open(io.BytesIO(files.jpeg_bytes(image))))
    got = pixels(dcm)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


# -- cine loops ----------------------------------------------------------------------------
def test_a_cine_loop_gives_the_frame_the_manifest_names(tmp_path):
    loop = np.stack([files.speckle((32, 40), seed) for seed in range(5)])
    dcm = files.write(tmp_path / "loop.dcm", loop, syntax=JPEGLSLossless)
    assert dicom.read_header(str(dcm)).frames == 5
    assert np.array_equal(pixels(dcm, 3), loop[2])  # 1-based, as viewers number frames
    assert np.array_equal(pixels(dcm, "5"), loop[4])


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (None, "cine loop of 5 frames: add a manifest column bmus_frame"),
        (0, "bmus_frame must be a frame number from 1 to 5, got 0"),
        (6, "bmus_frame must be a frame number from 1 to 5, got 6"),
        ("2.5", "bmus_frame must be a frame number from 1 to 5"),
    ],
)
def test_a_cine_loop_without_a_valid_frame_says_which_column_to_fix(tmp_path, frame, reason):
    loop = np.stack([files.speckle((32, 40), seed) for seed in range(5)])
    dcm = files.write(tmp_path / "loop.dcm", loop)
    with pytest.raises(dicom.DicomError, match=reason) as caught:
        dicom.read_frame(str(dcm), frame, "bmus_frame")
    assert caught.value.column == "bmus_frame"


# -- header first --------------------------------------------------------------------------
def test_header_problems_are_found_before_any_pixel_is_decoded(tmp_path, grey, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the header was checked")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_decoding)
    loop = files.write(tmp_path / "loop.dcm", np.stack([grey, grey]))
    with pytest.raises(dicom.DicomError, match="add a manifest column cdus_frame"):
        dicom.read_frame(str(loop), None, "cdus_frame")

    odd = files.write(tmp_path / "hsv.dcm", grey)
    ds = pydicom.dcmread(odd)
    ds.PhotometricInterpretation = "HSV"
    ds.save_as(odd)
    with pytest.raises(dicom.DicomError, match="photometric interpretation HSV is not supported"):
        dicom.read_frame(str(odd))

    lossless = files.write(tmp_path / "jpeg-lossless.dcm", grey)
    ds = pydicom.dcmread(lossless)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.70"  # JPEG lossless, process 14
    ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(lossless)
    with pytest.raises(dicom.DicomError, match="JPEG Lossless.*cannot be decoded here"):
        dicom.read_frame(str(lossless))


def test_dicom_is_recognised_by_its_marker_not_its_name(tmp_path, grey):
    no_suffix = files.write(tmp_path / "1.2.840.113619.2.55", grey)
    assert dicom.is_dicom(str(no_suffix)) and dicom.is_dicom(str(tmp_path / "1.2.840.113619.2.55"))
    assert not dicom.is_dicom(str(files.write_png(tmp_path / "a.png", grey)))
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 200)
    assert not dicom.is_dicom(str(tmp_path / "junk.dcm"))
    assert np.array_equal(pixels(no_suffix), grey)


# -- spacing and regions -------------------------------------------------------------------
def test_spacing_comes_from_the_region_that_holds_the_lesion(tmp_path, grey):
    regions = [
        files.region(0, 0, 63, 47, 0.02),  # the whole frame, 0.2 mm
        files.region(10, 8, 50, 40, 0.008),  # the imaging area, 0.08 mm
        files.region(52, 0, 63, 10, None),  # a spectral trace without cm units
    ]
    dcm = files.write(tmp_path / "a.dcm", grey, regions=regions, pixel_spacing=(0.5, 0.5))
    header = dicom.read_header(str(dcm))
    inside = (15, 20, 30, 40)  # (top, left, bottom, right)
    assert dicom.imaging_region(header, inside).left == 0  # the largest holding it
    assert dicom.file_spacing(header, inside) == ((0.2, 0.2), "us_region")
    # Only the frame-wide region in cm holds a lesion at the edge.
    assert dicom.file_spacing(header, (2, 2, 5, 5)) == ((0.2, 0.2), "us_region")
    only_inner = files.write(tmp_path / "b.dcm", grey, regions=[files.region(10, 8, 50, 40, 0.008)])
    header = dicom.read_header(str(only_inner))
    assert dicom.file_spacing(header, inside) == ((0.08, 0.08), "us_region")
    assert dicom.file_spacing(header, (0, 0, 5, 5)) == (None, "none")


def test_spacing_falls_back_to_pixel_spacing_then_none(tmp_path, grey):
    box = (10, 10, 20, 20)
    with_ps = files.write(tmp_path / "a.dcm", grey, pixel_spacing=(0.11, 0.11))
    found = dicom.file_spacing(dicom.read_header(str(with_ps)), box)
    assert found == ((0.11, 0.11), "pixel_spacing")
    imager = files.write(tmp_path / "b.dcm", grey, imager_spacing=(0.3, 0.3))
    assert dicom.file_spacing(dicom.read_header(str(imager)), box) == ((0.3, 0.3), "pixel_spacing")
    bare = files.write(tmp_path / "c.dcm", grey)
    assert dicom.file_spacing(dicom.read_header(str(bare)), box) == (None, "none")


def test_non_square_pixels_are_refused_with_what_to_do():
    assert dicom.square_spacing((0.1, 0.1)) == 0.1
    assert dicom.square_spacing((0.1, 0.1005)) == pytest.approx(0.10025)
    with pytest.raises(dicom.DicomError, match="pixels are not square"):
        dicom.square_spacing((0.1, 0.12))


# -- SEG masks -----------------------------------------------------------------------------
def test_a_seg_mask_reads_as_its_png(tmp_path, grey):
    image = files.write(tmp_path / "a.dcm", grey)
    lesion = files.disk(grey.shape, (24, 30), 9)
    seg = files.write_seg(tmp_path / "seg.dcm", image, lesion)
    png = files.write_png(tmp_path / "mask.png", lesion * 255)
    like = to_grey(read_image(str(image)))
    got = sitk.GetArrayFromImage(read_mask(str(seg), like))
    assert np.array_equal(got, sitk.GetArrayFromImage(read_mask(str(png), like)))
    assert got.sum() == lesion.sum()


def test_a_seg_of_a_cine_loop_gives_the_mask_of_the_named_frame(tmp_path):
    loop = np.stack([files.speckle((32, 40), seed) for seed in range(4)])
    image = files.write(tmp_path / "loop.dcm", loop)
    masks = np.stack([files.disk((32, 40), (16, 20), 5), files.disk((32, 40), (10, 12), 4)])
    seg = files.write_seg(tmp_path / "seg.dcm", image, masks, frames=[2, 4])
    assert np.array_equal(dicom.read_seg(str(seg), 2), masks[0])
    assert np.array_equal(dicom.read_seg(str(seg), "4"), masks[1])
    with pytest.raises(dicom.DicomError, match="add a manifest column bmus_frame"):
        dicom.read_seg(str(seg), None)
    with pytest.raises(dicom.DicomError, match="SEG is a mask, not an image"):
        dicom.read_frame(str(seg))


def test_no_identifier_leaves_the_module(tmp_path, grey):
    dcm = files.write(tmp_path / "a.dcm", grey, regions=[files.region(0, 0, 63, 47, 0.01)])
    header = repr(dicom.read_header(str(dcm)))
    for value in files.IDENTIFIERS.values():
        assert value not in header


def test_pydicom_loads_on_the_first_dicom_read_with_value_validation_off(tmp_path, grey):
    """pydicom is imported by the first DICOM read, not by importing the module (a PNG
    cohort's run never pays for it), and that read turns pydicom's value validation off: its
    warnings quote the offending value (a malformed PatientName would reach the logs)."""
    import subprocess
    import sys

    dcm = files.write(tmp_path / "a.dcm", grey, "MONOCHROME2")
    code = (
        "import sys\n"
        "from tasks.data import dicom\n"
        "print('pydicom' in sys.modules)\n"
        f"dicom.read_header({str(dcm)!r})\n"
        "import pydicom\n"
        "print(pydicom.config.settings.reading_validation_mode == pydicom.config.IGNORE)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
