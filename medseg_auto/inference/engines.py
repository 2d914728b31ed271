"""Inference engines for the network call of ``predict`` on CPUs: torch, ONNX Runtime, OpenVINO.

Only the forward pass changes: :class:`EngineNetwork` takes the place of the network inside the
sliding window (which keeps its tiling, Gaussian weighting and mirrored views), receives the
``(B, C, *patch)`` float32 windows and returns ``(B, K, *patch)`` float32 logits. The network is
exported to ONNX in memory when prediction starts (:mod:`.onnx_export`, a second or two per fold).

Precision: ONNX Runtime computes in float32. OpenVINO follows ``predict``: bf16 where the CPU
has native bf16 (its own default there), float32 with ``--fp32``. ``auto`` picks the first
installed engine of :data:`AUTO_ORDER` on a CPU (the order measured by
``benchmarks/predict_speed.py``), torch on GPUs or when none is installed. The engines read
hooks-free graphs, so the OOD score (feature hooks) needs ``--engine torch``.
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.inference.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx_bytes
from medseg_auto.inference.model_loading import LoadedModel
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("inference.engines")
ENGINES = ("torch", "onnxruntime", "openvino")
# what ``auto`` runs, by benchmarks/predict_speed.py with no other job running (2026-12-05,
# Hippocampus 3d_fullres, s/case incl. start-up): torch bf16 3.00, OpenVINO 3.08, ONNX Runtime 5.15,
# torch fp32 4.69. OpenVINO's 7% lead after start-up does not pay for its longer start-up, its
# missing OOD score or an extra dependency, so torch stays the default. (A run under load 11-18
# had shown OpenVINO 2x ahead: measure engines on an idle machine.)
AUTO_ORDER = ("torch",)
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def engine_installed(engine: str) -> bool:
    return engine == "torch" or importlib.util.find_spec(_MODULES[engine]) is not None


def resolve_engine(requested: str, device: torch.device) -> str:
    """``auto`` -> the first installed engine of :data:`AUTO_ORDER` (torch on GPUs); a named
    engine must be installed and needs the CPU."""
    if requested == "auto":
        if device.type != "cpu":
            return "torch"
        return next(engine for engine in AUTO_ORDER if engine_installed(engine))
    if requested not in ENGINES:
        raise MedsegError(f"--engine {requested!r}: choose one of auto, {', '.join(ENGINES)}")
    if requested != "torch":
        if device.type != "cpu":
            raise MedsegError(f"--engine {requested} runs on the CPU; pass --device cpu (or --engine torch for GPUs)")
        if not engine_installed(requested):
            raise MedsegError(f"--engine {requested}: the {_MODULES[requested]} package is not installed "
                              f"(pip install {_MODULES[requested]}, or 'medseg_auto[deploy]')")
    return requested


class EngineNetwork(nn.Module):
    """A network run by another engine: ``(B, C, *patch)`` float32 -> ``(B, K, *patch)`` float32."""

    engine = "engine"

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.run(array))

    def run(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntimeNetwork(EngineNetwork):
    engine = "onnxruntime"

    def __init__(self, onnx_model: bytes, threads: int) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])

    def run(self, array: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0]


class OpenVinoNetwork(EngineNetwork):
    """Compiled once per input shape (the sliding window sends one or two shapes), which lets
    OpenVINO plan static memory and pick its kernels for the shape."""

    engine = "openvino"

    def __init__(self, onnx_model: bytes, threads: int, fp32: bool) -> None:
        super().__init__()
        import openvino

        self.core = openvino.Core()
        with tempfile.TemporaryDirectory() as folder:  # OpenVINO reads ONNX from a file
            path = Path(folder) / "model.onnx"
            path.write_bytes(onnx_model)
            self.model = self.core.read_model(str(path))
        self.config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if fp32:
            self.config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled: dict[tuple[int, ...], object] = {}

    def run(self, array: np.ndarray) -> np.ndarray:
        shape = tuple(array.shape)
        if shape not in self.compiled:
            model = self.model.clone()
            model.reshape({INPUT_NAME: list(shape)})
            self.compiled[shape] = self.core.compile_model(model, "CPU", self.config)
        compiled = self.compiled[shape]
        return compiled({INPUT_NAME: array})[compiled.output(0)]  # type: ignore[attr-defined]


def engine_model(model: LoadedModel, engine: str, fp32: bool = False, threads: int | None = None) -> LoadedModel:
    """``model`` with its network replaced by ``engine``'s (``torch``: unchanged)."""
    if engine == "torch":
        return model
    threads = threads or torch.get_num_threads()
    onnx_model = export_onnx_bytes(model.network, model.plans.num_input_channels, model.config.patch_size)
    network = OnnxRuntimeNetwork(onnx_model, threads) if engine == "onnxruntime" else OpenVinoNetwork(onnx_model, threads, fp32)
    log.info("%s: network call through %s (%d thread(s)%s)", model.name, engine, threads,
             ", float32" if engine == "onnxruntime" or fp32 else ", OpenVINO's default precision")
    return replace(model, network=network)
