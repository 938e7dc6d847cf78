"""Augmentation step of the CNN: one random transform of a training crop, both streams alike.

Reads and writes nothing: takes the crops of :mod:`~tasks.features.cnn.crops` (tensors in
[0, 1]) and returns transformed ones. :data:`AUGMENTATION` is recorded in every fine-tuned
model's hyperparameters.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from tasks.features.cnn.crops import Crop

# Training augmentation. Yang et al. do not list theirs; these ranges are mild enough that
# a lesion keeps its shape and echo texture: degrees, scale, translate (share of the crop
# side), brightness and contrast factor 1 +- INTENSITY.
ROTATION = 10.0
SCALE = (0.9, 1.1)
TRANSLATE = 0.05
INTENSITY = 0.15
AUGMENTATION = {
    "hflip": 0.5,
    "rotation_deg": ROTATION,
    "scale": list(SCALE),
    "translate": TRANSLATE,
    "brightness": INTENSITY,
    "contrast": INTENSITY,
}


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def augment(
    bmus: torch.Tensor, cdus: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> Crop:
    """One random training transform, drawn once and applied to both streams.

    Horizontal flip, small affine (rotation, scale, translation) and brightness/contrast:
    the CDUS crop moves with the B-mode one because they show the same anatomy, and only
    intensity jitters, never hue, since Doppler colour encodes flow direction.
    """
    flip = float(torch.rand((), generator=generator)) < AUGMENTATION["hflip"]
    angle = _uniform(generator, -ROTATION, ROTATION)
    scale = _uniform(generator, *SCALE)
    translate = [_uniform(generator, -TRANSLATE, TRANSLATE) * bmus.shape[-1] for _ in range(2)]
    brightness = _uniform(generator, 1.0 - INTENSITY, 1.0 + INTENSITY)
    contrast = _uniform(generator, 1.0 - INTENSITY, 1.0 + INTENSITY)

    def apply(image: torch.Tensor) -> torch.Tensor:
        if flip:
            image = TF.horizontal_flip(image)
        image = TF.affine(
            image,
            angle=angle,
            translate=translate,
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=TF.InterpolationMode.BILINEAR,
        )
        return TF.adjust_contrast(TF.adjust_brightness(image, brightness), contrast)

    return apply(bmus), None if cdus is None else apply(cdus)
