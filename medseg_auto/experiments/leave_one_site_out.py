"""Leave one site out: for each site, train on the others and test on it (domain generalization).

Per held-out site the splits (:mod:`.splits`) put every case of that site in the test set and
draw the validation cases from the other sites only, so model selection (validation loss,
``checkpoint_best``, final validation) never sees the held-out site. Each trainer and repeat
is one cell (:mod:`.cells`); the table has one row per trainer and one column per held-out
site plus their mean (:mod:`.tables`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medseg_auto.errors import MedsegError
from medseg_auto.experiments.cells import Cell, ExperimentData, TrainingOptions, check_experiment_settings, run_cells, settings_hash
from medseg_auto.experiments.data_addition import ExperimentOutcome
from medseg_auto.experiments.executor import ExecutorSettings
from medseg_auto.experiments.splits import (
    held_out_from_json, held_out_to_json, load_or_write_splits, make_leave_one_site_out_splits,
)
from medseg_auto.experiments.tables import write_held_out_results
from medseg_auto.paths import DataHome
from medseg_auto.training.registry import get_trainer
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("experiments.leave_one_site_out")


@dataclass
class LeaveOneSiteOutRequest:
    """``val_fraction``: share of the training sites' cases used for validation (stratified
    by site). ``sites``: held-out sites to run (None: every site)."""

    dataset: str
    trainers: list[str]
    options: TrainingOptions
    repeats: int = 1
    val_fraction: float = 0.125
    seed: int = 0
    sites: list[str] | None = None
    output: Path | None = None
    executor: ExecutorSettings | None = None  # where the cells run (default: here, one after another)


def default_folder(home: DataHome, request: LeaveOneSiteOutRequest) -> Path:
    o = request.options
    return home.results_dataset(request.dataset) / "experiments" / f"leave_one_site_out__{o.configuration}__{o.plans_name}"


def run_leave_one_site_out(home: DataHome, request: LeaveOneSiteOutRequest,
                           show_progress: bool = True) -> ExperimentOutcome:
    """Run every missing cell and (re)write ``results.csv``, ``table.csv`` and ``table.md``."""
    if not request.trainers:
        raise MedsegError("name at least one trainer (--trainers)")
    for trainer in request.trainers:
        get_trainer(trainer)
    if request.repeats < 1 or not 0.0 < request.val_fraction < 1.0:
        raise MedsegError(f"need --repeats >= 1 and 0 < --val-fraction < 1, got {request.repeats}, {request.val_fraction}")
    o = request.options
    data = ExperimentData.load(home, request.dataset, o.configuration, o.plans_name)
    folder = Path(request.output) if request.output is not None else default_folder(home, request)
    split_settings = {"dataset": data.dataset_name, "val_fraction": request.val_fraction, "seed": request.seed}
    identity = {**split_settings, **o.identity()}
    check_experiment_settings(folder, identity, {"trainers": request.trainers, "repeats": request.repeats,
                                                 "sites": request.sites})
    splits = held_out_from_json(load_or_write_splits(
        folder, split_settings,
        lambda: held_out_to_json(make_leave_one_site_out_splits(data.sites, request.val_fraction, request.seed)),
        list(data.sites),
    ))
    known = [split.site for split in splits]
    unknown = sorted(set(request.sites or []) - set(known))
    if unknown:
        raise MedsegError(f"--sites {', '.join(unknown)}: not a site of {data.dataset_name} (sites: {', '.join(known)})")
    chosen = [split for split in splits if request.sites is None or split.site in request.sites]
    digest = settings_hash(identity)
    cells = []
    for repeat in range(request.repeats):
        for split in chosen:
            for trainer in request.trainers:
                slug = f"out-{split.site}_r{repeat}"
                cell = Cell(key=f"{trainer}/{slug}", trainer=trainer, tag=f"loso-{digest}-{slug}",
                            train_ids=split.train, val_ids=split.val, test_sets={"test": split.test},
                            seed=request.seed + repeat, info={"held_out": split.site, "repeat": repeat})
                cells.append((cell, folder / "cells" / trainer / slug))
    for split in chosen:
        log.info("held out %s: %d training, %d validation (other sites), %d test case(s)",
                 split.site, len(split.train), len(split.val), len(split.test))
    sites = [split.site for split in chosen]
    settings = {**identity, "repeats": request.repeats}

    def write(rows: Sequence[dict[str, Any]]) -> dict[str, Path]:
        return write_held_out_results(rows, folder, settings, sites, request.trainers)

    rows = run_cells(data, cells, o, on_progress=write, show_progress=show_progress,
                     executor=request.executor, work_folder=folder)
    return ExperimentOutcome(folder, rows, write(rows))
