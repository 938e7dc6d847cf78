"""Training data of the CNN: the lesion crops of a list of cases, as a torch ``Dataset``.

Reads each case's images and reader-1 mask once (:func:`~tasks.features.cnn.crops.case_crops`)
and holds the crops in memory; items are augmented (:func:`~tasks.features.cnn.augment.augment`)
when training. Writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.features.cnn.augment import augment
from tasks.features.cnn.crops import case_crops, require_cdus
from tasks.features.imaging import case_value


class CropDataset(Dataset):
    """Lesion crops of a list of cases, preloaded once, augmented when training.

    Reading and cropping every epoch would cost about as much as training at small sizes,
    so it happens once here. Augmentation draws come from one seeded generator, so use it
    with ``num_workers=0`` (the default) for a reproducible run. Items are
    ``(bmus [1,S,S], cdus [3,S,S] or an empty tensor, label float (NaN when unlabelled))``;
    the empty tensor keeps the default collate working for single-stream cohorts.

    Parameters
    ----------
    cases : ``cohort`` rows.
    size, margin : crop size and margin (:func:`~tasks.features.cnn.crops.crop_case`).
    train : apply :func:`~tasks.features.cnn.augment.augment` (a new draw per item).
    dual : also load the CDUS crops; every case must then have a CDUS image.
    mask_variant : the mask the crop follows.
    seed : seed of the augmentation draws.
    """

    def __init__(
        self,
        cases: Sequence[Mapping[str, Any]],
        size: int,
        margin: float,
        train: bool,
        dual: bool,
        mask_variant: str = "reader1",
        seed: int = 0,
    ) -> None:
        if dual:
            require_cdus(cases)
        crops = [case_crops(c, [mask_variant], size, margin, dual)[mask_variant] for c in cases]
        self.case_ids = [str(c["case_id"]) for c in cases]
        self.train = train
        self.dual = dual
        self.bmus = torch.stack([b for b, _ in crops]) if crops else torch.empty(0, 1, size, size)
        self.cdus = torch.stack([c for _, c in crops]) if dual and crops else None
        self.labels = torch.tensor(
            [
                float(case_value(c, "label")) if case_value(c, "label") is not None else np.nan
                for c in cases
            ],
            dtype=torch.float32,
        )
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bmus = self.bmus[index]
        cdus = None if self.cdus is None else self.cdus[index]
        if self.train:
            bmus, cdus = augment(bmus, cdus, self.generator)
        return bmus, torch.empty(0) if cdus is None else cdus, self.labels[index]
