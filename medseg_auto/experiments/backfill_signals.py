"""Failure signals for benchmark cells that finished before cells recorded them
(``experiment methods --add-signals``).

Why a second prediction: the signals (:mod:`medseg_auto.inference.uncertainty`) come from the
softmax and the mirrored views' votes, and a finished cell kept only label maps, so nothing
cheaper can give them back. This predicts each test set that lacks ``failure_signals.csv``
again with the cell's own model and checkpoint (the same deterministic prediction), into a
temporary folder inside the cell, and keeps only the signal table: the cell's scored
predictions and metrics stay as they are. The cost is the cell's prediction time again (on a
2-core CPU with the coarse BUSI plans about 3 s per case), so it is opt-in. ``Base+FDA``
cells are left out: their prediction runs once per donor, and the arm only mirrors Base's
model, whose own cell gets the signals.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

from medseg_auto.experiments.cells import Cell, ExperimentData, TrainingOptions, _load_model, ood_scorer, read_done
from medseg_auto.inference.uncertainty import SIGNALS_FILE
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("experiments.backfill_signals")


def missing_signal_sets(cell: Cell, folder: Path) -> list[str]:
    """The scored test sets of a finished cell without a signal table."""
    if read_done(folder) is None or "fda_of" in cell.info:
        return []
    return [name for name in [*cell.test_sets, *cell.external_sets]
            if (folder / f"test_{name}" / "metrics.csv").is_file()
            and not (folder / f"test_{name}" / SIGNALS_FILE).is_file()]


def add_missing_signals(data: ExperimentData, cells: Sequence[tuple[Cell, Path]], options: TrainingOptions) -> int:
    """Write the missing signal tables of every finished cell (see the module docstring);
    return how many test sets got one."""
    from medseg_auto.experiments.cells import _score
    from medseg_auto.experiments.external import score_external

    todo = [(cell, folder, missing_signal_sets(cell, folder)) for cell, folder in cells]
    todo = [(cell, folder, names) for cell, folder, names in todo if names]
    skipped = sum(1 for cell, folder in cells if "fda_of" in cell.info and read_done(folder) is not None)
    log.info("--add-signals: %d finished cell(s) lack failure signals for some test set%s", len(todo),
             f"; {skipped} Base+FDA cell(s) left out (their Base cell carries the model)" if skipped else "")
    written = 0
    for index, (cell, folder, names) in enumerate(todo, start=1):
        started = time.perf_counter()
        row = read_done(folder) or {}
        fold_folder = Path(row["fold_folder"])
        model, _ = _load_model(fold_folder, str(row.get("checkpoint") or options.checkpoint))
        ood = ood_scorer(data, model, fold_folder, options.device)
        for name in names:
            target = folder / f"test_{name}" / SIGNALS_FILE
            with tempfile.TemporaryDirectory(prefix=".signals-", dir=folder) as scratch:
                if name in cell.test_sets:
                    _score(data, model, cell.test_sets[name], Path(scratch), options.device, ood)
                else:
                    score_external(model, Path(cell.external_sets[name]), Path(scratch), options.device, ood=ood)
                os.replace(Path(scratch) / SIGNALS_FILE, target)  # same file system: atomic
            written += 1
        log.info("--add-signals %d/%d: %s: %s (%.0f s)", index, len(todo), cell.key, ", ".join(names),
                 time.perf_counter() - started)
    return written
