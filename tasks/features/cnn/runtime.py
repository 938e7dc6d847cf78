"""Where and how the CNN runs: the device, bf16 autocast on GPUs, and seeding.

Shared by fine-tuning (:mod:`~tasks.features.cnn.train`) and embedding
(:mod:`~tasks.features.cnn.embed`). Reads and writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

# What progress lines go to: a module logger, or Prefect's run logger (an adapter).
Logger = logging.Logger | logging.LoggerAdapter


def resolve_device(spec: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when present, else CPU; ``"cpu"``/``"cuda"`` as asked.

    Raises
    ------
    RuntimeError
        ``"cuda"`` asked for on a machine without a CUDA device.
    """
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("cnn_device asks for CUDA but no CUDA device is available")
    return device


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA, a no-op elsewhere."""
    # bf16 on GPUs: twice the throughput of fp32 with fp32's range, so no loss scaling.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``: channels-last and asynchronous on CUDA, as it is on the CPU."""
    if device.type == "cuda":
        return tensor.to(device, non_blocking=True, memory_format=torch.channels_last)
    return tensor


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` (channels-last on CUDA, the layout its kernels prefer)."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed python, numpy and torch; deterministic kernels on CPU, restored afterwards."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def worker_name() -> str:
    """The Dask worker running this task (recorded for the GPU-routing checks)."""
    from distributed import get_worker

    try:
        return str(get_worker().name)
    except ValueError:  # a plain call, outside Dask
        return "local"
