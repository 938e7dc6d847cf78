"""Radiomics of one image, filtered once: every region and mask variant of a case measured on
the same filtered images.

pyradiomics' ``RadiomicsFeatureExtractor.execute`` takes one image and one mask: it checks
the mask, normalises the image, filters it (Original, Wavelet, LoG, ...) and measures the
mask on each filtered image. Called once per region x mask variant, as the radiomics step
used to, it filters the same image two to eight times per case. :class:`SharedImage` runs
the steps that read only the image (normalising, filtering) once, and those that read the
mask once per mask, in ``execute``'s order and with pyradiomics' own functions
(``getMask``, ``checkMask``, ``resegmentMask``, ``cropToTumorMask``, ``computeShape``, the
feature classes), so pyradiomics still owns every feature definition and the values are
those of ``execute`` (tests/tasks/features/test_radiomics_shared.py compares every feature).
Within one filtered image and mask, the gray-level binning every feature class repeats is
also done once (:class:`SharedBinning`).

Settings under which the filtered image depends on the mask (resampling, ``preCrop``: both
crop the image to the mask's box before filtering) fall back to ``execute`` per mask.
Reads and writes nothing.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import radiomics
import SimpleITK as sitk
from radiomics import featureextractor, imageoperations

# The only diagnostics the radiomics rows keep (tasks.features.radiomics.DIAGNOSTICS). The
# others ``execute`` adds with ``additionalInfo`` (image and mask hashes, image statistics,
# connected components, centre of mass) are computed over the whole frame per mask and then
# dropped, so they are not computed here.
VERSION_KEY = "diagnostics_Versions_PyRadiomics"
VOXELS_KEY = "diagnostics_Mask-original_VoxelNum"
# Image types whose filter reads the mask (pyradiomics 3.0.1: only LBP3D, a kurtosis map
# over the masked voxels): made again for every mask. Every other filter reads the image only.
MASK_DEPENDENT_TYPES = frozenset({"LBP3D"})

Filtered = tuple[sitk.Image, str, dict[str, Any]]


def sharing_blocked(settings: dict[str, Any]) -> str | None:
    """Why the filtered images of these settings depend on the mask (then each mask goes
    through ``execute``), or None when they can be shared between masks."""
    if settings.get("interpolator") is not None and settings.get("resampledPixelSpacing"):
        return "resampling crops the image to each mask's box before filtering"
    if settings.get("preCrop"):
        return "preCrop crops the image to each mask's box before filtering"
    return None


def log_sigmas(params: Mapping[str, Any]) -> list[float]:
    """The LoG sigmas the params enable (the image type's own, else the global setting)."""
    image_types = params.get("imageType") or {}
    if "LoG" not in image_types:
        return []
    log_settings = image_types["LoG"] or {}
    return list(log_settings.get("sigma") or (params.get("setting") or {}).get("sigma") or [])


def log_size_problem(image: sitk.Image, sigmas: list[float]) -> str | None:
    """Why ``image`` is too small for the largest LoG sigma, or None.

    pyradiomics silently skips a LoG sigma when the image is smaller than its kernel
    (size < sigma / spacing + 1), which would give the case fewer columns than the rest.
    """
    if not sigmas:
        return None
    size = np.array(image.GetSize())
    spacing = np.array(image.GetSpacing())
    if np.all(size >= np.ceil(max(sigmas) / spacing) + 1):
        return None
    return (
        f"image size {tuple(size)} too small for LoG sigma {max(sigmas)} at spacing "
        f"{tuple(spacing)}"
    )


class _Memo:
    """A filter's outputs, made on first use and replayed after: one filter run per image."""

    def __init__(self, source: Iterator[Filtered]) -> None:
        self._source: Iterator[Filtered] | None = source
        self._items: list[Filtered] = []
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[Filtered]:
        index = 0
        while True:
            if index < len(self._items):
                yield self._items[index]
                index += 1
                continue
            if self._error is not None:
                # A filter that failed once fails for every mask (a generator that raised is
                # exhausted: replaying it would silently drop its images).
                raise self._error
            if self._source is None:
                return
            try:
                item = next(self._source)
            except StopIteration:
                self._source = None
                return
            except Exception as exc:
                self._error, self._source = exc, None
                raise
            self._items.append(item)


class SharedImage:
    """One image of a case and its filtered images, measured under any number of masks.

    ``measure(mask)`` returns what ``extractor.execute(image, mask)`` returns, less the
    diagnostics the radiomics rows drop (see :data:`VERSION_KEY`, :data:`VOXELS_KEY`). The
    filtered images are made on first use, in ``execute``'s order, and kept until this
    object goes: about nine float images of the frame's size with the project's params.
    """

    def __init__(
        self, extractor: featureextractor.RadiomicsFeatureExtractor, image: sitk.Image
    ) -> None:
        self.extractor = extractor
        self.image = image
        self.settings = extractor.settings.copy()
        self.blocked = sharing_blocked(self.settings)
        self._prepared: sitk.Image | None = None
        self._filters: dict[str, _Memo] = {}

    def _normalised(self) -> sitk.Image:
        # What execute's loadImage does to the image (normalising reads the image only).
        if self._prepared is None:
            image = self.image
            if self.settings.get("normalize", False):
                image = imageoperations.normalizeImage(image, **self.settings)
            self._prepared = image
        return self._prepared

    def _images(self, image: sitk.Image, mask: sitk.Image) -> Iterator[Filtered]:
        for image_type, custom in self.extractor.enabledImagetypes.items():
            args = self.settings.copy()
            args.update(custom)
            make = getattr(imageoperations, f"get{image_type}Image")
            if image_type in MASK_DEPENDENT_TYPES:
                yield from make(image, mask, **args)
                continue
            if image_type not in self._filters:
                self._filters[image_type] = _Memo(make(image, mask, **args))
            yield from self._filters[image_type]

    def measure(self, mask: sitk.Image) -> collections.OrderedDict[str, Any]:
        """Features of ``mask`` on this image, as ``execute`` computes them."""
        if self.blocked:
            result = self.extractor.execute(self.image, mask)
            keep = {VERSION_KEY, VOXELS_KEY}
            return collections.OrderedDict(
                (k, v) for k, v in result.items() if k in keep or not k.startswith("diagnostics_")
            )
        settings = self.settings
        if featureextractor.geometryTolerance != settings.get("geometryTolerance"):
            self.extractor._setTolerance()  # as execute does: a global SimpleITK setting
        label = settings.get("label", 1)
        features: collections.OrderedDict[str, Any] = collections.OrderedDict()
        # Steps 1-2 of execute: the mask as a UInt32 labelmap holding the label, the image
        # normalised, the mask checked against it (geometry, size, dimensions).
        mask = imageoperations.getMask(mask, **settings)
        if settings.get("additionalInfo", False):
            shape_stats = sitk.LabelShapeStatisticsImageFilter()
            shape_stats.Execute(mask)
            features[VERSION_KEY] = radiomics.__version__
            features[VOXELS_KEY] = shape_stats.GetNumberOfPixels(label)
        image = self._normalised()
        box, corrected = imageoperations.checkMask(image, mask, **settings)
        if corrected is not None:
            mask = corrected
        resegmented = None
        if settings.get("resegmentRange", None) is not None:
            resegmented = imageoperations.resegmentMask(image, mask, **settings)
            box, _ = imageoperations.checkMask(image, resegmented, **settings)
        reshape = settings.get("resegmentShape", False)
        if reshape and resegmented is not None:
            mask = resegmented
        features.update(self.extractor.computeShape(image, mask, box, **settings))
        if not reshape and resegmented is not None:
            mask = resegmented
        # Step 6: each filtered image cropped to this mask's box (no padding outside
        # voxel-based extraction), then every enabled feature class.
        for filtered, name, kwargs in self._images(image, mask):
            cropped, cropped_mask = imageoperations.cropToTumorMask(
                filtered, mask, box, padDistance=0
            )
            features.update(compute_features(self.extractor, cropped, cropped_mask, name, **kwargs))
        return features


class SharedBinning:
    """pyradiomics' gray-level discretisation of one cropped image under one mask, made once
    for all feature classes. Each class's ``__init__`` bins the same gray levels under the same
    mask and settings (six times per filtered image with the project's params: first order
    and the five texture classes; the bin edges come from Python's ``min``/``max`` over the
    region's values, a loop). The first class's result is kept; a later call with equal
    inputs gets a copy of it (a class may change its array in place), any other input is
    binned afresh."""

    def __init__(self) -> None:
        # The first binning's inputs (settings, gray levels, mask) and outputs.
        self._inputs: tuple[dict, np.ndarray, np.ndarray] | None = None
        self._binned: np.ndarray | None = None
        self._levels: np.ndarray | None = None

    def _same_inputs(self, feature: Any, matrix: np.ndarray) -> bool:
        if self._inputs is None:
            return False
        settings, gray, mask = self._inputs
        try:
            same_settings = bool(settings == feature.settings)
        except ValueError:  # a setting compared element-wise: do not guess
            return False
        return (
            same_settings
            and np.array_equal(gray, matrix)
            and np.array_equal(mask, feature.maskArray)
        )

    def bind(self, feature: Any) -> None:
        """Shadow ``feature._applyBinning`` (an instance attribute, set before ``__init__``;
        the caller deletes it after: it refers to the feature)."""
        own = type(feature)._applyBinning

        def apply(matrix: np.ndarray) -> np.ndarray:
            if self._same_inputs(feature, matrix):
                # What RadiomicsFeaturesBase._applyBinning sets besides the binned array.
                feature.coefficients["grayLevels"] = self._levels.copy()
                feature.coefficients["Ng"] = int(np.max(self._levels))
                return self._binned.copy()
            inputs = (dict(feature.settings), matrix.copy(), feature.maskArray.copy())
            binned = own(feature, matrix)
            self._inputs, self._binned = inputs, binned.copy()
            self._levels = feature.coefficients["grayLevels"].copy()
            return binned

        feature._applyBinning = apply


@functools.cache
def _feature_names(cls: type) -> dict[str, bool]:
    return cls.getFeatureNames()


def compute_features(
    extractor: featureextractor.RadiomicsFeatureExtractor,
    image: sitk.Image,
    mask: sitk.Image,
    image_type: str,
    **kwargs: Any,
) -> collections.OrderedDict[str, Any]:
    """``extractor.computeFeatures(image, mask, image_type, **kwargs)``: pyradiomics 3.0.1's
    loop (the same feature classes, enabled features, order and names), with the binning
    shared between the classes (:class:`SharedBinning`) and each class's feature list read
    once per process."""
    classes = featureextractor.getFeatureClasses()
    binning = SharedBinning()
    features: collections.OrderedDict[str, Any] = collections.OrderedDict()
    for class_name, names in extractor.enabledFeatures.items():
        if class_name.startswith("shape") or class_name not in classes:
            continue  # shape is measured once per mask (computeShape)
        cls = classes[class_name]
        feature = cls.__new__(cls)
        # Shadowed before __init__, which reads them: the feature list is the class's own
        # (pyradiomics enumerates the class's members with inspect for every instance).
        feature.getFeatureNames = functools.partial(dict, _feature_names(cls))
        binning.bind(feature)
        feature.__init__(image, mask, **kwargs)
        # Binning happens in __init__ only; the bound function refers to the feature, and
        # left in place that cycle would keep every class's matrices until the cyclic GC.
        del feature._applyBinning
        for name in names or ():  # None or empty: every feature (the class's execute)
            feature.enableFeatureByName(name)
        for name, value in feature.execute().items():
            features[f"{image_type}_{class_name}_{name}"] = value
    return features
