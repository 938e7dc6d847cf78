"""Augmentation step of the CNN: one draw, applied alike to both streams."""

from __future__ import annotations

import torch

from tasks.features.cnn.augment import AUGMENTATION, augment

torch.set_num_threads(1)


def test_augment_flips_both_streams_alike():
    bmus = torch.zeros(1, 8, 8)
    bmus[..., :2] = 1.0
    cdus = torch.zeros(3, 8, 8)
    cdus[0, :, :2] = 1.0
    for seed in range(6):  # flip is one of the draws: some seeds flip, others do not
        b, c = augment(bmus, cdus, torch.Generator().manual_seed(seed))
        left_b = b[0, :, :4].sum() > b[0, :, 4:].sum()
        left_c = c[0, :, :4].sum() > c[0, :, 4:].sum()
        assert left_b == left_c


def test_augment_is_seeded_and_keeps_shape_and_range():
    bmus = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0))
    one, none = augment(bmus, None, torch.Generator().manual_seed(4))
    two, _ = augment(bmus, None, torch.Generator().manual_seed(4))
    assert none is None and one.shape == bmus.shape and torch.equal(one, two)
    assert not torch.equal(one, bmus)
    # The recorded hyperparameters are the ranges the draws use.
    assert AUGMENTATION["hflip"] == 0.5 and AUGMENTATION["scale"] == [0.9, 1.1]
