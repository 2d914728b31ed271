"""A trained network as ONNX: for ONNX Runtime / OpenVINO at prediction time and for deployment.

Only the network is exported; reading, preprocessing, the sliding window with Gaussian
weighting, mirroring and the export of labels stay in medseg_auto (``predict --engine``), so a
deployed model predicts exactly what ``predict`` predicts. The graph maps ``image (B, C,
*spatial)`` float32 to ``logits (B, K, *spatial)`` float32 (the full-resolution output only:
deep-supervision heads exist in training mode only and are not in the graph); the batch axis and
every spatial axis are dynamic (each spatial size must be divisible by the network's total
stride, which the patch size is). Exported with torch's TorchScript-based exporter at
:data:`DEFAULT_OPSET` and checked with ``onnx.checker``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from medseg_auto.errors import MedsegError

DEFAULT_OPSET = 17  # InstanceNormalization, LeakyReLU, ConvTranspose: all in opset 17; ORT and OpenVINO read it
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
SPATIAL_NAMES = ("z", "y", "x")


class MainOutput(nn.Module):
    """The network's full-resolution logits only (a list or tuple of heads -> its first entry)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        output = self.network(image)
        return output[0] if isinstance(output, (list, tuple)) else output


def export_onnx_bytes(network: nn.Module, in_channels: int, patch_size: Sequence[int],
                      opset: int = DEFAULT_OPSET) -> bytes:
    """The ONNX model of ``network`` (put in eval mode, moved to the CPU), checked with onnx.checker."""
    try:
        import onnx
    except ImportError as error:
        raise MedsegError("ONNX export needs the onnx package: pip install onnx (or 'medseg_auto[deploy]')") from error
    wrapper = MainOutput(network).to("cpu").eval()
    example = torch.zeros(1, in_channels, *patch_size)
    spatial = SPATIAL_NAMES[-len(patch_size):]
    axes = {0: "batch", **{2 + index: name for index, name in enumerate(spatial)}}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter warns about its own deprecation, traced Python conditions (constant
        # here: the patch geometry is fixed per network) and instance norm's running-stats flag (unused)
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                          do_constant_folding=True)
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def max_difference_to_torch(network: nn.Module, onnx_model: bytes, batch: torch.Tensor) -> float:
    """Largest absolute logit difference between ``network`` (float32) and ONNX Runtime on ``batch``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        reference = MainOutput(network).to("cpu").eval()(batch).float().numpy()
    output = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
    return float(np.abs(output - reference).max())


def write_onnx(data: bytes, path: Path) -> None:
    from medseg_auto.utils.atomic import atomic_path

    with atomic_path(path, suffix=".onnx") as temporary:
        Path(temporary).write_bytes(data)
