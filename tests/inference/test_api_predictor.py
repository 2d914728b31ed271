"""The Python API: Predictor (built once, predicting arrays and files like the CLI) and log
records visible where nobody configured logging (a notebook)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg_auto.dataset.image_io import read_case_images, read_segmentation
from medseg_auto.errors import MedsegError

ROOT = Path(__file__).resolve().parents[2]


def test_predictor_matches_the_cli(trained_syn2d_home, tmp_path) -> None:
    from medseg_auto.api import Predictor
    from medseg_auto.cli.main import main

    home = trained_syn2d_home
    images = home.raw_dataset("Syn2d") / "imagesTr"
    case_file = sorted(images.iterdir())[0]
    single = tmp_path / "in"
    single.mkdir()
    (single / case_file.name).write_bytes(case_file.read_bytes())
    assert main(["predict", "-i", str(single), "-o", str(tmp_path / "out"), "-d", "Syn2d", "-c", "2d", "-f", "all",
                 "--home", str(home.root), "--no-ood", "--device", "cpu", "--no-progress",
                 "--engine", "torch"]) == 0  # the Predictor runs torch; --no-ood alone may choose OpenVINO
    from_cli, _ = read_segmentation(tmp_path / "out" / case_file.name.replace("_0000", ""))

    predictor = Predictor.from_trained("Syn2d", "2d", home=home, folds=["all"], device="cpu")
    from_file = predictor.predict(case_file)
    data, geometry = read_case_images([case_file])
    from_array, probabilities = predictor.predict(data[0, 0], spacing=geometry.spacing[1:], return_probabilities=True)
    assert from_file.shape == from_cli.shape and np.array_equal(from_file, from_cli)
    assert from_array.shape == data.shape[2:] and np.array_equal(from_array, from_cli[0])
    assert probabilities.shape == (2, *data.shape[2:]) and np.allclose(probabilities.sum(axis=0), 1, atol=1e-3)
    with pytest.raises(MedsegError, match="channel"):
        predictor.predict(np.zeros((3, 8, 8), np.float32), spacing=(1.0, 1.0))


def test_logs_reach_stdout_without_logging_configured(tmp_path) -> None:
    code = ("from pathlib import Path; from medseg_auto.training.progress import training_log_file; "
            "from medseg_auto.utils.logging_setup import get_logger\n"
            f"with training_log_file(Path({str(tmp_path / 'training_log.txt')!r})):\n"
            "    get_logger('training').info('epoch 1 of 2')\n")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    assert "epoch 1 of 2" in result.stdout
    assert "epoch 1 of 2" in (tmp_path / "training_log.txt").read_text()
