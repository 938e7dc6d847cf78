"""Tests for tasks.data.sources.synthetic.streams: one independent stream per part."""

from __future__ import annotations

import numpy as np

from tasks.data.sources.synthetic.streams import (
    ANATOMY,
    CASE,
    DOPPLER,
    PLAN,
    READERS,
    REPEATS,
    SPECKLE,
    stream,
)


def test_a_stream_depends_on_the_seed_and_its_key_only():
    first = stream(3, CASE, 7, ANATOMY).random(4)
    np.testing.assert_array_equal(first, stream(3, CASE, 7, ANATOMY).random(4))
    others = [
        stream(4, CASE, 7, ANATOMY),
        stream(3, CASE, 8, ANATOMY),
        stream(3, CASE, 7, SPECKLE),
        stream(3, PLAN),
    ]
    for other in others:
        assert not np.array_equal(first, other.random(4))


def test_stream_keys_are_distinct_and_stable():
    # The keys are part of the output: renumbering them changes every cohort.
    assert (PLAN, REPEATS, CASE) == (0, 1, 2)
    assert (ANATOMY, SPECKLE, DOPPLER, READERS) == (0, 1, 2, 3)
    expected = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(1,))).random(2)
    np.testing.assert_array_equal(stream(3, REPEATS).random(2), expected)
