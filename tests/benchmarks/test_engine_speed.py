"""The prediction benchmark's agreement and work counts (``benchmarks/engine_speed.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_speed.py"
spec = importlib.util.spec_from_file_location("benchmarks_engine_speed", PATH)
engine_speed = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = engine_speed
spec.loader.exec_module(engine_speed)


def _write(folder: Path, name: str, labels: np.ndarray) -> None:
    folder.mkdir(exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(labels.astype(np.uint8)), str(folder / f"{name}.nii.gz"))


def test_dice_agreement_per_case(tmp_path):
    reference = np.zeros((4, 4, 4), np.uint8)
    reference[:2] = 1
    other = reference.copy()
    other[0] = 0  # half of label 1 lost: Dice 2*16/(32+16)
    _write(tmp_path / "a", "same", reference)
    _write(tmp_path / "b", "same", reference)
    _write(tmp_path / "a", "half", reference)
    _write(tmp_path / "b", "half", other)
    _write(tmp_path / "a", "empty", np.zeros((4, 4, 4)))
    _write(tmp_path / "b", "empty", np.zeros((4, 4, 4)))
    result = engine_speed.dice_agreement(tmp_path / "a", tmp_path / "b", ".nii.gz")
    assert result["per_case"] == {"empty": 1.0, "half": 2 * 16 / 48, "same": 1.0}
    assert result["min"] == 2 * 16 / 48 and result["missing"] == 0
