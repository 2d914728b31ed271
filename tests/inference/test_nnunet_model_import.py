"""Predicting with an nnU-Net v2 model folder: plans converted, PlainConvUNet weights loaded
(checked against a tiny network built with dynamic_network_architectures itself), checkpoints
read as plain data only, the folder never written to; and export-plans --nnunet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medseg_auto.cli.main import main
from medseg_auto.dataset.image_io import ImageGeometry, read_segmentation, write_image
from medseg_auto.errors import MedsegError
from medseg_auto.planning.nnunet_plans import plans_from_nnunet, plans_to_nnunet, resolved_configuration

pytest.importorskip("dynamic_network_architectures")
from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from medseg_auto.inference.nnunet_model import load_nnunet_checkpoint, load_nnunet_folds  # noqa: E402

ARCHITECTURE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2], "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
RESAMPLING = {f"resampling_fn_{key}": "resample_data_or_seg_to_shape" for key in ("data", "seg", "probabilities")}
RESAMPLING.update({f"resampling_fn_{key}_kwargs": {"is_seg": key == "seg", "order": order, "order_z": 0,
                                                   "force_separate_z": None}
                   for key, order in (("data", 3), ("seg", 1), ("probabilities", 1))})
#: An nnU-Net v2.4+ plans file as nnU-Net writes it (3d_lowres inherits, as in real plans).
NNUNET_PLANS = {
    "dataset_name": "Dataset001_Test", "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [20, 20, 20],
    "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "configurations": {
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                       "batch_size": 2, "patch_size": [16, 16, 16], "median_image_size_in_voxels": [20.0, 20.0, 20.0],
                       "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
                       "use_mask_for_norm": [False], **RESAMPLING, "architecture": ARCHITECTURE, "batch_dice": False},
        "3d_lowres": {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                      "spacing": [2.0, 2.0, 2.0], "next_stage": "3d_cascade_fullres"},
    },
    "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {"0": {"max": 3.0, "mean": 0.0, "median": 0.0, "min": -3.0,
                                                          "percentile_00_5": -2.5, "percentile_99_5": 2.5, "std": 1.0}},
}
DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 1,
                "file_ending": ".nii.gz"}


class NotData:
    """An object a checkpoint must never unpickle."""


def _reference_network() -> nn.Module:
    """The tiny plans' topology, built by dynamic_network_architectures directly."""
    torch.manual_seed(0)
    return PlainConvUNet(
        input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[2, 2, 2], num_classes=2,
        n_conv_per_stage_decoder=[2, 2], conv_bias=True, norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )


@pytest.fixture
def nnunet_model(tmp_path) -> tuple[Path, nn.Module]:
    """``nnUNet_results/Dataset001_Test/nnUNetTrainer__nnUNetPlans__3d_fullres`` with fold 0,
    its checkpoint laid out as nnU-Net saves it (numpy scalars in the curves, a torch.device)."""
    plans = NNUNET_PLANS
    folder = tmp_path / "nnUNet_results" / "Dataset001_Test" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    network = _reference_network()
    wrapped_weights = {f"_orig_mod.{key}": value for key, value in network.state_dict().items()}  # torch.compile'd
    torch.save({
        "network_weights": wrapped_weights, "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01}]},
        "grad_scaler_state": None, "logging": {"train_losses": [np.float64(0.7), np.float64(0.5)],
                                               "ema_fg_dice": [np.float32(0.4)]},
        "_best_ema": np.float64(0.4), "current_epoch": 2,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": DATASET_JSON,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2),
    }, folder / "fold_0" / "checkpoint_final.pth")
    return folder, network.eval()


def test_weights_and_outputs_match_dynamic_network_architectures(nnunet_model) -> None:
    folder, reference = nnunet_model
    [model] = load_nnunet_folds(folder)
    assert model.config.name == "3d_fullres" and model.mirror_axes == [0, 1, 2] and model.name == "fold_0"
    batch = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = reference(batch)[0]  # deep supervision: the full-resolution head first
        torch.testing.assert_close(model.network(batch), expected)


