"""The run's header limits (``SLN_MAX_IMAGE_*``, ``SLN_MAX_FRAMES``) at extraction and
embedding, not only at ingest: the settings, not the defaults, decide what is decoded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.config import Settings
from tasks.data.headers import HeaderError, Limits
from tasks.features.cnn.embed import embed_chunk
from tasks.features.imaging import current_limits, image_limits, read_image
from tasks.features.radiomics import extract_chunk, load_params
from tests.tasks.features.cnn.common import case_row, cnn_settings, rect
from tests.tasks.features.test_radiomics import disk, speckle, write_case

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def original_only() -> dict:
    params = load_params("infra/radiomics.yaml")
    params["imageType"] = {"Original": {}}
    return params


def test_image_limits_scope_is_the_run_s_and_is_restored(tmp_path):
    path = write_case(tmp_path, "C1", speckle((64, 64)), reader1=disk((64, 64), (32, 32), 9))
    small = Limits(max_pixels=10**6, max_side=40, max_frames=1, spacing_range=(0.005, 5.0))
    assert read_image(path["bmus_image"]).GetSize() == (64, 64)  # the defaults take it
    with image_limits(small):
        assert current_limits() == small
        with pytest.raises(HeaderError, match="max_image_side 40"):
            read_image(path["bmus_image"])
    assert current_limits() == Limits.defaults()
    assert read_image(path["bmus_image"]).GetSize() == (64, 64)


def test_radiomics_chunk_refuses_what_the_run_s_limits_refuse(tmp_path, original_only):
    """128 x 128 passes the default limits; ``max_image_side=100`` (SLN_MAX_IMAGE_SIDE)
    refuses it at extraction too: the case quarantined with the setting's name, no rows."""
    shape = (128, 128)
    case = write_case(tmp_path, "C1", speckle(shape), reader1=disk(shape, (64, 64), 25) * 255)
    accepted = extract_chunk([case], original_only, Settings(store=str(tmp_path / "s")))
    assert len(accepted.rows) == 4 and accepted.failures == []  # reader1, perturbed

    strict = Settings(store=str(tmp_path / "s"), max_image_side=100)
    refused = extract_chunk([case], original_only, strict)
    assert refused.rows == []
    [failure] = refused.failures
    assert failure["case_id"] == "C1" and failure["column"] == "bmus_image"
    assert "max_image_side 100 (SLN_MAX_IMAGE_SIDE)" in failure["reason"]

    few_pixels = Settings(store=str(tmp_path / "s"), max_image_pixels=128 * 127)
    [failure] = extract_chunk([case], original_only, few_pixels).failures
    assert "SLN_MAX_IMAGE_PIXELS" in failure["reason"]


def test_embedding_takes_what_the_run_s_limits_allow_and_refuses_the_rest(tmp_path):
    """A 24 x 8300 frame is over the default side (8192): the defaults refuse it at
    embedding; a run with ``max_image_side=9000`` embeds it. A 64 x 64 frame is refused by
    ``max_image_side=48`` though the defaults take it."""
    tall = np.full((8300, 24), 90, np.uint8)
    mask = rect((8300, 24), (4000, 4020), (6, 18))
    folder = tmp_path / "tall"
    folder.mkdir()
    case = case_row(folder, tall, mask)

    default = embed_chunk([case], "random", False, cnn_settings(tmp_path))
    assert default.rows == []
    [failure] = default.failures
    assert "max_image_side 8192" in failure["reason"] and failure["column"] == "bmus_image"

    wide = embed_chunk([case], "random", False, cnn_settings(tmp_path, max_image_side=9000))
    assert wide.failures == [] and {r["mask_variant"] for r in wide.rows} >= {"reader1"}

    folder = tmp_path / "small"
    folder.mkdir()
    small = case_row(folder, np.full((64, 64), 90, np.uint8), rect((64, 64), (20, 40), (20, 40)))
    assert embed_chunk([small], "random", False, cnn_settings(tmp_path)).failures == []
    strict = embed_chunk([small], "random", False, cnn_settings(tmp_path, max_image_side=48))
    assert strict.rows == []
    assert "max_image_side 48 (SLN_MAX_IMAGE_SIDE)" in strict.failures[0]["reason"]


def test_a_storage_error_at_embedding_propagates_for_the_retry(tmp_path):
    """A vanished file is the storage's fault: it reaches the task's retry, it is not
    quarantined as an unreadable image (the crop path used to turn it into one)."""
    case = case_row(tmp_path, np.full((64, 64), 90, np.uint8), rect((64, 64), (20, 40), (20, 40)))
    (tmp_path / "bmus.png").unlink()
    with pytest.raises(OSError):
        embed_chunk([case], "random", False, cnn_settings(tmp_path))
