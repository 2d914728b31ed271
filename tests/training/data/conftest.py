"""Fixtures of the data-pipeline tests: tiny synthetic caches and configuration plans."""

from __future__ import annotations

import pytest

from medseg_auto.planning.plans import ConfigurationPlan, NetworkPlan, ResamplingPlan
from medseg_auto.training.data.synthetic_cache import write_synthetic_cache

SITES_3D = ["siteA", "siteA", "siteA", "siteA", "siteB", "siteB"]


@pytest.fixture
def cache_3d(tmp_path):
    """Six 3D cases (two sites); case_005 has no foreground."""
    shapes = [(18, 22, 20), (20, 24, 18), (16, 20, 22), (22, 18, 20), (18, 20, 20), (20, 20, 16)]
    return write_synthetic_cache(tmp_path / "cache3d", shapes, sites=SITES_3D, empty_cases=[5], seed=1)


@pytest.fixture
def cache_2d_slices(tmp_path):
    """Three 3D volumes to be trained in 2D (one z slice per patch), two channels."""
    shapes = [(5, 30, 26), (6, 28, 30), (4, 26, 28)]
    return write_synthetic_cache(tmp_path / "cache2d", shapes, n_channels=2, seed=2)


@pytest.fixture
def make_configuration():
    """Factory of minimal configuration plans: ``make_configuration(patch_size, batch_size)``."""
    return _configuration


def _configuration(
    patch_size: list[int], batch_size: int, use_mask_for_norm: list[bool] | None = None
) -> ConfigurationPlan:
    """A minimal plan; only the fields the data pipeline reads matter."""
    dims = len(patch_size)
    return ConfigurationPlan(
        name="2d" if dims == 2 else "3d_fullres",
        data_identifier="test",
        spacing=[1.0] * dims,
        patch_size=list(patch_size),
        median_image_size_in_voxels=[20.0] * dims,
        batch_size=batch_size,
        batch_dice=False,
        normalization_schemes=["ZScoreNormalization"],
        use_mask_for_norm=use_mask_for_norm or [False],
        resampling_data=ResamplingPlan(order=3),
        resampling_seg=ResamplingPlan(order=1),
        resampling_probabilities=ResamplingPlan(order=1),
        network=NetworkPlan(
            n_stages=2,
            features_per_stage=[8, 16],
            kernel_sizes=[[3] * dims] * 2,
            strides=[[1] * dims, [2] * dims],
            n_conv_per_stage=[2, 2],
            n_conv_per_stage_decoder=[2],
        ),
        is_2d=dims == 2,
    )
