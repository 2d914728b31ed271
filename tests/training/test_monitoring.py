"""Training ETA (log and console) and the optional TensorBoard logger (scalars and overlays)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg_auto.training.monitoring import (
    TENSORBOARD_FOLDER, eta_line, format_duration, overlay_epochs, overlay_picture, remaining_seconds,
)
from medseg_auto.run.train import TrainRequest, train_fold


def test_remaining_time_uses_recent_epochs() -> None:
    assert remaining_seconds([100.0, 10.0, 10.0, 10.0, 10.0, 10.0], 3) == pytest.approx(30.0)
    assert remaining_seconds([5.0], 0) == 0.0
    assert math.isnan(remaining_seconds([], 4))
    assert format_duration(3725) == "1 h 02 min" and format_duration(95) == "1 min 35 s"
    assert format_duration(12.3) == "12 s" and format_duration(math.nan) == "unknown"
    assert eta_line([60.0, 60.0], 10).startswith("ETA: 10 epoch(s) left, about 10 min 00 s")


def test_overlays_spread_over_the_run() -> None:
    chosen = overlay_epochs(1000)
    assert 0 in chosen and 999 in chosen and len(chosen) == 10
    assert overlay_epochs(3) == {0, 1, 2}


def test_overlay_picture_tints_labels() -> None:
    image = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    labels = np.zeros((4, 4), dtype=np.int64)
    labels[1:3, 1:3] = 1
    picture = overlay_picture(image, labels, np.zeros_like(labels))
    assert picture.shape == (4, 12, 3) and picture.min() >= 0 and picture.max() <= 1
    assert not np.allclose(picture[1, 4 + 1], picture[1, 1])      # reference tinted
    assert np.allclose(picture[1, 8 + 1], picture[1, 1])          # empty prediction: image only


def test_training_logs_eta_and_writes_tensorboard(toy_home) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0, device="cpu", seed=0, settings={
        "num_epochs": 2, "iterations_per_epoch": 1, "val_iterations_per_epoch": 1, "num_workers": 0, "tensorboard": True}))
    log_text = (folder / "training_log.txt").read_text()
    assert "ETA: 1 epoch(s) left" in log_text and "ETA: last epoch done" in log_text
    events = EventAccumulator(str(folder / TENSORBOARD_FOLDER), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/train_loss", "loss/val_loss", "dice/pseudo_dice", "lr"} <= set(tags["scalars"])
    assert len(events.Scalars("loss/train_loss")) == 2
    assert tags["images"] == ["validation/image_reference_prediction"]
    assert len(events.Images("validation/image_reference_prediction")) == 2


def test_tensorboard_is_off_by_default(toy_home) -> None:
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0, device="cpu", seed=0, settings={
        "num_epochs": 1, "iterations_per_epoch": 1, "val_iterations_per_epoch": 1, "num_workers": 0}))
    assert not (folder / TENSORBOARD_FOLDER).exists()
