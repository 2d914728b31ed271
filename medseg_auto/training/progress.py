"""What training records per epoch, and where: the curves, ``progress.csv``, ``progress.png``,
``training_log.txt``, and the pseudo Dice that picks ``checkpoint_best.pt``.

Pseudo Dice (nnU-Net, reference notes 2.5): over all validation patches of an epoch, sum the
true positives, false positives and false negatives of the argmax prediction per foreground
class, then ``Dice = 2TP / (2TP + FP + FN)`` (NaN for a class absent from prediction and
target), and average the classes ignoring NaN. Its exponential moving average
``ema = 0.9 ema + 0.1 new`` (the first epoch starts it) decides the best checkpoint.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from medseg_auto.utils.atomic import atomic_path, write_text_atomic
from medseg_auto.utils.logging_setup import LOGGER_NAME, ensure_console_logging

EMA_MOMENTUM = 0.9
TRAINING_LOG = "training_log.txt"
PROGRESS_CSV = "progress.csv"
PROGRESS_PNG = "progress.png"
FIXED_COLUMNS = ("epoch", "train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time")


def confusion_counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per foreground class ``[TP, FP, FN]`` of the argmax of ``logits``, summed over the batch.

    ``logits`` ``(B, K, *spatial)``, ``target`` ``(B, 1, *spatial)`` int; returns int64
    ``(K - 1, 3)`` on the logits' device.
    """
    num_classes = logits.shape[1]
    prediction = logits.argmax(dim=1)
    reference = target[:, 0].to(prediction.dtype)
    rows = []
    for label in range(1, num_classes):
        predicted, expected = prediction == label, reference == label
        tp = (predicted & expected).sum()
        rows.append(torch.stack([tp, predicted.sum() - tp, expected.sum() - tp]))
    return torch.stack(rows).to(torch.int64) if rows else torch.zeros((0, 3), dtype=torch.int64, device=logits.device)


def dice_from_counts(counts: torch.Tensor | np.ndarray) -> list[float]:
    """Dice per class from ``(K - 1, 3)`` ``[TP, FP, FN]`` counts; NaN where all three are 0."""
    values = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    dice = []
    for tp, fp, fn in values:
        denominator = 2 * tp + fp + fn
        dice.append(float(2 * tp / denominator) if denominator > 0 else math.nan)
    return dice


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


class ProgressLog:
    """The curves: one list per column, one entry per finished epoch.

    Fixed columns are :data:`FIXED_COLUMNS`; per-class pseudo Dice (``pseudo_dice_1`` ...) and
    whatever methods log are added as they appear (earlier epochs get NaN).
    """

    def __init__(self, curves: Mapping[str, list[float]] | None = None) -> None:
        self.curves: dict[str, list[float]] = {name: [] for name in FIXED_COLUMNS}
        for name, values in (curves or {}).items():
            self.curves[name] = [float(v) for v in values]

    @property
    def num_epochs(self) -> int:
        return len(self.curves["epoch"])

    @property
    def ema(self) -> float | None:
        values = self.curves["ema_pseudo_dice"]
        return values[-1] if values else None

    def next_ema(self, pseudo_dice: float) -> float:
        """The EMA after this epoch's pseudo Dice (a NaN epoch leaves the EMA as it was)."""
        previous = self.ema
        if previous is None or math.isnan(previous):
            return pseudo_dice
        if math.isnan(pseudo_dice):
            return previous
        return EMA_MOMENTUM * previous + (1 - EMA_MOMENTUM) * pseudo_dice

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one epoch; ``row`` must contain every fixed column."""
        epochs_before = self.num_epochs
        for name, value in row.items():
            if name not in self.curves:
                self.curves[name] = [math.nan] * epochs_before
            self.curves[name].append(float(value))
        for name, values in self.curves.items():
            if len(values) == epochs_before:
                values.append(math.nan)

    def state(self) -> dict[str, list[float]]:
        """Plain lists, for the checkpoint."""
        return {name: list(values) for name, values in self.curves.items()}

    def write_csv(self, path: Path) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(list(self.curves))
        for index in range(self.num_epochs):
            writer.writerow([_format(values[index]) for values in self.curves.values()])
        write_text_atomic(path, buffer.getvalue())

    def plot(self, path: Path) -> None:
        """Three panels, as nnU-Net's ``progress.png``: losses and pseudo Dice, epoch time, lr."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        epochs = self.curves["epoch"]
        figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(12, 14))
        top.plot(epochs, self.curves["train_loss"], color="b", label="train loss")
        top.plot(epochs, self.curves["val_loss"], color="r", label="val loss")
        top.set_xlabel("epoch")
        top.set_ylabel("loss")
        dice_axis = top.twinx()
        dice_axis.plot(epochs, self.curves["pseudo_dice"], color="g", linestyle="dotted", label="pseudo Dice")
        dice_axis.plot(epochs, self.curves["ema_pseudo_dice"], color="g", label="pseudo Dice (EMA)")
        dice_axis.set_ylabel("pseudo Dice")
        top.legend(loc="upper left")
        dice_axis.legend(loc="upper right")
        middle.plot(epochs, self.curves["epoch_time"], color="b")
        middle.set_xlabel("epoch")
        middle.set_ylabel("epoch time [s]")
        bottom.plot(epochs, self.curves["lr"], color="b")
        bottom.set_xlabel("epoch")
        bottom.set_ylabel("learning rate")
        figure.tight_layout()
        with atomic_path(path, suffix=".png") as temp:
            figure.savefig(temp)
        plt.close(figure)


def _format(value: float) -> str:
    """Full precision (``repr``), integral values without ``.0`` (epochs, counters)."""
    if math.isnan(value):
        return "nan"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


@contextmanager
def training_log_file(path: Path) -> Iterator[Path]:
    """Append the package's log records to ``path`` (``training_log.txt``) while training.

    Adds a handler next to whatever the caller configured (the console) and removes it after;
    the package logger is raised to INFO for the duration if it was quieter.
    """
    logger = logging.getLogger(LOGGER_NAME)
    ensure_console_logging()  # train_fold called from a notebook: show the epochs there too
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s: %(message)s"))
    previous_level = logger.level
    if previous_level == logging.NOTSET or previous_level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(previous_level)
