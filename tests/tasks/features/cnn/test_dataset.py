"""Training data of the CNN: preloaded crops, augmented only when training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.features.cnn.dataset import CropDataset
from tests.tasks.features.cnn.common import SIZE, case_row, rect

torch.set_num_threads(1)


def test_augmentation_only_in_training_and_the_same_for_both_streams(tmp_path):
    rng = np.random.default_rng(0)
    bmus = rng.integers(0, 255, (48, 48), dtype=np.uint8)
    bmus[:, :20] //= 4  # asymmetric, so a flip on one stream only would show
    mask = rect(bmus.shape, (14, 33), (14, 33))
    cdus = np.repeat(bmus[..., None], 3, axis=2)  # CDUS = B-mode: streams must stay equal
    case = {**case_row(tmp_path, bmus, mask, cdus), "label": 1}
    frozen = CropDataset([case], SIZE, 0.25, train=False, dual=True)
    first, second = frozen[0], frozen[0]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert first[2].item() == 1.0
    training = CropDataset([case], SIZE, 0.25, train=True, dual=True, seed=1)
    draws = [training[0] for _ in range(4)]
    for b, c, _ in draws:
        assert not torch.equal(b, first[0])
        torch.testing.assert_close(c, b.expand(3, -1, -1), atol=1e-5, rtol=0)
    assert not torch.equal(draws[0][0], draws[1][0])


def test_single_stream_items_and_unlabelled_rows(tmp_path):
    bmus = np.full((40, 40), 100, np.uint8)
    case = case_row(tmp_path, bmus, rect((40, 40), (15, 24), (15, 24)))  # no CDUS, no label
    data = CropDataset([case], SIZE, 0.25, train=False, dual=False)
    assert len(data) == 1 and data.case_ids == ["C1"] and data.cdus is None
    b, c, label = data[0]
    assert b.shape == (1, SIZE, SIZE) and c.numel() == 0 and torch.isnan(label)
    with pytest.raises(ValueError, match="needs a CDUS image"):
        CropDataset([case], SIZE, 0.25, train=False, dual=True)
    assert CropDataset([], SIZE, 0.25, train=True, dual=False).bmus.shape == (0, 1, SIZE, SIZE)
