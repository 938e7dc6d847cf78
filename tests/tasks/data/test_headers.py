"""Image headers read before decoding: limits, whole files, spacing, redaction."""

from __future__ import annotations

import errno
import re

import numpy as np
import pytest
import SimpleITK as sitk

from tasks.config import Settings
from tasks.data import headers
from tasks.data.headers import HeaderError, ImageInfo, Limits
from tests.tasks.data import hostile_files as hostile

LIMITS = Limits.of(Settings())


def test_limits_come_from_the_settings_and_their_defaults():
    assert Limits.defaults() == LIMITS
    small = Limits.of(Settings(max_image_pixels=100, max_frames=3, spacing_range_mm=(0.1, 1)))
    assert (small.max_pixels, small.max_frames, small.spacing_range) == (100, 3, (0.1, 1.0))


def test_a_huge_png_is_judged_on_its_ihdr_alone(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(hostile.huge_png(30000, 30000))
    assert path.stat().st_size < 2000
    info = headers.sitk_info(str(path))
    assert (info.size, info.channels) == ((30000, 30000), 1)
    with pytest.raises(HeaderError, match=r"30000 x 30000 pixels: a side over max_image_side 8192"):
        headers.check(info, LIMITS)
    square = ImageInfo((8000, 8000), 1)  # sides fine, 64 M pixels are not
    with pytest.raises(HeaderError, match=r"64,000,000 pixels per frame: over max_image_pixels"):
        headers.check(square, LIMITS)


@pytest.mark.parametrize(
    ("info", "reason"),
    [
        (ImageInfo((0, 10), 1), "no pixels"),
        (ImageInfo((10, 10), 7), "7 channels per pixel"),
        (ImageInfo((10, 10, 5), 1), "volume of 5 frames (size 10x10x5): over max_frames 1"),
        (ImageInfo((10, 10, 30), 3, dicom=True), "cine loop of 30 frames"),
    ],
)
def test_headers_over_a_limit_are_refused(info, reason):
    with pytest.raises(HeaderError, match=re.escape(reason)):
        headers.check(info, LIMITS)


def test_extraction_decodes_one_frame_of_a_dicom_loop_and_checks_volumes_whole():
    headers.check(ImageInfo((10, 10, 30), 3, dicom=True), LIMITS, at_ingest=False)
    with pytest.raises(HeaderError, match="volume of 30 frames"):
        headers.check(ImageInfo((10, 10, 30), 1), LIMITS, at_ingest=False)


def test_one_slice_volumes_are_one_frame(tmp_path):
    path = hostile.volume(tmp_path / "v.nii.gz", hostile.speckle((20, 30))[None], (0.1, 0.1, 1))
    info = headers.sitk_info(str(path))
    assert (info.size, info.frames, info.spacing) == ((30, 20, 1), 1, pytest.approx((0.1, 0.1)))
    headers.check(info, LIMITS)


@pytest.mark.parametrize("kind", ["png", "jpeg", "bmp", "nii", "nii.gz"])
def test_a_file_cut_in_half_is_caught(tmp_path, kind):
    image = hostile.speckle((64, 80))
    whole = tmp_path / f"whole.{kind}"
    if kind.startswith("nii"):
        hostile.volume(whole, image[None])
    else:
        sitk.WriteImage(sitk.GetImageFromArray(image), str(whole))
    headers.check_whole(str(whole))  # the whole file passes
    half = tmp_path / f"half.{kind}"
    half.write_bytes(hostile.cut(whole.read_bytes()))
    with pytest.raises(HeaderError, match="truncated file"):
        headers.check_whole(str(half))


def test_spacing_outside_the_range_is_named_with_its_source():
    assert headers.check_spacing(0.1, LIMITS, "manifest") is None
    assert headers.check_spacing(None, LIMITS, "none") is None
    reason = headers.check_spacing(50.0, LIMITS, "image header")
    assert reason == (
        "pixel spacing 50 mm (image header) is outside the plausible range 0.005-5 mm "
        "(SLN_SPACING_RANGE_MM)"
    )


def test_header_spacing_is_used_only_when_the_format_carries_one(tmp_path):
    assert headers.file_spacing(str(tmp_path / "a.nii"), None, (0.2, 0.2)) == (0.2, "header")
    assert headers.file_spacing(str(tmp_path / "a.nii"), None, (1.0, 1.0)) == (None, "none")
    assert headers.file_spacing(str(tmp_path / "a.png"), None, None) == (None, "none")


def test_reader_messages_lose_the_path():
    path = "/data/Doe_Jane/img.png"
    message = f'sitk::ERROR: Unable to determine ImageIO reader for "{path}"'
    assert (
        headers.redact(message, path)
        == "sitk::ERROR: Unable to determine ImageIO reader for the file"
    )
    assert "Doe" not in headers.redact('cannot open "/other/Doe/x.png"', path)


def test_a_vanished_file_is_the_filesystems_error_not_a_header_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        headers.sitk_info(str(tmp_path / "gone.png"))
    assert info.value.errno == errno.ENOENT


def test_random_bytes_are_an_unreadable_header(tmp_path):
    path = tmp_path / "r.png"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(HeaderError, match="unreadable image"):
        headers.sitk_info(str(path))
