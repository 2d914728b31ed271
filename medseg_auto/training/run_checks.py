"""Checks and housekeeping before a fold trains: refuse numbers that cannot make a run, and set
a whole earlier run aside before a fresh one starts.

Why whole: moving only the checkpoints (as before) left ``validation/``, ``training_log.txt``
and ``split.json`` of the earlier run beside the new checkpoints, so the report mixed two runs
(``train --epochs 0`` on a finished fold even wrote an untrained ``checkpoint_final.pt`` next
to the old validation).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from medseg_auto.errors import MedsegError

PREVIOUS_RUN_FOLDER = "previous_run"
EARLIER_RUN_MARKERS = ("checkpoint_final.pt", "checkpoint_latest.pt", "checkpoint_best.pt", "training_log.txt",
                       "progress.csv", "validation")
# setting -> (command-line name, smallest sensible value)
MINIMUMS = {
    "num_epochs": ("--epochs", 1), "iterations_per_epoch": ("--iters-per-epoch", 1),
    "val_iterations_per_epoch": ("--val-iters-per-epoch", 1), "num_workers": ("--num-workers", 0),
    "batch_size": ("batch_size", 1), "save_every": ("save_every", 1),
}


def check_settings(overrides: Mapping[str, Any], with_pretrained: bool = False) -> None:
    """Raise :class:`MedsegError` for ``--epochs 0``, negative iterations and the like.

    ``--epochs 0`` is allowed only ``with_pretrained``: it then validates the given weights
    as they are (without them it would publish an untrained network as ``checkpoint_final``).
    """
    for key, (name, minimum) in MINIMUMS.items():
        value = overrides.get(key)
        if value is None:
            continue
        if key == "num_epochs" and with_pretrained and value == 0:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise MedsegError(f"{name} {value!r}: must be a whole number of at least {minimum}")
    learning_rate = overrides.get("initial_lr")
    if learning_rate is not None and not learning_rate > 0:
        raise MedsegError(f"initial_lr {learning_rate!r}: must be positive")


def has_earlier_run(fold_folder: Path) -> bool:
    return any((fold_folder / name).exists() for name in EARLIER_RUN_MARKERS)


def set_aside_earlier_run(fold_folder: Path) -> Path:
    """Move everything of the earlier run in ``fold_folder`` (checkpoints, curves, log,
    ``validation/``, split, OOD reference, ...) into ``fold_folder/previous_run/``.

    Left in place, a stale ``checkpoint_final.pt`` would be what a later ``--continue`` of the
    *new* run resumes from, and its validation would be reported as the new run's. Only the
    latest earlier run is kept.
    """
    previous = fold_folder / PREVIOUS_RUN_FOLDER
    if previous.exists():
        shutil.rmtree(previous)
    previous.mkdir()
    for entry in sorted(fold_folder.iterdir()):
        if entry.name != PREVIOUS_RUN_FOLDER:
            entry.replace(previous / entry.name)
    return previous
