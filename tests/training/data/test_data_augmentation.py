"""Augmentation: nnU-Net's geometry decisions, shapes and dtypes, label values, mirroring switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from medseg_auto.training.data.augmentation import (
    build_training_transforms,
    build_validation_transforms,
    configure_spatial_augmentation,
)
from medseg_auto.training.data.custom_transforms import (
    Convert2DTo3DTransform,
    Convert3DTo2DTransform,
    MaskOutsideTransform,
)
from medseg_auto.training.data.patch_sampler import PatchSampler


def test_geometry_matches_nnunet():
    hippocampus_2d = configure_spatial_augmentation([56, 40])
    assert hippocampus_2d.initial_patch_size == (65, 65)  # nnU-Net's own example in data_loader_2d.py
    assert hippocampus_2d.rotation_x == pytest.approx((-np.pi, np.pi))
    assert hippocampus_2d.mirror_axes == (0, 1)
    elongated_2d = configure_spatial_augmentation([256, 96])
    assert elongated_2d.rotation_x == pytest.approx((-np.pi / 12, np.pi / 12))
    full_3d = configure_spatial_augmentation([128, 128, 128])
    assert not full_3d.do_dummy_2d and full_3d.rotation_y == pytest.approx((-np.pi / 6, np.pi / 6))
    assert full_3d.initial_patch_size == (205, 205, 205)  # 128 (cos 30 + sin 30) / 0.85
    anisotropic = configure_spatial_augmentation([20, 320, 256])
    assert anisotropic.do_dummy_2d and anisotropic.initial_patch_size[0] == 20
    assert anisotropic.rotation_y == anisotropic.rotation_z == (0.0, 0.0)
    assert configure_spatial_augmentation([40, 56, 40], mirror_axes=None).mirror_axes is None
    assert configure_spatial_augmentation([40, 56, 40], mirror_axes=[2]).mirror_axes == (2,)


@pytest.mark.parametrize(
    ("patch", "cache_fixture"),
    [((10, 12, 10), "cache_3d"), ((4, 14, 14), "cache_3d"), ((16, 12), "cache_2d_slices")],
    ids=["3d", "3d-dummy-2d", "2d"],
)
def test_training_transforms_keep_shapes_dtypes_and_labels(patch, cache_fixture, request):
    cache = request.getfixturevalue(cache_fixture)
    params = configure_spatial_augmentation(patch)
    assert params.do_dummy_2d == (patch == (4, 14, 14))
    sampler = PatchSampler(cache, cache.case_ids(), patch, 4, initial_patch_size=params.initial_patch_size)
    transform = build_training_transforms(params, use_mask_for_norm=[True])
    rng = np.random.default_rng(0)
    np.random.seed(0)
    channels = None
    for _ in range(6):
        batch = transform(**sampler.sample_batch(rng))
        channels = channels or batch["data"].shape[1]
        assert batch["data"].shape == (4, channels, *patch) and batch["data"].dtype == torch.float32
        assert batch["target"].shape == (4, 1, *patch) and batch["target"].dtype == torch.int64
        assert set(batch["target"].unique().tolist()) <= {0, 1, 2}
        assert torch.isfinite(batch["data"]).all()
        assert "seg" not in batch and not any(key.startswith("orig_shape") for key in batch)


def test_mirroring_can_be_disabled_or_restricted():
    def mirrors(transform):
        return [t for t in transform.transforms if isinstance(t, MirrorTransform)]

    assert mirrors(build_training_transforms(configure_spatial_augmentation([8, 8, 8], mirror_axes=None))) == []
    (only,) = mirrors(build_training_transforms(configure_spatial_augmentation([8, 8, 8], mirror_axes=(1,))))
    assert tuple(only.axes) == (1,)
    (default,) = mirrors(build_training_transforms(configure_spatial_augmentation([8, 8, 8])))
    assert tuple(default.axes) == (0, 1, 2)


def test_spatial_transform_uses_nnunet_parameters():
    transform = build_training_transforms(configure_spatial_augmentation([8, 8, 8]))
    (spatial,) = [t for t in transform.transforms if isinstance(t, SpatialTransform)]
    assert spatial.p_rot_per_sample == spatial.p_scale_per_sample == 0.2
    assert spatial.scale == (0.7, 1.4) and not spatial.do_elastic_deform and not spatial.random_crop
    assert spatial.border_cval_seg == -1 and spatial.order_data == 3 and spatial.order_seg == 1


def test_validation_transforms_only_convert(cache_3d):
    sampler = PatchSampler(cache_3d, cache_3d.case_ids(), (8, 10, 8), 3)
    raw = sampler.sample_batch(np.random.default_rng(0))
    expected_data, expected_seg = raw["data"].copy(), np.maximum(raw["seg"], 0)
    batch = build_validation_transforms()(**raw)
    assert torch.equal(batch["data"], torch.from_numpy(expected_data))
    assert torch.equal(batch["target"], torch.from_numpy(expected_seg).long())


def test_dummy_2d_round_trip_and_mask():
    data = np.arange(2 * 3 * 4 * 5 * 6, dtype=np.float32).reshape(2, 3, 4, 5, 6)
    seg = np.zeros((2, 1, 4, 5, 6), dtype=np.int16)
    folded = Convert3DTo2DTransform()(data=data.copy(), seg=seg)
    assert folded["data"].shape == (2, 12, 5, 6)
    restored = Convert2DTo3DTransform()(**folded)
    assert np.array_equal(restored["data"], data) and "orig_shape_data" not in restored
    seg[:, :, 0] = -1
    masked = MaskOutsideTransform([1])(data=data.copy(), seg=seg)["data"]
    assert (masked[:, 1, 0] == 0).all() and np.array_equal(masked[:, 1, 1:], data[:, 1, 1:])
    assert np.array_equal(masked[:, 0], data[:, 0])
