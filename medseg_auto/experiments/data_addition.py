"""The data-addition experiment (feature-discrepancy paper, Sec. 4.1 and Figure 3).

Does adding cases of a new source (novel) help or hurt on the original source (base)? For each
fraction of the novel training pool (nested subsets per repeat), each trainer and each repeat,
one cell trains on base-train plus that fraction, selects its model on base-validation cases
and is scored on the fixed base test cases (and on the novel test cases). Splits are described
in :mod:`.splits`, cells in :mod:`.cells`, outputs in :mod:`.tables`.

Base and novel are two sites of one dataset (``dataset="BreastUS", base="busi", novel="stu"``),
or two datasets (``dataset=None, base="BUSI", novel="STU"``), which are then merged first into
``BUSI_STU`` with one site per source (see :mod:`medseg_auto.dataset.merge`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.errors import DatasetError, MedsegError
from medseg_auto.experiments.cells import (
    Cell, ExperimentData, TrainingOptions, check_experiment_settings, run_cells, settings_hash,
)
from medseg_auto.experiments.executor import ExecutorSettings
from medseg_auto.experiments.splits import (
    data_addition_from_json, data_addition_to_json, load_or_write_splits, make_data_addition_splits,
)
from medseg_auto.experiments.tables import write_data_addition_results
from medseg_auto.paths import DataHome
from medseg_auto.training.registry import get_trainer
from medseg_auto.utils.logging_setup import get_logger

PAPER_FRACTIONS = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0)
log = get_logger("experiments.data_addition")


@dataclass
class DataAdditionRequest:
    """What to run. ``novel_test_fraction=None`` uses ``test_fraction`` (0 keeps all novel
    cases for training and skips the novel test). ``val_fraction`` is of the base cases left
    after the test split (0.125 of 80% = the paper's 10%)."""

    dataset: str
    base_site: str
    novel_site: str
    trainers: list[str]
    options: TrainingOptions
    fractions: list[float] = field(default_factory=lambda: list(PAPER_FRACTIONS))
    repeats: int = 1
    test_fraction: float = 0.2
    val_fraction: float = 0.125
    novel_test_fraction: float | None = None
    seed: int = 0
    output: Path | None = None
    executor: ExecutorSettings | None = None  # where the cells run (default: here, one after another)


@dataclass
class ExperimentOutcome:
    folder: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path]


def resolve_base_and_novel(home: DataHome, dataset: str | None, base: str, novel: str,
                           show_progress: bool = True) -> tuple[str, str, str]:
    """``(dataset, base site, novel site)``: as given with ``dataset``, else merge datasets
    ``base`` and ``novel`` into ``<base>_<novel>`` (once; an existing merge is reused)."""
    if dataset is not None:
        return home.find_dataset(dataset), base, novel
    from medseg_auto.dataset.merge import dataset_short_name, merge_datasets

    base_site = dataset_short_name(home.find_dataset(base))
    novel_site = dataset_short_name(home.find_dataset(novel))
    name = f"{base_site}_{novel_site}"
    try:
        existing = home.find_dataset(name)
    except DatasetError:
        existing = None
    if existing is not None and (home.raw / existing / "dataset.json").is_file():
        sites = set(DatasetSpec.load(home.raw / existing).sites.values())
        if not {base_site, novel_site} <= sites:
            raise MedsegError(f"{home.raw / existing}: exists but has no sites '{base_site}' and '{novel_site}'; "
                              f"merge yourself (medseg-auto merge) and pass --dataset with site names")
        log.info("using the merged dataset %s", existing)
    else:
        log.info("merging %s and %s into %s", base, novel, name)
        merge_datasets(home, [base, novel], name, {base: base_site, novel: novel_site}, show_progress=show_progress)
    return home.find_dataset(name), base_site, novel_site


def default_folder(home: DataHome, request: DataAdditionRequest) -> Path:
    o = request.options
    return (home.results_dataset(request.dataset) / "experiments"
            / f"data_addition__{request.base_site}__{request.novel_site}__{o.configuration}__{o.plans_name}")


