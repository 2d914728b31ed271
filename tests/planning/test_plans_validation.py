"""An edited plans file is validated when read: one PlansError naming the file and the field,
instead of a ZeroDivisionError, a RuntimeError, a terabyte allocation or a silent bad run."""

from __future__ import annotations

import json

import pytest

from medseg_auto.errors import PlansError
from medseg_auto.planning.plans import ConfigurationPlan, NetworkPlan, Plans, ResamplingPlan


def _plans_payload() -> dict:
    network = NetworkPlan(3, [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [2] * 3, [2] * 2)
    config = ConfigurationPlan(
        name="3d_fullres", data_identifier="plans_3d_fullres", spacing=[1.0, 1.0, 1.0], patch_size=[16, 16, 16],
        median_image_size_in_voxels=[16.0] * 3, batch_size=2, batch_dice=False,
        normalization_schemes=["ZScoreNormalization"], use_mask_for_norm=[False],
        resampling_data=ResamplingPlan(3, 0), resampling_seg=ResamplingPlan(1, 0),
        resampling_probabilities=ResamplingPlan(1, 0), network=network,
    )
    plans = Plans("DatasetTest", "plans", "default", [0, 1, 2], [0, 1, 2], [1.0] * 3, [16.0] * 3,
                  {"0": {"mean": 0.0, "std": 1.0}}, {"3d_fullres": config}, 1, {"background": 0, "blob": 1})
    return plans.to_json()


def _load_edited(tmp_path, edit) -> Plans:
    payload = _plans_payload()
    edit(payload["configurations"]["3d_fullres"])
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(payload))
    return Plans.load(path)


def test_unedited_plans_load(tmp_path):
    assert _load_edited(tmp_path, lambda c: None).configuration("3d_fullres").batch_size == 2


@pytest.mark.parametrize("edit, field", [
    (lambda c: c.update(patch_size=[0, 16, 16]), r"patch_size\[0\]"),
    (lambda c: c.update(patch_size=[16, 16]), "patch_size: .* 2 axes"),
    (lambda c: c.update(batch_size=-2), "batch_size"),
    (lambda c: c.update(batch_size=0), "batch_size"),
    (lambda c: c["network"].update(features_per_stage=[10**6] * 3), r"network\.features_per_stage"),
    (lambda c: c.update(normalization_schemes=["MadeUpNormalization"]), r"normalization_schemes\[0\]"),
    (lambda c: c.update(spacing=[0.0, 1.0, 1.0]), r"spacing\[0\]"),
    (lambda c: c.update(patch_size=[18, 16, 16]), "patch_size: .* is not divisible by 4"),
    (lambda c: c["network"].update(strides=[[1, 1, 1], [2, 2, 2]]), r"network\.strides: 2 entries for n_stages 3"),
    (lambda c: c.update(batch_size=2000, patch_size=[512, 512, 512]), "patch_size/batch_size/network.features_per_stage: one training step would need"),
])
def test_bad_edit_is_one_error_naming_the_field(tmp_path, edit, field):
    with pytest.raises(PlansError, match=rf"plans\.json: configurations\.3d_fullres\.{field}"):
        _load_edited(tmp_path, edit)


def test_not_json_is_named(tmp_path):
    path = tmp_path / "plans.json"
    path.write_text("{not json")
    with pytest.raises(PlansError, match="plans.json: not valid JSON"):
        Plans.load(path)
