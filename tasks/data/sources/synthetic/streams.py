"""Random streams of the synthetic cohort: one independent generator per named part.

Every draw comes from ``numpy.random.SeedSequence(seed, spawn_key=key)``: one stream for
the cohort plan, one for the repeat selection, and per case one each for anatomy,
speckle, Doppler and readers, keyed by the case index. Changing one part (say the vessel
model) therefore leaves every other draw as it was. Reads and writes nothing.
"""

from __future__ import annotations

import numpy as np

# Cohort-level streams: (seed, PLAN), (seed, REPEATS), and (seed, CASE, index, <part>).
PLAN, REPEATS, CASE = 0, 1, 2
# Per-case parts, the last key of a case stream.
ANATOMY, SPECKLE, DOPPLER, READERS = 0, 1, 2, 3


def stream(seed: int, *key: int) -> np.random.Generator:
    """Random generator for one named stream of one seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
