"""Imaging step: reading, grey conversion, masks, the peritumoral ring, case regions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tasks.data.schema import perturbed_mask_sha
from tasks.features.imaging import (
    InputError,
    case_regions,
    peritumoral_ring,
    perturb_mask,
    perturb_seed,
    read_image,
    read_mask,
    ring_width_px,
    set_spacing,
    to_grey,
)


def disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> str:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=array.ndim == 3), str(path))
    return str(path)


def ring_of(lesion: np.ndarray, **kwargs) -> np.ndarray:
    return sitk.GetArrayFromImage(peritumoral_ring(sitk.GetImageFromArray(lesion), **kwargs))


def test_ring_area_is_an_annulus_outside_the_lesion():
    radius, width = 30, 10
    lesion = disk((200, 200), (100, 100), radius)
    ring = ring_of(lesion, width_px=width)
    expected = math.pi * ((radius + width) ** 2 - radius**2)
    assert ring.sum() == pytest.approx(expected, rel=0.03)
    assert not np.any(ring & lesion)
    # Round, not square: the ring reaches r + w along the axis and along the diagonal alike.
    outer = ring | lesion
    assert outer.sum() == pytest.approx(math.pi * (radius + width) ** 2, rel=0.02)
    # It hugs the lesion: every background pixel next to the lesion is in the ring.
    from scipy import ndimage

    border = ndimage.binary_dilation(lesion) & ~lesion.astype(bool)
    assert np.all(ring[border])


def test_ring_is_clipped_at_the_image_border():
    radius, width = 30, 10
    lesion = disk((200, 120), (100, 0), radius)  # centred on the left edge
    ring = ring_of(lesion, width_px=width)
    assert ring.shape == lesion.shape
    half_annulus = math.pi * ((radius + width) ** 2 - radius**2) / 2
    assert ring.sum() == pytest.approx(half_annulus, rel=0.05)


def test_ring_width_in_mm_uses_the_spacing():
    assert ring_width_px(3.0, 10, 0.1) == pytest.approx(30.0)
    assert ring_width_px(3.0, 10, None) == 10.0
    assert ring_width_px(3.0, 10, float("nan")) == 10.0
    lesion = disk((200, 200), (100, 100), 25)
    in_mm = ring_of(lesion, width_mm=3.0, width_px=10, pixel_spacing_mm=0.1)
    assert np.array_equal(in_mm, ring_of(lesion, width_px=30))
    assert in_mm.sum() == pytest.approx(math.pi * (55**2 - 25**2), rel=0.03)


def test_rgb_becomes_float32_luminance(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    grey = to_grey(read_image(write_png(tmp_path / "rgb.png", rgb)))
    assert grey.GetNumberOfComponentsPerPixel() == 1
    assert grey.GetPixelID() == sitk.sitkFloat32
    expected = 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    assert np.allclose(sitk.GetArrayViewFromImage(grey), expected, atol=1e-3)


def test_greyscale_becomes_float32_with_the_same_values(tmp_path):
    grey8 = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) % 256
    grey = to_grey(read_image(write_png(tmp_path / "g.png", grey8.astype(np.uint8))))
    assert grey.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(sitk.GetArrayViewFromImage(grey), grey8.astype(np.float32))


@pytest.mark.parametrize("value", [1, 255])
def test_masks_become_0_1_uint8_on_the_image_grid(tmp_path, value):
    lesion = disk((40, 50), (20, 25), 8)
    image = set_spacing(sitk.GetImageFromArray(np.zeros((40, 50), np.float32)), 0.1)
    mask = read_mask(write_png(tmp_path / "m.png", (lesion * value).astype(np.uint8)), image)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayViewFromImage(mask), lesion)
    assert mask.GetSpacing() == pytest.approx((0.1, 0.1))


def test_rgb_mask_uses_its_first_channel(tmp_path):
    lesion = disk((40, 50), (20, 25), 8)
    rgb = np.repeat((lesion * 255)[..., None], 3, axis=2).astype(np.uint8)
    image = sitk.GetImageFromArray(np.zeros((40, 50), np.float32))
    mask = read_mask(write_png(tmp_path / "m.png", rgb), image)
    assert np.array_equal(sitk.GetArrayViewFromImage(mask), lesion)


def test_mask_of_another_size_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((40, 50), np.float32))
    path = write_png(tmp_path / "m.png", np.ones((40, 51), np.uint8))
    with pytest.raises(ValueError, match="does not match the image size"):
        read_mask(path, image)


def test_read_image_from_s3(s3_bucket, tmp_path):
    import fsspec

    array = (np.arange(12 * 16).reshape(12, 16) % 256).astype(np.uint8)
    local = write_png(tmp_path / "img.png", array)
    fsspec.filesystem("s3").put(local, f"{s3_bucket}/cases/img.png")
    image = read_image(f"{s3_bucket}/cases/img.png")
    assert np.array_equal(sitk.GetArrayViewFromImage(image), array)


def test_read_image_keeps_a_double_suffix(tmp_path):
    import fsspec

    volume = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(1, 4, 6))
    sitk.WriteImage(volume, str(tmp_path / "v.nii.gz"))
    fsspec.filesystem("memory").put(str(tmp_path / "v.nii.gz"), "/sln/v.nii.gz")
    image = to_grey(read_image("memory://sln/v.nii.gz"))  # one-slice 3D -> 2D frame
    assert image.GetDimension() == 2
    assert np.array_equal(sitk.GetArrayViewFromImage(image), np.arange(24).reshape(4, 6))


@pytest.fixture
def case(tmp_path) -> dict:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (60, 80)).astype(np.uint8)
    row = {
        "case_id": "C1",
        "bmus_image": write_png(tmp_path / "img.png", image),
        "bmus_mask": write_png(tmp_path / "r1.png", disk((60, 80), (30, 40), 10) * 255),
        "bmus_mask_reader2": float("nan"),
        "bmus_mask_repeat": write_png(tmp_path / "rep.png", disk((60, 80), (30, 41), 11) * 255),
        "pixel_spacing_mm": 0.2,
    }
    for col in ("bmus_image", "bmus_mask", "bmus_mask_repeat"):
        row[f"{col}_sha256"] = f"sha-{col}"
    row["bmus_mask_reader2_sha256"] = None
    return row


def test_regions_for_every_variant_present_and_only_those(case):
    regions = case_regions(case, ring_mm=1.0, ring_px=10)
    assert [(r.region, r.mask_variant) for r in regions] == [
        ("intratumoral", "reader1"),
        ("peritumoral", "reader1"),
        ("intratumoral", "repeat"),
        ("peritumoral", "repeat"),
    ]
    assert len({id(r.image) for r in regions}) == 1  # the image is read once
    assert all(r.image_sha256 == "sha-bmus_image" for r in regions)
    assert [r.mask_sha256 for r in regions[::2]] == ["sha-bmus_mask", "sha-bmus_mask_repeat"]
    first = regions[0]
    assert first.image.GetPixelID() == sitk.sitkFloat32
    assert first.image.GetSpacing() == pytest.approx((0.2, 0.2))
    assert first.mask.GetSpacing() == pytest.approx((0.2, 0.2))
    # 1 mm at 0.2 mm/px: a 5 px ring around the radius-10 disk.
    ring = sitk.GetArrayViewFromImage(regions[1].mask)
    assert ring.sum() == pytest.approx(math.pi * (15**2 - 10**2), rel=0.05)


@pytest.mark.parametrize("missing", [None, float("nan"), "", pd.NA])
def test_absent_variants_are_skipped(case, missing):
    case["bmus_mask_repeat"] = missing
    case["pixel_spacing_mm"] = missing
    regions = case_regions(case)
    assert {r.mask_variant for r in regions} == {"reader1"}
    assert regions[0].image.GetSpacing() == (1.0, 1.0)


def test_unreadable_mask_names_the_file(case, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    case["bmus_mask_repeat"] = str(bad)
    with pytest.raises(InputError) as info:
        case_regions(case)
    assert info.value.file == str(bad)
    assert info.value.column == "bmus_mask_repeat"
    assert str(bad) in str(info.value)


# -- perturbed masks -------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_perturb_mask_is_deterministic_binary_and_of_the_same_shape():
    lesion = disk((120, 150), (60, 70), 30)
    first = perturb_mask(lesion, 7)
    assert first.shape == lesion.shape and first.dtype == np.uint8
    assert set(np.unique(first)) <= {0, 1}
    assert np.array_equal(first, perturb_mask(lesion, 7))
    assert np.array_equal(first, perturb_mask(lesion * 255, 7))  # 0/255 masks alike
    assert not np.array_equal(first, perturb_mask(lesion, 8))
    assert not np.array_equal(first, lesion)


def test_perturb_mask_moves_the_contour_by_a_few_pixels():
    lesion = disk((200, 200), (100, 100), 30)
    scores = [dice(perturb_mask(lesion, seed), lesion) for seed in range(40)]
    assert 0.8 < min(scores) and max(scores) < 0.99
    # Erosion, dilation and none all occur: the area goes up and down.
    areas = [int(perturb_mask(lesion, seed).sum()) for seed in range(40)]
    assert min(areas) < lesion.sum() < max(areas)
    # Only near the contour: the core stays, nothing far outside appears.
    for seed in range(10):
        out = perturb_mask(lesion, seed)
        assert np.all(out[disk((200, 200), (100, 100), 22) == 1] == 1)
        assert not np.any(out[disk((200, 200), (100, 100), 38) == 0])


def test_perturb_mask_is_never_empty():
    tiny = disk((40, 40), (20, 20), 2)  # 13 pixels: too small to perturb
    for seed in range(20):
        assert np.array_equal(perturb_mask(tiny, seed), tiny)
    small = disk((40, 40), (20, 20), 3)
    for seed in range(50):
        assert perturb_mask(small, seed).sum() >= 20
    edge = disk((60, 60), (0, 0), 6)  # a lesion in the image corner
    for seed in range(20):
        out = perturb_mask(edge, seed)
        assert out.shape == edge.shape and out.sum() >= 20


def test_perturb_seed_is_stable_and_case_specific():
    seed = perturb_seed("C1", "abc")
    assert seed == perturb_seed("C1", "abc")
    assert seed == 2840362738915931639  # SHA-256 based: the same in every process
    assert seed != perturb_seed("C2", "abc") != perturb_seed("C1", "abd")


def test_regions_of_the_perturbed_mask_when_asked_and_no_real_repeat(case):
    assert {r.mask_variant for r in case_regions(case, perturb=True)} == {"reader1", "repeat"}
    case["bmus_mask_repeat"] = None
    assert {r.mask_variant for r in case_regions(case)} == {"reader1"}
    regions = case_regions(case, ring_mm=1.0, perturb=True)
    assert [(r.region, r.mask_variant) for r in regions] == [
        ("intratumoral", "reader1"),
        ("peritumoral", "reader1"),
        ("intratumoral", "perturbed"),
        ("peritumoral", "perturbed"),
    ]
    reader1, ring1, perturbed, ring = (sitk.GetArrayFromImage(r.mask) for r in regions)
    assert regions[2].mask_sha256 == perturbed_mask_sha("sha-bmus_mask")
    assert regions[2].mask_file == case["bmus_mask"] and regions[2].mask_column == "bmus_mask"
    assert regions[2].image is regions[0].image
    assert regions[2].mask.GetSpacing() == pytest.approx((0.2, 0.2))
    expected = perturb_mask(reader1, perturb_seed("C1", "sha-bmus_mask"))
    assert np.array_equal(perturbed, expected) and not np.array_equal(perturbed, reader1)
    # The ring grows from the perturbed lesion, not from reader 1's.
    assert not np.any(ring & perturbed) and not np.array_equal(ring, ring1)
    assert np.array_equal(ring, ring_of(perturbed, width_px=5))
    assert np.array_equal(
        perturbed, sitk.GetArrayFromImage(case_regions(case, perturb=True)[2].mask)
    )


# --- hostile input at extraction ----------------------------------------------------------
def test_an_rgba_mask_uses_its_first_channel_and_a_drawing_is_refused(tmp_path):
    lesion = disk((40, 50), (20, 25), 8) * 255
    opaque = np.full_like(lesion, 255)
    image = sitk.GetImageFromArray(np.zeros((40, 50), np.float32))
    rgba = np.stack([lesion, lesion, lesion, opaque], axis=-1).astype(np.uint8)
    mask = read_mask(write_png(tmp_path / "rgba.png", rgba), image)
    assert np.array_equal(sitk.GetArrayViewFromImage(mask), lesion // 255)
    drawn = np.stack([lesion, np.zeros_like(lesion), lesion, opaque], axis=-1).astype(np.uint8)
    with pytest.raises(ValueError, match="colour channels differ"):
        read_mask(write_png(tmp_path / "drawn.png", drawn), image)


def test_a_huge_header_is_refused_before_decoding(tmp_path, monkeypatch):
    from tasks.data.headers import HeaderError
    from tests.tasks.data import hostile_files as hostile

    path = tmp_path / "huge.png"
    path.write_bytes(hostile.huge_png(30000, 30000))
    monkeypatch.setattr(sitk, "ReadImage", lambda *a: pytest.fail("decoded a huge image"))
    with pytest.raises(HeaderError, match="max_image_side 8192"):
        read_image(str(path))


def test_a_truncated_jpeg_is_never_read_as_a_grey_half(tmp_path):
    from tasks.data.headers import HeaderError
    from tests.tasks.data import hostile_files as hostile

    path = tmp_path / "half.jpg"
    path.write_bytes(hostile.cut(hostile.jpeg(hostile.speckle((64, 80)))))
    with pytest.raises(HeaderError, match="truncated file"):
        read_image(str(path))


def _case(tmp_path: Path) -> dict:
    image = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    return {
        "case_id": "C1",
        "bmus_image": write_png(tmp_path / "img.png", image),
        "bmus_mask": write_png(tmp_path / "m.png", disk((40, 50), (20, 25), 8) * 255),
    }


@pytest.mark.parametrize("column", ["bmus_image", "bmus_mask"])
def test_a_vanished_file_is_a_storage_error_not_bad_input(tmp_path, column):
    case = _case(tmp_path)
    Path(case[column]).unlink()
    with pytest.raises(FileNotFoundError):
        case_regions(case)


def test_an_eio_is_a_storage_error_but_a_garbage_file_is_bad_input(tmp_path, monkeypatch):
    import errno

    from tasks.features import imaging

    case = _case(tmp_path)
    Path(case["bmus_mask"]).write_bytes(b"readable, not an image")
    with pytest.raises(InputError, match="unusable mask: unreadable image"):
        case_regions(case)
    assert imaging.storage_error(OSError(errno.EIO, "Input/output error"))
    assert not imaging.storage_error(OSError("image file is truncated"))  # PIL: no errno

    def eio(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sitk, "ReadImage", eio)
    with pytest.raises(OSError, match="Input/output error"):
        case_regions(_case(tmp_path))
