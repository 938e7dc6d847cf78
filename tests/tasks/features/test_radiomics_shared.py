"""Each image filtered once: features equal ``RadiomicsFeatureExtractor.execute`` per region.

Every feature column (and the kept diagnostics) of every region x mask variant, on every
image type of the project's params, on BUS-BRA frames and on synthetic cases. Expected:
exactly equal. The shared path calls the same pyradiomics functions on the same inputs in
the same order (the filtered image is the same object for every mask, cropped to each
mask's box exactly as ``execute`` crops its own copy), so there is no reason for any
difference, not even rounding: the tolerance of 1e-12 relative is never used.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tasks.config import Settings
from tasks.data.sources.synthetic import generate_cohort
from tasks.features.imaging import Region, case_regions
from tasks.features.radiomics import extract_case, extract_region, load_params, make_extractor
from tasks.features.radiomics_shared import (
    VERSION_KEY,
    VOXELS_KEY,
    SharedBinning,
    SharedImage,
    sharing_blocked,
)

RELATIVE = 1e-12
BUSBRA_CASES = ("0001-l", "0100-r")  # two scanners' frames; reader 1 + a perturbed mask


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(Settings().radiomics_params)


def compare(reference: dict, shared: dict) -> tuple[int, float]:
    """(values compared, max relative difference); fails on any column or value mismatch."""
    assert list(shared) == list(reference)  # same columns in the same order
    worst = 0.0
    for name, expected in reference.items():
        got = shared[name]
        if isinstance(expected, str) or isinstance(got, str):
            assert got == expected, name
            continue
        expected, got = float(expected), float(got)
        if math.isnan(expected) or math.isnan(got):
            assert math.isnan(expected) and math.isnan(got), name
            continue
        difference = abs(got - expected) / max(abs(expected), np.finfo(float).tiny)
        assert difference <= RELATIVE, (name, expected, got)
        worst = max(worst, difference)
    return len(reference), worst


def assert_same_as_execute(params: dict, regions: list[Region]) -> tuple[int, float]:
    extractor = make_extractor(params)
    shared = SharedImage(extractor, regions[0].image)
    compared, worst = 0, 0.0
    for region in regions:
        reference = extract_region(extractor, region)  # execute on this region alone
        n, difference = compare(reference, extract_region(extractor, region, shared))
        compared, worst = compared + n, max(worst, difference)
    prefixes = {name.split("_")[0] for name in reference if "_" in name}
    assert len(prefixes) >= len(params["imageType"])  # every image type was measured
    return compared, worst


def busbra_case(data: Path, case_id: str) -> dict:
    return {
        "case_id": case_id,
        "bmus_image": str(data / "Images" / f"bus_{case_id}.png"),
        "bmus_mask": str(data / "Masks" / f"mask_{case_id}.png"),
        "bmus_mask_sha256": f"sha-{case_id}",
    }


@pytest.fixture(scope="module")
def busbra(shared_data) -> Path:
    path = shared_data / "busbra"
    if not (path / "Images").is_dir():
        pytest.skip(f"BUS-BRA not found at {path}")
    return path


@pytest.mark.parametrize("case_id", BUSBRA_CASES)
def test_busbra_every_feature_equals_execute(busbra, params, case_id):
    regions = case_regions(busbra_case(busbra, case_id), perturb=True)
    assert [r.mask_variant for r in regions] == ["reader1"] * 2 + ["perturbed"] * 2
    compared, worst = assert_same_as_execute(params, regions)
    assert compared == 4 * 755  # 753 features + 2 diagnostics, 4 regions
    assert worst == 0.0


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> list[dict]:
    """Synthetic cases with reader-2 and repeat masks (6 regions each), paths resolved."""
    manifest = generate_cohort(tmp_path_factory.mktemp("syn"), n_patients=2, repeat_share=1.0)
    rows = pd.read_csv(manifest).to_dict("records")
    columns = ("bmus_image", "bmus_mask", "bmus_mask_reader2", "bmus_mask_repeat")
    return [row | {c: str(manifest.parent / row[c]) for c in columns} for row in rows]


def test_synthetic_every_feature_equals_execute(synthetic, params):
    """Both ways in: SharedImage directly, and the rows extract_case stores (which use it)."""
    case = synthetic[0]
    regions = case_regions(case, perturb=True)  # real repeats: no perturbed mask
    assert {r.mask_variant for r in regions} == {"reader1", "reader2", "repeat"}
    extractor = make_extractor(params)
    shared = SharedImage(extractor, regions[0].image)
    rows = extract_case(case, params, perturb=True)
    compared, worst = 0, 0.0
    for row, region in zip(rows, regions, strict=True):
        reference = extract_region(extractor, region)  # execute on this region alone
        n, difference = compare(reference, extract_region(extractor, region, shared))
        compared, worst = compared + n, max(worst, difference)
        assert (row["region"], row["mask_variant"]) == (region.region, region.mask_variant)
        stored = {k: row[k] for k in reference}
        assert compare(reference, stored)[1] == 0.0
    assert compared == 6 * 755
    assert worst == 0.0


def speckle_case(folder: Path) -> list[Region]:
    rng = np.random.default_rng(5)
    shape = (72, 80)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.clip(rng.rayleigh(40, shape) + 60, 0, 255).astype(np.uint8)
    row: dict = {"case_id": "S1"}
    for column, radius in (("bmus_mask", 16), ("bmus_mask_reader2", 18)):
        path = folder / f"{column}.png"
        mask = ((yy - 36) ** 2 + (xx - 40) ** 2 <= radius**2).astype(np.uint8) * 255
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(path))
        row[column] = str(path)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / "image.png"))
    row["bmus_image"] = str(folder / "image.png")
    return case_regions(row)


SETTINGS_VARIANTS = {
    # Each changes a step the shared path re-implements the order of.
    "normalize": {"normalize": True, "normalizeScale": 100},
    "resegment": {"resegmentRange": [60, 200]},
    "resegment-shape": {"resegmentRange": [60, 200], "resegmentShape": True},
    "bin-count": {"binWidth": None, "binCount": 16},
    "voxel-shift": {"voxelArrayShift": 10},
    "no-additional-info": {"additionalInfo": False},
}


@pytest.mark.parametrize("variant", sorted(SETTINGS_VARIANTS))
def test_settings_variants_equal_execute(tmp_path, params, variant):
    changed = copy.deepcopy(params)
    # Filters of every kind that need no extra package (LBP needs scikit-image).
    changed["imageType"] = {"Original": {}, "Square": {}, "Gradient": {}}
    for key, value in SETTINGS_VARIANTS[variant].items():
        if value is None:
            changed["setting"].pop(key, None)
        else:
            changed["setting"][key] = value
    regions = speckle_case(tmp_path)
    compared, worst = assert_same_as_execute(changed, regions)
    assert compared >= 4 * 250
    assert worst == 0.0


def test_image_types_with_a_custom_setting_equal_execute(tmp_path, params):
    changed = copy.deepcopy(params)
    changed["imageType"] = {"LoG": {"sigma": [1.5], "binWidth": 3}, "Wavelet": {"level": 1}}
    _, worst = assert_same_as_execute(changed, speckle_case(tmp_path))
    assert worst == 0.0


def test_filters_run_once_per_image(tmp_path, params, monkeypatch):
    from radiomics import imageoperations

    calls = []
    original = imageoperations.getLoGImage

    def counting(image, mask, **kwargs):
        calls.append(image)
        yield from original(image, mask, **kwargs)

    monkeypatch.setattr(imageoperations, "getLoGImage", counting)
    regions = speckle_case(tmp_path)
    shared = SharedImage(make_extractor(params), regions[0].image)
    for region in regions:
        shared.measure(region.mask)
    assert len(calls) == 1 and len(regions) == 4


def test_mask_dependent_settings_fall_back_to_execute(tmp_path, params):
    assert sharing_blocked({"preCrop": True})
    assert sharing_blocked({"interpolator": "sitkBSpline", "resampledPixelSpacing": [1, 1]})
    assert sharing_blocked({"interpolator": "sitkBSpline", "resampledPixelSpacing": None}) is None
    changed = copy.deepcopy(params)
    changed["imageType"] = {"Original": {}}
    changed["setting"]["preCrop"] = True
    regions = speckle_case(tmp_path)
    extractor = make_extractor(changed)
    shared = SharedImage(extractor, regions[0].image)
    assert shared.blocked
    result = shared.measure(regions[0].mask)
    assert {k for k in result if k.startswith("diagnostics_")} == {VERSION_KEY, VOXELS_KEY}
    _, worst = assert_same_as_execute(changed, regions)
    assert worst == 0.0


def test_a_failing_mask_fails_like_execute(tmp_path, params):
    regions = speckle_case(tmp_path)
    empty = sitk.Image(regions[0].mask)
    empty *= 0
    extractor = make_extractor(params)
    with pytest.raises(ValueError) as reference:
        extractor.execute(regions[0].image, empty)
    with pytest.raises(ValueError) as shared:
        SharedImage(extractor, regions[0].image).measure(empty)
    assert str(shared.value) == str(reference.value)


def test_binning_runs_once_per_filtered_image_and_mask(tmp_path, params, monkeypatch):
    """Each feature class bins the same gray levels; the shared path bins once per filtered
    image per mask where ``computeFeatures`` bins once per class (the values stay equal:
    the tests above compare every feature with ``execute``)."""
    from radiomics import imageoperations

    calls = []
    original = imageoperations.binImage

    def counting(matrix, coordinates=None, **kwargs):
        calls.append(matrix.shape)
        return original(matrix, coordinates, **kwargs)

    monkeypatch.setattr(imageoperations, "binImage", counting)
    regions = speckle_case(tmp_path)
    extractor = make_extractor(params)
    shared = SharedImage(extractor, regions[0].image)
    result = shared.measure(regions[0].mask)
    images = {name.split("_")[0] for name in result if not name.startswith("diagnostics_")}
    binning = [c for c in extractor.enabledFeatures if c != "shape2D" and c != "shape"]
    assert len(binning) == 6  # first order and the five texture classes
    assert len(calls) == len(images) == 8  # original, 4 wavelets, 3 LoG sigmas
    calls.clear()
    extractor.execute(regions[0].image, regions[0].mask)
    assert len(calls) == 6 * len(images)


def test_binning_shared_only_for_equal_inputs(tmp_path, params):
    """A class given another image or mask than the first is binned afresh, and a class that
    changes its binned array in place does not change the next class's."""
    from radiomics import glcm, glszm

    regions = speckle_case(tmp_path)
    extractor = make_extractor(params)
    settings = {**extractor.settings}
    image, mask = regions[0].image, regions[0].mask
    brighter = sitk.Cast(image, sitk.sitkFloat32) * 1.7
    other_mask = regions[2].mask  # reader 2's larger circle

    def made(cls, binning, img, msk):
        feature = cls.__new__(cls)
        binning.bind(feature)
        feature.__init__(img, msk, **settings)
        return feature

    def alone(cls, img, msk):
        return cls(img, msk, **settings)

    binning = SharedBinning()
    first = made(glcm.RadiomicsGLCM, binning, image, mask)
    reference = alone(glszm.RadiomicsGLSZM, image, mask).imageArray.copy()
    first.imageArray[:] = 0  # a class changing its own array in place
    second = made(glszm.RadiomicsGLSZM, binning, image, mask)
    assert np.array_equal(second.imageArray, reference)
    for img, msk in ((brighter, mask), (image, other_mask)):
        got = made(glszm.RadiomicsGLSZM, binning, img, msk)
        expected = alone(glszm.RadiomicsGLSZM, img, msk)
        assert np.array_equal(got.imageArray, expected.imageArray)
        assert got.coefficients["Ng"] == expected.coefficients["Ng"]
        assert np.array_equal(got.coefficients["grayLevels"], expected.coefficients["grayLevels"])
    assert not np.array_equal(
        alone(glszm.RadiomicsGLSZM, brighter, mask).imageArray, reference
    )  # the inputs above really bin differently


