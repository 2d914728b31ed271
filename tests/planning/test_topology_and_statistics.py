"""Topology rules, the memory proxy and the weighted intensity statistics."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_auto.planning.intensity_statistics import weighted_statistics
from medseg_auto.planning.memory_estimate import conv_feature_map_size
from medseg_auto.planning.topology import pool_and_conv_props


def test_isotropic_patch_pools_all_axes_until_min_size():
    topology = pool_and_conv_props([1.0, 1.0, 1.0], [36, 50, 35])
    assert topology.num_pool_per_axis == [3, 3, 3]
    assert topology.patch_size == [40, 56, 40]
    assert topology.kernel_sizes == [[3, 3, 3]] * 4


def test_anisotropic_axis_is_not_pooled_until_spacing_catches_up():
    topology = pool_and_conv_props([4.0, 1.0, 1.0], [16, 128, 128])
    assert topology.strides[1] == [1, 2, 2]
    assert topology.kernel_sizes[0] == [1, 3, 3]
    assert all(size % div == 0 for size, div in zip(topology.patch_size, topology.divisible_by))


def test_memory_proxy_counts_every_conv_output():
    # One stage pair, 2D 8x8, features [2, 4], 1 class: encoder 2*2*64 + 2*4*16,
    # decoder level: 2 convs * 2 ch * 64 + transposed conv 2*64 + head 1*64.
    value = conv_feature_map_size([8, 8], [[1, 1], [2, 2]], [2, 4], [2, 2], [2], 1)
    assert value == 2 * 2 * 64 + 2 * 4 * 16 + 2 * 2 * 64 + 2 * 64 + 64


def test_weighted_statistics_give_each_case_equal_weight():
    small = np.array([0.0, 0.0], dtype=np.float32)
    large = np.full(1000, 10.0, dtype=np.float32)
    stats = weighted_statistics([small, large])
    assert stats["mean"] == pytest.approx(5.0)
    assert stats["std"] == pytest.approx(5.0)
    assert stats["min"] == 0.0 and stats["max"] == 10.0


def test_weighted_statistics_match_nnunet_style_resampling_estimate():
    rng = np.random.default_rng(0)
    cases = [rng.normal(loc, 1.0, size=size).astype(np.float32) for loc, size in [(0, 50), (5, 500), (10, 5000)]]
    stats = weighted_statistics(cases)
    draws = np.concatenate([rng.choice(c, 200_000, replace=True) for c in cases])
    assert stats["mean"] == pytest.approx(draws.mean(), abs=0.05)
    assert stats["std"] == pytest.approx(draws.std(), abs=0.05)
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(draws, 99.5), abs=0.15)
    assert stats["percentile_00_5"] == pytest.approx(np.percentile(draws, 0.5), abs=0.15)


def test_no_foreground_anywhere_gives_nan_statistics():
    stats = weighted_statistics([np.array([], dtype=np.float32)])
    assert np.isnan(stats["mean"])
