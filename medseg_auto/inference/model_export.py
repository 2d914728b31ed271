"""Exporting every fold of a trained model folder to ONNX, with a description of the files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from medseg_auto.errors import MedsegError
from medseg_auto.inference.model_loading import load_folds
from medseg_auto.inference.onnx_export import (
    DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, SPATIAL_NAMES, export_onnx_bytes, max_difference_to_torch, write_onnx,
)
from medseg_auto.planning.plans import PLANS_FILE_NAME
from medseg_auto.utils.atomic import write_json_atomic

EXPORT_FILE = "export.json"


def export_model_folder(folder: Path, output: Path, folds: list[str] | None, checkpoint: str = "final",
                        opset: int | None = None, tolerance: float = 1e-3) -> dict[str, Any]:
    """Write ``fold_F.onnx`` per fold, ``plans.json`` and ``export.json`` into ``output``; every
    file is checked (onnx.checker, and ONNX Runtime against torch on a random patch, float32)."""
    opset = opset or DEFAULT_OPSET
    models = load_folds(folder, folds, checkpoint)
    output.mkdir(parents=True, exist_ok=True)
    config = models[0].config
    spatial = list(SPATIAL_NAMES[-len(config.patch_size):])
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(2, models[0].plans.num_input_channels, *config.patch_size, generator=generator)
    entries = []
    for model in models:
        data = export_onnx_bytes(model.network, model.plans.num_input_channels, config.patch_size, opset)
        difference = max_difference_to_torch(model.network, data, probe)
        if not difference <= tolerance:
            raise MedsegError(f"{folder / model.name}: ONNX Runtime differs from torch by {difference:.3g} > "
                              f"--tolerance {tolerance:g}; the network has an operation the exporter maps differently")
        path = output / f"{model.name}.onnx"
        write_onnx(data, path)
        entries.append({"fold": model.name, "file": str(path), "bytes": len(data), "max_abs_difference": difference})
    shutil.copyfile(folder / PLANS_FILE_NAME, output / PLANS_FILE_NAME)
    report = {
        "model_folder": str(folder), "checkpoint": checkpoint, "format": "onnx", "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", "channels", *spatial], "dtype": "float32",
                  "meaning": "preprocessed image windows (medseg_auto's preprocessing of the plans)"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", "classes", *spatial], "dtype": "float32",
                   "meaning": "logits of the full-resolution head (softmax over axis 1)"},
        "dynamic_axes": ["batch", *spatial], "patch_size": list(config.patch_size),
        "configuration": config.name, "mirror_axes": models[0].mirror_axes,
        "check": f"onnx.checker; ONNX Runtime vs torch float32 on a random (2, C, *patch) batch, tolerance {tolerance:g}",
        "folds": entries,
    }
    write_json_atomic(output / EXPORT_FILE, report)
    return report
