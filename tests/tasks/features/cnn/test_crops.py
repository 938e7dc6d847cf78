"""Crop step of the CNN: lesion boxes, padding, scaling, CDUS geometry, mask variants."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from tasks.data.schema import perturbed_mask_sha
from tasks.features.cnn.crops import (
    case_crops,
    crop_box,
    crop_case,
    file_sha256,
    has_cdus,
    mask_variants,
    require_cdus,
    variant_mask_sha,
)
from tasks.features.imaging import InputError, perturb_mask, perturb_seed
from tests.tasks.features.cnn.common import SIZE, case_row, rect

torch.set_num_threads(1)


def test_crop_keeps_the_lesion_with_its_margin_in_a_square(tmp_path):
    bmus = np.full((64, 80), 50, np.uint8)
    mask = rect(bmus.shape, (20, 29), (30, 49))  # 10 x 20 px lesion
    bmus[mask == 1] = 200
    case = case_row(tmp_path, bmus, mask)
    # Side 20 * (1 + 2 * 0.25) = 30 px: at size 30 the crop is the window itself.
    crop, cdus = crop_case(case, size=30, margin=0.25)
    assert cdus is None and crop.shape == (1, 30, 30) and crop.dtype == torch.float32
    lesion = torch.zeros(30, 30, dtype=torch.bool)
    lesion[10:20, 5:25] = True  # 10 rows of margin above and below, 5 columns each side
    torch.testing.assert_close(crop[0][lesion], torch.full((200,), 200 / 255))
    torch.testing.assert_close(crop[0][~lesion], torch.full((700,), 50 / 255))
    big, _ = crop_case(case, size=60, margin=0.25)
    assert big.shape == (1, 60, 60) and 0.0 <= big.min() and big.max() <= 1.0
    wide = (big[0] > 0.5).any(dim=0).nonzero()
    assert wide.min() == 10 and wide.max() == 49  # two thirds of the width, centred


def test_cdus_crop_has_the_bmus_geometry_at_any_resolution(tmp_path):
    bmus = np.full((64, 80), 60, np.uint8)
    mask = rect(bmus.shape, (20, 30), (30, 50))  # centre pixel (25, 40)
    for factor in (1, 2):
        cdus = np.full((64 * factor, 80 * factor, 3), 60, np.uint8)
        cdus[25 * factor : 26 * factor, 40 * factor : 41 * factor] = (255, 0, 0)
        case = case_row(tmp_path, bmus, mask, cdus)
        _, crop = crop_case(case, size=64, margin=0.25)
        assert crop.shape == (3, 64, 64)
        redness = crop[0] - crop[1]
        row, col = divmod(int(redness.argmax()), 64)
        assert abs(row - 32) <= 2 and abs(col - 32) <= 2, (factor, row, col)
        assert crop[1].max() <= crop[0].max()  # colour kept


def test_crop_pads_past_the_border_instead_of_distorting(tmp_path):
    bmus = np.full((60, 60), 100, np.uint8)
    mask = rect(bmus.shape, (30, 39), (0, 9))  # touches the left border
    bmus[mask == 1] = 250
    # Side 10 * 2 = 20 px centred on the lesion: 5 columns fall left of the image.
    crop, _ = crop_case(case_row(tmp_path, bmus, mask), size=20, margin=0.5)
    assert torch.all(crop[0, :, :5] == 0)
    bright = (crop[0] > 0.9).nonzero()
    assert bright[:, 0].min() == 5 and bright[:, 0].max() == 14  # rows: 10 px, centred
    assert bright[:, 1].min() == 5 and bright[:, 1].max() == 14  # columns: still 10 px


def test_rgb_bmode_becomes_luminance(tmp_path):
    bmus = np.zeros((40, 40, 3), np.uint8)
    bmus[...] = (100, 150, 50)
    mask = rect((40, 40), (15, 24), (15, 24))
    crop, _ = crop_case(case_row(tmp_path, bmus, mask), size=SIZE)
    assert crop.shape == (1, SIZE, SIZE)
    expected = (0.299 * 100 + 0.587 * 150 + 0.114 * 50) / 255
    torch.testing.assert_close(crop, torch.full_like(crop, expected))


def test_empty_or_missing_mask_names_the_file(tmp_path):
    bmus = np.full((40, 40), 100, np.uint8)
    case = case_row(tmp_path, bmus, np.zeros((40, 40), np.uint8))
    with pytest.raises(InputError, match="mask is empty") as err:
        crop_case(case)
    assert err.value.column == "bmus_mask"
    with pytest.raises(InputError, match="no reader2 mask"):
        crop_case(case, mask_variant="reader2")


def test_crops_of_the_perturbed_mask_when_asked(tmp_path):
    bmus = (np.arange(80 * 100).reshape(80, 100) % 251).astype(np.uint8)
    yy, xx = np.mgrid[:80, :100]
    mask = (((yy - 40) ** 2 + (xx - 50) ** 2) <= 20**2).astype(np.uint8)
    case = case_row(tmp_path, bmus, mask) | {"bmus_mask_sha256": "m1"}
    assert mask_variants(case) == ["reader1"]
    assert mask_variants(case, perturb=True) == ["reader1", "perturbed"]
    assert list(case_crops(case, size=SIZE)) == ["reader1"]
    crops = case_crops(case, size=SIZE, perturb=True)
    assert list(crops) == ["reader1", "perturbed"]
    # The box follows the perturbed mask: the one radiomics measures, seeded by the case.
    perturbed = perturb_mask(mask, perturb_seed("C1", "m1"))
    assert crop_box(perturbed, 0.25) != crop_box(mask, 0.25)
    box = crop_box(perturbed, 0.25)
    side = round(box[2])
    window = bmus[
        round(box[0] - side / 2) : round(box[0] - side / 2) + side,
        round(box[1] - side / 2) : round(box[1] - side / 2) + side,
    ]
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(window / 255.0).float()[None, None],
        size=(SIZE, SIZE),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0]
    torch.testing.assert_close(crops["perturbed"][0], expected, atol=1e-5, rtol=0)
    assert not torch.equal(crops["perturbed"][0], crops["reader1"][0])
    # Asked for by name: the same crop.
    torch.testing.assert_close(case_crops(case, ["perturbed"], SIZE)["perturbed"][0], expected)
    assert variant_mask_sha(case, "perturbed") == perturbed_mask_sha("m1")
    assert variant_mask_sha(case, "reader1") == "m1"

    # A case with a real repeat is never perturbed.
    repeat = case | {"bmus_mask_repeat": case["bmus_mask"], "bmus_mask_repeat_sha256": "m1"}
    assert list(case_crops(repeat, size=SIZE, perturb=True)) == ["reader1", "repeat"]
    with pytest.raises(InputError, match="no perturbed mask"):
        case_crops(repeat, ["perturbed"], SIZE)


def test_cdus_checks_and_file_hashes(tmp_path):
    bmus = np.full((40, 40), 100, np.uint8)
    mask = rect((40, 40), (15, 24), (15, 24))
    single = case_row(tmp_path, bmus, mask) | {"case_id": "S1"}
    dual = case_row(tmp_path, bmus, mask, np.zeros((40, 40, 3), np.uint8)) | {"case_id": "D1"}
    assert has_cdus([dual]) and not has_cdus([dual, single]) and not has_cdus([])
    require_cdus([dual])
    with pytest.raises(ValueError, match="needs a CDUS image; missing for S1$"):
        require_cdus([dual, single])
    # The row's hash when it has one, else the file's; None without a file.
    assert file_sha256(single | {"bmus_image_sha256": "given"}, "bmus_image") == "given"
    with open(single["bmus_image"], "rb") as handle:
        expected = hashlib.sha256(handle.read()).hexdigest()
    assert file_sha256(single, "bmus_image") == expected
    assert file_sha256(single, "cdus_image") is None


def test_dicom_crops_stay_inside_the_imaging_region(tmp_path):
    # Burned-in text (white) left of the imaging region; the lesion sits at its edge, so the
    # crop window reaches the text: it reads as zero, as past the image border.
    from tests.tasks.data import dicom_files as files

    bmus = np.full((64, 80), 60, np.uint8)
    bmus[:, :20] = 255  # annotations, calipers, scale
    mask = rect(bmus.shape, (24, 40), (22, 40))  # rows 24-40, columns 22-40
    bmus[mask == 1] = 120
    cdus = np.repeat(bmus[..., None], 3, axis=2)
    regions = [files.region(20, 0, 79, 63, 0.01)]
    files.write(tmp_path / "b.dcm", bmus, regions=regions)
    files.write(tmp_path / "c.dcm", cdus, regions=regions)
    files.write_png(tmp_path / "m.png", mask * 255)
    case = {
        "case_id": "D1",
        "bmus_image": str(tmp_path / "b.dcm"),
        "bmus_mask": str(tmp_path / "m.png"),
        "cdus_image": str(tmp_path / "c.dcm"),
    }
    crop, cdus_crop = crop_case(case, size=32, margin=0.5)
    assert crop.max() < 0.5 and cdus_crop.max() < 0.5  # no text pixel (1.0) left
    assert (crop > 0.4).any()  # the lesion is there
    # The same frame as PNG has no regions: the text is in the crop.
    files.write_png(tmp_path / "b.png", bmus)
    png_case = {**case, "bmus_image": str(tmp_path / "b.png"), "cdus_image": ""}
    as_png, _ = crop_case(png_case, size=32, margin=0.5)
    assert as_png.max() == 1.0
