"""The case pipeline and its inverse: geometry must round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_auto.dataset.image_io import ImageGeometry
from medseg_auto.imaging.cropping import crop_to_nonzero
from medseg_auto.imaging.normalization import normalize_channel
from medseg_auto.imaging.resampling import resample
from medseg_auto.planning.plans import ConfigurationPlan, NetworkPlan, Plans, ResamplingPlan
from medseg_auto.preprocessing.case_pipeline import preprocess_case
from medseg_auto.preprocessing.restore import probabilities_to_original_grid, probabilities_to_segmentation


def _plans(spacing, transpose=(0, 1, 2), is_2d=False, num_classes=3) -> Plans:
    dims = 2 if is_2d else 3
    network = NetworkPlan(2, [8, 16], [[3] * dims] * 2, [[1] * dims, [2] * dims], [2, 2], [2])
    config = ConfigurationPlan(
        name="2d" if is_2d else "3d_fullres", data_identifier="x", spacing=list(spacing), patch_size=[16] * dims,
        median_image_size_in_voxels=[16.0] * dims, batch_size=2, batch_dice=False,
        normalization_schemes=["ZScoreNormalization"], use_mask_for_norm=[False],
        resampling_data=ResamplingPlan(3, 0), resampling_seg=ResamplingPlan(1, 0),
        resampling_probabilities=ResamplingPlan(1, 0), network=network, is_2d=is_2d,
    )
    backward = [list(transpose).index(a) for a in range(3)]
    return Plans("D", "plans", "default", list(transpose), backward, [1.0] * 3, [16.0] * 3,
                 {"0": {"mean": 0.0, "std": 1.0}}, {config.name: config}, 1,
                 {f"c{i}": i for i in range(num_classes)})


def _volume(shape, rng):
    data = np.zeros((1, *shape), np.float32)
    data[:, 1:-1, 2:-2, 3:-3] = rng.normal(100, 10, size=(1, shape[0] - 2, shape[1] - 4, shape[2] - 6))
    seg = np.zeros((1, *shape), np.int16)
    z, y, x = shape
    seg[0, z // 4: 3 * z // 4, y // 4: 3 * y // 4, x // 4: 3 * x // 4] = 1
    seg[0, 3 * z // 8: 5 * z // 8, 3 * y // 8: 5 * y // 8, 3 * x // 8: 5 * x // 8] = 2
    return data, seg


def _one_hot(seg, num_classes):
    return np.stack([(seg[0] == k).astype(np.float32) for k in range(num_classes)])


def test_round_trip_without_resampling_is_exact_with_transpose():
    rng = np.random.default_rng(0)
    data, seg = _volume((10, 20, 24), rng)
    geometry = ImageGeometry(spacing=(1.0, 1.0, 1.0), origin=(1.0, 2.0, 3.0),
                             direction=(0, 1, 0, 1, 0, 0, 0, 0, 1), dimension=3)
    plans = _plans([1.0, 1.0, 1.0], transpose=(2, 0, 1))
    config = plans.configurations["3d_fullres"]
    out_data, out_seg, properties = preprocess_case(data, seg, geometry, plans, config, "case")
    assert out_data.shape[1:] == out_seg.shape[1:]
    restored = probabilities_to_segmentation(
        probabilities_to_original_grid(_one_hot(np.maximum(out_seg, 0), 3), properties, plans, config))
    assert restored.shape == seg.shape[1:]
    np.testing.assert_array_equal(restored, seg[0])


def test_round_trip_with_anisotropic_resampling_keeps_shape_and_overlap():
    rng = np.random.default_rng(1)
    data, seg = _volume((10, 40, 48), rng)
    geometry = ImageGeometry(spacing=(4.0, 0.8, 0.8), origin=(0.0, 0.0, 0.0),
                             direction=(1, 0, 0, 0, -1, 0, 0, 0, 1), dimension=3)
    plans = _plans([4.0, 1.2, 1.2])
    config = plans.configurations["3d_fullres"]
    out_data, out_seg, properties = preprocess_case(data, seg, geometry, plans, config, "case")
    assert out_data.shape[1] == 8  # z unchanged: 8 non-zero slices after cropping
    assert out_data.shape[2] == 24  # in-plane 36 voxels downsampled from 0.8 to 1.2 mm
    restored = probabilities_to_segmentation(
        probabilities_to_original_grid(_one_hot(np.maximum(out_seg, 0), 3), properties, plans, config))
    assert restored.shape == seg.shape[1:]
    # Down- and up-sampling loses about one voxel at the border: the small core (label 2, 10x12
    # voxels in-plane) keeps less overlap than the larger blob.
    for label, minimum in ((1, 0.9), (2, 0.85)):
        overlap = np.logical_and(restored == label, seg[0] == label).sum()
        dice = 2 * overlap / ((restored == label).sum() + (seg[0] == label).sum())
        assert dice > minimum, (label, dice)


def test_crop_marks_outside_of_nonzero_region_with_minus_one():
    data = np.zeros((1, 6, 6, 6), np.float32)
    data[0, 1:5, 2:4, 1:6] = 1.0
    seg = np.zeros((1, 6, 6, 6), np.int16)
    cropped, cropped_seg, box = crop_to_nonzero(data, seg)
    assert box == [[1, 5], [2, 4], [1, 6]]
    assert cropped.shape == (1, 4, 2, 5)
    assert (cropped_seg == 0).all()
    block = np.zeros((1, 6, 6, 6), np.float32)
    block[0, 1:5, 1:5, 1:5] = 1.0
    block[0, 2, 2, 2] = 0.0  # an enclosed hole is filled, not marked as outside
    _, seg_with_hole, _ = crop_to_nonzero(block, seg)
    assert (seg_with_hole == 0).all()


def test_resample_labels_keeps_label_values_and_separate_axis_path():
    seg = np.zeros((1, 4, 20, 20), np.int16)
    seg[0, 1:3, 5:15, 5:15] = 2
    out = resample(seg, [8, 10, 10], True, 1, 0, separate_axis=0)
    assert set(np.unique(out)) <= {0, 2}
    assert out.shape == (1, 8, 10, 10)
    assert (out[0, 2:6, 3:7, 3:7] == 2).all()


def test_zscore_with_mask_leaves_outside_zero():
    image = np.array([[[0.0, 10.0, 20.0, 0.0]]], np.float32)
    inside = image > 0
    out = normalize_channel(image, "ZScoreNormalization", True, inside, None)
    assert out[0, 0, 0] == 0 and out[0, 0, 3] == 0
    assert out[inside].mean() == pytest.approx(0.0)


def test_ct_normalization_clips_with_dataset_statistics():
    image = np.array([[[-2000.0, 0.0, 5000.0]]], np.float32)
    stats = {"percentile_00_5": -100.0, "percentile_99_5": 300.0, "mean": 100.0, "std": 50.0}
    out = normalize_channel(image, "CTNormalization", False, None, stats)
    np.testing.assert_allclose(out[0, 0], [-4.0, -2.0, 4.0])


def test_2d_image_round_trip():
    rng = np.random.default_rng(2)
    data = rng.uniform(1, 255, size=(1, 1, 30, 40)).astype(np.float32)
    seg = np.zeros((1, 1, 30, 40), np.int16)
    seg[0, 0, 10:20, 5:25] = 1
    geometry = ImageGeometry(spacing=(999.0, 1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0), dimension=2,
                             file_ending=".png")
    plans = _plans([1.0, 1.0], is_2d=True, num_classes=2)
    config = plans.configurations["2d"]
    _, out_seg, properties = preprocess_case(data, seg, geometry, plans, config, "img")
    restored = probabilities_to_segmentation(
        probabilities_to_original_grid(_one_hot(np.maximum(out_seg, 0), 2), properties, plans, config))
    np.testing.assert_array_equal(restored, seg[0])
