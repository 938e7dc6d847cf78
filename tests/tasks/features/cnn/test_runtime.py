"""Where and how the CNN runs: device choice, autocast, seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tasks.features.cnn.runtime import autocast, prepare_model, resolve_device, seeded, to_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


def test_seeded_is_reproducible_and_restores_determinism():
    cpu = torch.device("cpu")
    before = torch.are_deterministic_algorithms_enabled()
    draws = []
    for _ in range(2):
        with seeded(5, cpu):
            assert torch.are_deterministic_algorithms_enabled()
            draws.append((random.random(), float(np.random.rand()), torch.rand(3)))
    assert draws[0][:2] == draws[1][:2] and torch.equal(draws[0][2], draws[1][2])
    assert torch.are_deterministic_algorithms_enabled() == before


def test_cpu_runs_float32_tensors_as_they_are():
    cpu = torch.device("cpu")
    x = torch.rand(2, 3, 4, 4)
    assert to_device(x, cpu) is x
    model = torch.nn.Conv2d(3, 1, 1)
    assert prepare_model(model, cpu) is model
    with autocast(cpu):
        assert model(x).dtype == torch.float32