def test_feature_lists_are_read_once_per_class(tmp_path, params, monkeypatch):
    """pyradiomics enumerates a class's members (``inspect.getmembers``) for every instance;
    the shared path does it once per class and process."""
    import inspect

    from tasks.features import radiomics_shared

    calls = []
    original = inspect.getmembers

    def counting(obj, *args):
        calls.append(obj)
        return original(obj, *args)

    monkeypatch.setattr(inspect, "getmembers", counting)
    radiomics_shared._feature_names.cache_clear()
    regions = speckle_case(tmp_path)
    shared = SharedImage(make_extractor(params), regions[0].image)
    for region in regions:
        shared.measure(region.mask)
    texture = [c for c in calls if c.__module__.split(".")[-1] != "shape2D"]
    assert len(texture) == len(set(texture)) == 6  # once per class, 32 images x masks


def test_feature_classes_are_freed_without_the_cyclic_gc(tmp_path, params):
    """A feature class's matrices go when its features are read: the shared path leaves no
    reference cycle through a class (one held every class's arrays until the cyclic GC,
    +42 MB of peak RSS over 25 BUS-BRA cases)."""
    import gc

    from radiomics.base import RadiomicsFeaturesBase

    regions = speckle_case(tmp_path)
    shared = SharedImage(make_extractor(params), regions[0].image)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # unreachable objects go to gc.garbage, not freed
    try:
        shared.measure(regions[0].mask)
        gc.collect()
        cyclic = [o for o in gc.garbage if isinstance(o, RadiomicsFeaturesBase)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == []
