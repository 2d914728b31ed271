"""The planner must reach nnU-Net v2's decisions on the same fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.planning.planner import fullres_target_spacing, plan_experiment, transpose_for
from medseg_auto.planning.presets import load_preset

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"


def _spec(labels=None, channel="MRI") -> DatasetSpec:
    return DatasetSpec(
        folder=Path("/nonexistent/Dataset999_Test"), channel_names={"0": channel},
        labels=labels or {"background": 0, "a": 1, "b": 2}, num_training=0, file_ending=".nii.gz",
    )


def _fingerprint(spacings, shapes, relative_size=1.0) -> dict:
    return {
        "spacings": spacings, "shapes_after_crop": shapes, "num_cases": len(spacings),
        "median_relative_size_after_cropping": relative_size,
        "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0}},
    }


def test_hippocampus_like_fingerprint_gives_nnunet_golden_values():
    """Golden values from nnU-Net's published Hippocampus plans: 3D patch [40,56,40] batch 9,
    2D patch [56,40] batch 366, 4 stages, features 32..256."""
    fingerprint = _fingerprint([[1.0, 1.0, 1.0]] * 260, [[36, 50, 35]] * 260)
    plans = plan_experiment(fingerprint, _spec(), load_preset("default"))
    full = plans.configurations["3d_fullres"]
    assert full.patch_size == [40, 56, 40] and full.batch_size == 9
    assert full.network.strides == [[1, 1, 1]] + [[2, 2, 2]] * 3
    assert full.network.features_per_stage == [32, 64, 128, 256]
    assert full.batch_dice is False
    flat = plans.configurations["2d"]
    assert flat.patch_size == [56, 40] and flat.batch_size == 366 and flat.batch_dice is True
    assert "3d_lowres" not in plans.configurations
    assert plans.transpose_forward == [0, 1, 2]


def test_anisotropic_prostate_like_fingerprint_matches_published_topology():
    """nnU-Net's prostate plan: patch (20, 320, 256), 7 stages, first pools in-plane only."""
    fingerprint = _fingerprint([[3.6, 0.62, 0.62]] * 32, [[20, 320, 320]] * 32)
    plans = plan_experiment(fingerprint, _spec({"background": 0, "PZ": 1, "TZ": 2}, "T2"), load_preset("default"))
    full = plans.configurations["3d_fullres"]
    assert full.patch_size == [20, 320, 256]
    assert full.network.n_stages == 7
    assert full.network.strides[1] == [1, 2, 2] and full.network.strides[2] == [1, 2, 2]
    assert full.network.kernel_sizes[0] == [1, 3, 3]


def test_target_spacing_uses_tenth_percentile_on_anisotropic_axis():
    spacings = np.array([[5.0, 1.0, 1.0]] * 5 + [[2.0, 1.0, 1.0]] * 5 + [[6.0, 1.0, 1.0]] * 10)
    shapes = np.array([[20, 256, 256]] * 20)
    target = fullres_target_spacing(spacings, shapes, 3.0)
    assert target[0] == pytest.approx(np.percentile(spacings[:, 0], 10)) or target[0] > 1.0
    assert target[0] < np.median(spacings[:, 0])


def test_transpose_puts_coarsest_axis_first():
    forward, backward = transpose_for(np.array([1.0, 1.0, 4.0]))
    assert forward == [2, 0, 1]
    assert [forward[b] for b in backward] == [0, 1, 2]


def test_two_dimensional_data_gets_only_a_2d_configuration():
    fingerprint = _fingerprint([[999.0, 1.0, 1.0]] * 30, [[1, 256, 300]] * 30)
    plans = plan_experiment(fingerprint, _spec({"background": 0, "lesion": 1}, "US"), load_preset("default"))
    assert list(plans.configurations) == ["2d"]
    assert plans.configurations["2d"].spacing == [1.0, 1.0]


def test_ct_channel_uses_ct_normalization_and_small_crop_uses_mask():
    fingerprint = _fingerprint([[1.0, 1.0, 1.0]] * 10, [[64, 64, 64]] * 10, relative_size=0.5)
    ct = plan_experiment(fingerprint, _spec(channel="CT"), load_preset("default"))
    assert ct.configurations["3d_fullres"].normalization_schemes == ["CTNormalization"]
    assert ct.configurations["3d_fullres"].use_mask_for_norm == [False]
    mri = plan_experiment(fingerprint, _spec(channel="T1"), load_preset("default"))
    assert mri.configurations["3d_fullres"].use_mask_for_norm == [True]


def test_large_images_get_a_lowres_configuration_and_smaller_presets_shrink_patches():
    fingerprint = _fingerprint([[1.0, 1.0, 1.0]] * 50, [[300, 300, 300]] * 50)
    default = plan_experiment(fingerprint, _spec(), load_preset("default"))
    assert "3d_lowres" in default.configurations
    assert default.configurations["3d_fullres"].batch_dice is True
    small = plan_experiment(fingerprint, _spec(), load_preset("cpu_small"))
    assert np.prod(small.configurations["3d_fullres"].patch_size) < np.prod(default.configurations["3d_fullres"].patch_size)
    assert small.plans_name == "plans_cpu_small"


def test_plans_round_trip_through_json(tmp_path):
    fingerprint = _fingerprint([[1.0, 1.0, 1.0]] * 10, [[36, 50, 35]] * 10)
    plans = plan_experiment(fingerprint, _spec(), load_preset("default"))
    plans.save(tmp_path / "plans.json")
    from medseg_auto.planning.plans import Plans

    loaded = Plans.load(tmp_path / "plans.json")
    assert loaded.to_json() == plans.to_json()


@pytest.mark.skipif(not (REFERENCE / "hippocampus_nnunetv2_fingerprint.json").is_file(),
                    reason="../shared/reference is absent (nnU-Net reference plans not available)")
def test_reference_fingerprint_reproduces_reference_plans():
    """On nnU-Net's own Hippocampus fingerprint, every planned decision equals nnU-Net's plans."""
    fingerprint = json.loads((REFERENCE / "hippocampus_nnunetv2_fingerprint.json").read_text())
    fingerprint["num_cases"] = len(fingerprint["spacings"])
    reference = json.loads((REFERENCE / "hippocampus_nnunetv2_plans.json").read_text())
    plans = plan_experiment(fingerprint, _spec({"background": 0, "Anterior": 1, "Posterior": 2}), load_preset("default"))
    assert plans.transpose_forward == reference["transpose_forward"]
    for name in ("2d", "3d_fullres"):
        ours, theirs = plans.configurations[name], reference["configurations"][name]
        arch = theirs["architecture"]["arch_kwargs"]
        assert ours.spacing == theirs["spacing"]
        assert ours.patch_size == theirs["patch_size"]
        assert ours.batch_size == theirs["batch_size"]
        assert ours.normalization_schemes == theirs["normalization_schemes"]
        assert ours.use_mask_for_norm == theirs["use_mask_for_norm"]
        assert ours.network.n_stages == arch["n_stages"]
        assert ours.network.strides == arch["strides"]
        assert ours.network.kernel_sizes == arch["kernel_sizes"]
        assert ours.network.features_per_stage == arch["features_per_stage"]
        assert ours.batch_dice == theirs["batch_dice"]


def test_plans_schema_lists_every_field_of_the_dataclasses():
    """plans/plans_schema.json documents the file users edit; it must not drift from the code."""
    from dataclasses import fields

    from medseg_auto.planning.plans import ConfigurationPlan, NetworkPlan, Plans

    schema = json.loads((Path(__file__).resolve().parents[2] / "plans" / "plans_schema.json").read_text())
    assert {f.name for f in fields(Plans)} == set(schema["properties"])
    configuration = schema["$defs"]["configuration"]["properties"]
    assert {f.name for f in fields(ConfigurationPlan)} == set(configuration)
    assert {f.name for f in fields(NetworkPlan)} == set(configuration["network"]["properties"])


def test_coarse_preset_doubles_the_spacing_of_real_axes_only():
    fingerprint = _fingerprint([[999.0, 1.0, 1.0]] * 4, [[1, 240, 280]] * 4)
    default = plan_experiment(fingerprint, _spec({"background": 0, "lesion": 1}, "US"), load_preset("default"))
    coarse = plan_experiment(fingerprint, _spec({"background": 0, "lesion": 1}, "US"), load_preset("cpu_coarse"))
    assert default.configuration("2d").spacing == [1.0, 1.0]
    assert coarse.configuration("2d").spacing == [2.0, 2.0]
    assert coarse.configuration("2d").median_image_size_in_voxels == [120.0, 140.0]
    assert coarse.plans_name == "plans_cpu_coarse"
