"""Watching a run: the time left (in the log and on the console every epoch) and, optionally,
TensorBoard curves and overlays (``train --tensorboard``, ``TrainingSettings.tensorboard``).

The estimate is epochs left x the mean of the last :data:`ETA_WINDOW` epoch times: recent
epochs, because the first ones include warm-up (cudnn benchmark, worker start, caches), and a
few of them, because single epochs jitter with validation and checkpoint writes.

TensorBoard (``torch.utils.tensorboard``, which needs the ``tensorboard`` package: the
``tensorboard`` extra) gets every numeric column of ``progress.csv`` as a scalar (losses,
pseudo Dice per class and its EMA, learning rate, epoch time, a method's own losses) and, on
:data:`NUM_OVERLAYS` epochs spread over the run, one picture of a validation patch: image |
reference | prediction, as the middle slice of the first case of the last validation batch.
Files go to ``fold_F/tensorboard/``: ``tensorboard --logdir results/``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from medseg_auto.errors import MedsegError
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training")

ETA_WINDOW = 5
NUM_OVERLAYS = 10
TENSORBOARD_FOLDER = "tensorboard"
# label colours (RGB, 0..1) for overlays; label k uses entry (k - 1) % len
PALETTE = np.array([[1, 0.2, 0.2], [0.2, 1, 0.2], [0.3, 0.5, 1], [1, 1, 0.2], [1, 0.3, 1], [0.2, 1, 1]])


def remaining_seconds(epoch_times: Sequence[float], epochs_left: int, window: int = ETA_WINDOW) -> float:
    """``epochs_left`` x the mean of the last ``window`` finite epoch times (NaN without any)."""
    recent = [t for t in list(epoch_times)[-window:] if math.isfinite(t)]
    if epochs_left <= 0:
        return 0.0
    return float(np.mean(recent)) * epochs_left if recent else math.nan


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1 h 02 min``; ``95`` -> ``1 min 35 s``; ``12.3`` -> ``12 s``."""
    if not math.isfinite(seconds):
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def eta_line(epoch_times: Sequence[float], epochs_left: int, now: float | None = None) -> str:
    """The log line: epochs left, time left and the wall-clock time it should end."""
    seconds = remaining_seconds(epoch_times, epochs_left)
    if epochs_left <= 0:
        return "ETA: last epoch done"
    finish = time.strftime("%H:%M", time.localtime((now or time.time()) + seconds)) if math.isfinite(seconds) else "?"
    return f"ETA: {epochs_left} epoch(s) left, about {format_duration(seconds)} (ends ~{finish})"


def overlay_epochs(num_epochs: int, count: int = NUM_OVERLAYS) -> set[int]:
    """Epochs (0-based) that get an overlay: the first, the last, and ``count`` spread between."""
    if num_epochs <= 0:
        return set()
    return {int(round(i * (num_epochs - 1) / max(1, count - 1))) for i in range(count)}


def overlay_picture(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """``(H, 3W, 3)`` float RGB in 0..1: image | reference | prediction, labels tinted on the image.

    ``image`` ``(H, W)`` any float range (min-max scaled here); ``reference`` and
    ``prediction`` ``(H, W)`` integer labels (negative values, outside the crop, count as 0).
    """
    low, high = float(np.min(image)), float(np.max(image))
    grey = (image - low) / (high - low) if high > low else np.zeros_like(image, dtype=np.float64)
    base = np.repeat(grey[..., None], 3, axis=2)

    def tinted(labels: np.ndarray) -> np.ndarray:
        picture = base.copy()
        for label in np.unique(labels):
            if label <= 0:
                continue
            mask = labels == label
            picture[mask] = 0.5 * picture[mask] + 0.5 * PALETTE[(int(label) - 1) % len(PALETTE)]
        return picture

    return np.concatenate([base, tinted(reference), tinted(prediction)], axis=1).clip(0, 1)


class TensorboardLogger:
    """Scalars per epoch and a few overlays, written with ``torch.utils.tensorboard``."""

    def __init__(self, folder: Path, num_epochs: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch imports tensorboard lazily and needs the package
            raise MedsegError("--tensorboard needs the tensorboard package: pip install 'medseg_auto[tensorboard]' "
                              f"({error})") from error
        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder))
        self.overlay_at = overlay_epochs(num_epochs)

    def log_epoch(self, row: Mapping[str, float]) -> None:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(float(value)):
                self.writer.add_scalar(_tag(key), float(value), epoch)
        self.writer.flush()

    def wants_overlay(self, epoch: int) -> bool:
        return epoch in self.overlay_at

    def log_overlay(self, epoch: int, data: torch.Tensor, target: torch.Tensor, logits: torch.Tensor) -> None:
        """``data`` ``(B, C, *spatial)``, ``target`` ``(B, 1, *spatial)``, ``logits`` ``(B, K, *spatial)``."""
        image = data[0, 0].float().cpu().numpy()
        reference = target[0, 0].cpu().numpy()
        prediction = logits[0].argmax(dim=0).cpu().numpy()
        if image.ndim == 3:  # 3D patch: the middle slice along the first (through-plane) axis
            middle = image.shape[0] // 2
            image, reference, prediction = image[middle], reference[middle], prediction[middle]
        picture = overlay_picture(image, reference, prediction)
        self.writer.add_image("validation/image_reference_prediction", picture, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TrainingMonitor:
    """What the trainer calls once per epoch on rank 0: the ETA line, and TensorBoard if asked."""

    def __init__(self, output_folder: Path, num_epochs: int, tensorboard: bool) -> None:
        self.tensorboard = TensorboardLogger(output_folder / TENSORBOARD_FOLDER, num_epochs) if tensorboard else None

    def epoch_end(self, row: Mapping[str, float], epoch_times: Sequence[float], epochs_left: int,
                  overlay: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]) -> None:
        """``overlay()`` returns ``(data, target, logits)`` of a validation batch; called only
        on overlay epochs, since it costs one forward pass."""
        log.info("%s", eta_line(epoch_times, epochs_left))
        if self.tensorboard is None:
            return
        self.tensorboard.log_epoch(row)
        if self.tensorboard.wants_overlay(int(row["epoch"])):
            tensors = overlay()
            if tensors is not None:
                self.tensorboard.log_overlay(int(row["epoch"]), *tensors)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def _tag(column: str) -> str:
    """Group TensorBoard's scalars: losses, Dice, the rest under ``other/``."""
    if column.endswith("loss"):
        return f"loss/{column}"
    if "dice" in column:
        return f"dice/{column}"
    if column == "lr":
        return "lr"
    return f"other/{column}"