def test_predict_cli_with_an_nnunet_folder_writes_nothing_there(nnunet_model, tmp_path, capsys) -> None:
    folder, _ = nnunet_model
    before = {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = np.random.default_rng(0).normal(size=(18, 20, 22)).astype(np.float32)
    write_image(image, ImageGeometry(spacing=(1.0, 1.0, 1.0), dimension=3), inputs / "case_0000.nii.gz")
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(folder), "-chk",
                 "checkpoint_final.pth", "-device", "cpu", "--disable_tta", "--no-progress"]) == 0
    segmentation, _ = read_segmentation(tmp_path / "out" / "case.nii.gz")
    assert segmentation.shape == (18, 20, 22) and set(np.unique(segmentation)) <= {0, 1}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["predicted"] == ["case"] and "skipped" in summary["ood"]
    assert {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert "nnU-Net v2 model folder" in capsys.readouterr().err


def test_predictor_takes_an_nnunet_folder(nnunet_model) -> None:
    from medseg_auto.api import Predictor

    folder, _ = nnunet_model
    predictor = Predictor(folder, device="cpu", use_mirroring=False)
    labels = predictor.predict(np.random.default_rng(1).normal(size=(17, 19, 21)).astype(np.float32),
                               spacing=(1.0, 1.0, 1.0))
    assert labels.shape == (17, 19, 21) and set(np.unique(labels)) <= {0, 1}


def test_checkpoint_with_an_object_is_refused(nnunet_model) -> None:
    folder, _ = nnunet_model
    path = folder / "fold_0" / "checkpoint_final.pth"
    payload = torch.load(path, weights_only=False)
    payload["logging"]["callback"] = NotData()
    torch.save(payload, path)
    with pytest.raises(MedsegError, match="weights_only=True"):
        load_nnunet_checkpoint(path)


def test_plans_naming_an_arbitrary_class_are_refused(nnunet_model) -> None:
    folder, _ = nnunet_model
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(MedsegError, match="not an allowed class"):
        load_nnunet_folds(folder)


def test_plans_round_trip_and_export_command(tmp_path) -> None:
    ours = plans_from_nnunet(NNUNET_PLANS, DATASET_JSON)
    assert ours.configurations["3d_lowres"].spacing == [2.0, 2.0, 2.0]  # inherited, then overridden
    assert ours.configurations["3d_lowres"].patch_size == [16, 16, 16]
    exported = plans_to_nnunet(ours, "nnUNetPlans")
    for name in ("3d_fullres", "3d_lowres"):
        original, returned = resolved_configuration(NNUNET_PLANS, name), exported["configurations"][name]
        assert {k: v for k, v in original.items() if k != "data_identifier"} == {
            k: v for k, v in returned.items() if k in original and k != "data_identifier"}
    assert {k: v for k, v in NNUNET_PLANS.items() if k not in ("configurations", "experiment_planner_used")} == {
        k: v for k, v in exported.items() if k in NNUNET_PLANS and k not in ("configurations", "experiment_planner_used")}

    home = tmp_path / "home"
    dataset_folder = home / "preprocessed" / "Dataset001_Test"
    dataset_folder.mkdir(parents=True)
    (home / "raw" / "Dataset001_Test").mkdir(parents=True)
    ours.save(dataset_folder / "plans.json")
    assert main(["export-plans", "Test", "--nnunet", "--home", str(home), "-o", str(tmp_path / "x")]) == 0
    written = json.loads((tmp_path / "x" / "nnUNetPlans_medseg.json").read_text())
    assert written["plans_name"] == "nnUNetPlans_medseg"
    assert written["configurations"]["3d_fullres"]["architecture"]["network_class_name"].endswith("PlainConvUNet")
    assert main(["export-plans", "Test", "--home", str(home)]) == 2


def test_plans_before_nnunet_2_4_are_read() -> None:
    config = dict(resolved_configuration(NNUNET_PLANS, "3d_fullres"))
    config.pop("architecture")
    config.update({"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 4, "unet_max_num_features": 8,
                   "conv_kernel_sizes": [[3, 3, 3]] * 3, "pool_op_kernel_sizes": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                   "n_conv_per_stage_encoder": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2]})
    old = {**NNUNET_PLANS, "configurations": {"3d_fullres": config}}
    network = plans_from_nnunet(old, DATASET_JSON).configurations["3d_fullres"].network
    assert network.features_per_stage == [4, 8, 8] and network.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert network.network_class == "PlainConvUNet"