def check_request(request: DataAdditionRequest) -> list[float]:
    """Fail fast (before any data is read) on unknown trainers and impossible numbers;
    return the sorted, de-duplicated fractions."""
    for trainer in request.trainers:
        get_trainer(trainer)
    if not request.trainers:
        raise MedsegError("name at least one trainer (--trainers)")
    fractions = sorted(set(float(f) for f in request.fractions))
    if not fractions or any(not 0.0 <= f <= 1.0 for f in fractions):
        raise MedsegError(f"--fractions must lie in [0, 1], got {request.fractions}")
    if request.repeats < 1:
        raise MedsegError(f"--repeats must be at least 1, got {request.repeats}")
    for name, value in (("--test-fraction", request.test_fraction), ("--val-fraction", request.val_fraction)):
        if not 0.0 < value < 1.0:
            raise MedsegError(f"{name} must lie strictly between 0 and 1, got {value}")
    if request.novel_test_fraction is not None and not 0.0 <= request.novel_test_fraction < 1.0:
        raise MedsegError(f"--novel-test-fraction must lie in [0, 1), got {request.novel_test_fraction}")
    if request.options.checkpoint not in ("best", "final"):
        raise MedsegError(f"checkpoint must be 'best' or 'final', got {request.options.checkpoint!r}")
    return fractions


def run_data_addition(home: DataHome, request: DataAdditionRequest, show_progress: bool = True) -> ExperimentOutcome:
    """Run every missing cell and (re)write the results; return the folder, rows and files."""
    fractions = check_request(request)
    o = request.options
    data = ExperimentData.load(home, request.dataset, o.configuration, o.plans_name)
    folder = Path(request.output) if request.output is not None else default_folder(home, request)
    novel_test_fraction = request.test_fraction if request.novel_test_fraction is None else request.novel_test_fraction
    split_settings = {"dataset": data.dataset_name, "base_site": request.base_site, "novel_site": request.novel_site,
                      "test_fraction": request.test_fraction, "val_fraction": request.val_fraction,
                      "novel_test_fraction": novel_test_fraction, "seed": request.seed}
    identity = {**split_settings, **o.identity()}
    check_experiment_settings(folder, identity, {"trainers": request.trainers, "fractions": fractions,
                                                 "repeats": request.repeats})
    splits = data_addition_from_json(load_or_write_splits(
        folder, split_settings,
        lambda: data_addition_to_json(make_data_addition_splits(
            data.sites, request.base_site, request.novel_site, request.test_fraction, request.val_fraction,
            novel_test_fraction, request.seed)),
        list(data.sites),
    ))
    digest = settings_hash(identity)
    cells = []
    for repeat in range(request.repeats):
        for fraction in fractions:
            novel = splits.novel_subset(fraction, repeat)
            for trainer in request.trainers:
                slug = f"f{fraction:g}_r{repeat}"
                cell = Cell(key=f"{trainer}/{slug}", trainer=trainer, tag=f"da-{digest}-{slug}",
                            train_ids=splits.training_cases(fraction, repeat), val_ids=list(splits.base_val),
                            test_sets={"base_test": splits.base_test, "novel_test": splits.novel_test},
                            seed=request.seed + repeat,
                            info={"fraction": fraction, "repeat": repeat, "n_novel": len(novel)})
                cells.append((cell, folder / "cells" / trainer / slug))
    settings = {**identity, "n_base_train": len(splits.base_train), "n_base_val": len(splits.base_val),
                "n_base_test": len(splits.base_test), "n_novel_pool": len(splits.novel_pool),
                "n_novel_test": len(splits.novel_test)}
    log.info("data addition in %s: %d cell(s) (%d trainer(s) x %d fraction(s) x %d repeat(s)); base train %d, "
             "validation %d, test %d; novel pool %d, test %d", folder, len(cells), len(request.trainers),
             len(fractions), request.repeats, len(splits.base_train), len(splits.base_val), len(splits.base_test),
             len(splits.novel_pool), len(splits.novel_test))

    def write(rows: Sequence[dict[str, Any]], plot: bool = False) -> dict[str, Path]:
        return write_data_addition_results(rows, folder, settings, request.trainers, plot=plot)

    rows = run_cells(data, cells, o, on_progress=write, show_progress=show_progress,
                     executor=request.executor, work_folder=folder)
    files = write(rows, plot=True)
    return ExperimentOutcome(folder, rows, files)
