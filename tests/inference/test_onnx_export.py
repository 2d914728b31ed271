"""ONNX export and the ONNX Runtime / OpenVINO engines give torch's output.

Tolerance: ONNX Runtime and OpenVINO in float32 against torch float32 logits,
``|difference| <= 1e-4 + 1e-4 x |logit|``; the differences seen are about 1e-5 (summation order).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg_auto.cli.main import main
from medseg_auto.dataset.image_io import read_segmentation
from medseg_auto.errors import MedsegError
from medseg_auto.planning.plans import ConfigurationPlan, NetworkPlan, ResamplingPlan
from medseg_auto.training.network import build_dynunet

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from medseg_auto.inference.engines import (  # noqa: E402  (after the skips: the engines need the packages)
    OnnxRuntimeNetwork, OpenVinoNetwork, engine_installed, resolve_engine,
)
from medseg_auto.inference.onnx_export import DEFAULT_OPSET, export_onnx_bytes  # noqa: E402

ATOL = RTOL = 1e-4


def tiny_network(dims: int) -> tuple[torch.nn.Module, list[int]]:
    """A 4-stage DynUNet (features 4..32) with one deep-supervision head, random weights, eval mode."""
    torch.manual_seed(0)
    patch = [16, 32, 32] if dims == 3 else [32, 32]
    plan = NetworkPlan(4, [4, 8, 16, 32], [[3] * dims] * 4, [[1] * dims] + [[2] * dims] * 3, [2] * 4, [2] * 3)
    config = ConfigurationPlan(
        name="3d_fullres" if dims == 3 else "2d", data_identifier="tiny", spacing=[1.0] * dims, patch_size=patch,
        median_image_size_in_voxels=[32.0] * dims, batch_size=2, batch_dice=False,
        normalization_schemes=["ZScoreNormalization"], use_mask_for_norm=[False], resampling_data=ResamplingPlan(3),
        resampling_seg=ResamplingPlan(1), resampling_probabilities=ResamplingPlan(1), network=plan, is_2d=dims == 2,
    )
    network = build_dynunet(config, 1, 3, deep_supervision=True)
    assert network.deep_supervision
    return network.eval(), patch


@pytest.mark.parametrize("dims", [2, 3])
def test_onnx_round_trip_equals_torch_with_dynamic_axes_and_no_heads(dims):
    network, patch = tiny_network(dims)
    data = export_onnx_bytes(network, 1, patch)
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert [output.name for output in model.graph.output] == ["logits"]  # deep-supervision heads dropped
    assert model.opset_import[0].version == DEFAULT_OPSET
    engine = OnnxRuntimeNetwork(data, threads=1)
    other = [size * 2 for size in patch]  # the spatial axes are dynamic, so is the batch
    for shape in ((2, 1, *patch), (3, 1, *other)):
        batch = torch.randn(*shape)
        with torch.no_grad():
            expected = network(batch)
        assert torch.allclose(engine(batch), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.skipif(not engine_installed("openvino"), reason="openvino not installed")
def test_openvino_in_float32_equals_torch():
    network, patch = tiny_network(3)
    engine = OpenVinoNetwork(export_onnx_bytes(network, 1, patch), threads=1, fp32=True)
    batch = torch.randn(2, 1, *patch)
    with torch.no_grad():
        expected = network(batch)
    assert torch.allclose(engine(batch), expected, atol=ATOL, rtol=RTOL)
    assert len(engine.compiled) == 1 and torch.allclose(engine(batch), expected, atol=ATOL, rtol=RTOL)


def test_engine_choice():
    cpu = torch.device("cpu")
    assert resolve_engine("torch", cpu) == "torch" and resolve_engine("onnxruntime", cpu) == "onnxruntime"
    assert resolve_engine("auto", torch.device("cuda")) == "torch"
    assert resolve_engine("auto", cpu) == "torch"  # measured: OpenVINO is no faster per case (engines.AUTO_ORDER)
    with pytest.raises(MedsegError, match="--device cpu"):
        resolve_engine("onnxruntime", torch.device("cuda"))


def test_export_command_writes_checked_files(trained_syn2d_home, tmp_path):
    folder = trained_syn2d_home.results_dataset("Syn2d") / "Base__plans__2d"
    output = tmp_path / "onnx"
    assert main(["export", str(folder), "--format", "onnx", "-o", str(output), "--no-progress"]) == 0
    report = json.loads((output / "export.json").read_text())
    assert report["opset"] == DEFAULT_OPSET and report["dynamic_axes"] == ["batch", "y", "x"]
    (fold,) = report["folds"]
    assert fold["max_abs_difference"] < 1e-3 and (output / "fold_all.onnx").is_file() and (output / "plans.json").is_file()
    onnx.checker.check_model(str(output / "fold_all.onnx"))
    assert main(["export", str(tmp_path / "missing"), "--no-progress"]) == 2


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_predict_with_an_engine_gives_torchs_labels(trained_syn2d_home, tmp_path, engine):
    if not engine_installed(engine):
        pytest.skip(f"{engine} not installed")
    images = trained_syn2d_home.raw_dataset("Syn2d") / "imagesTr"
    common = ["-i", str(images), "-d", "Syn2d", "-c", "2d", "--home", str(trained_syn2d_home.root), "--device", "cpu",
              "--fp32", "--no-ood", "--no-progress"]
    assert main(["predict", "-o", str(tmp_path / "torch"), "--engine", "torch", *common]) == 0
    assert main(["predict", "-o", str(tmp_path / engine), "--engine", engine, *common]) == 0
    assert json.loads((tmp_path / engine / "summary.json").read_text())["engine"] == engine
    files = sorted(p.name for p in (tmp_path / "torch").glob("*.png"))
    assert len(files) == 12
    for name in files:
        ours, _ = read_segmentation(tmp_path / "torch" / name)
        theirs, _ = read_segmentation(tmp_path / engine / name)
        assert np.mean(ours == theirs) >= 0.999, name  # float32 both: at most a tie flips
