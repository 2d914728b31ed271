"""One cell of an experiment: train on explicit cases, predict the test cases, score, mark done.

A cell is one trainer on one split (one fraction and repeat, or one held-out site). Training
goes through :func:`~medseg_auto.run.train.train_fold` with ``split=(train, val)`` into
``results/DATASET/TRAINER__PLANS__CONFIG/fold_<tag>/`` (so ``medseg-auto predict -f <tag>``
works on it too); the test cases are predicted from the preprocessed cache and scored against
the raw labels by :func:`~medseg_auto.evaluation.validation.validate_cases` (the numbers
``medseg-auto evaluate`` gives on the same files), into ``<cell folder>/test_<name>/``, with
every case's failure signals (``failure_signals.csv``: OOD score, entropy, mirror
disagreement; read from the same forward passes, no second prediction).

Resuming. ``<cell folder>/done.json`` is written atomically after the evaluation and holds the
cell's result row; a cell with it is never run again. A cell without it resumes: training with
``--continue`` when its fold folder holds a checkpoint (a finished training with a final
validation is not repeated), then prediction and scoring again from the start.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.errors import MedsegError
from medseg_auto.paths import DataHome
from medseg_auto.planning.plans import Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.checkpoint import BEST, FINAL, find_resume_checkpoint
from medseg_auto.training.network_registry import DEFAULT_NETWORK
from medseg_auto.utils.atomic import read_json, write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

DONE_MARKER = "done.json"
CELL_FILE = "cell.json"
log = get_logger("experiments.cells")


@dataclass
class TrainingOptions:
    """How every cell of an experiment trains and predicts.

    ``checkpoint``: ``best`` (the validation-selected ``checkpoint_best.pt``, as the paper's
    "best-performing model" callbacks; ``final`` when no best was saved) or ``final``.
    ``device`` and ``num_workers`` do not change results and stay out of :meth:`identity`.
    """

    configuration: str = "2d"
    plans_name: str = "plans"
    epochs: int | None = None
    iters_per_epoch: int | None = None
    val_iters_per_epoch: int | None = None
    trainer_options: dict[str, Any] = field(default_factory=dict)
    network: str = DEFAULT_NETWORK
    checkpoint: str = "best"
    device: str = "auto"
    num_workers: int | None = None

    def identity(self) -> dict[str, Any]:
        """The settings that change what a cell computes (stored and compared on resume)."""
        values = asdict(self)
        values.pop("device")
        values.pop("num_workers")
        return values


@dataclass
class ExperimentData:
    """The dataset an experiment runs on: raw spec, plans, cache and each case's site."""

    home: DataHome
    dataset_name: str
    spec: DatasetSpec
    plans: Plans
    cache: PreprocessedCache
    sites: dict[str, str | None]

    @classmethod
    def load(cls, home: DataHome, dataset: str, configuration: str, plans_name: str) -> "ExperimentData":
        """Sites come from the preprocessed cases (what training sees), ``dataset.json`` otherwise."""
        dataset_name = home.find_dataset(dataset)
        preprocessed = home.preprocessed_dataset(dataset_name)
        plans_file = preprocessed / f"{plans_name}.json"
        if not plans_file.is_file():
            preset = plans_name[len("plans_"):] if plans_name.startswith("plans_") else "default"
            raise MedsegError(f"{plans_file}: no plans; run 'medseg-auto plan_and_preprocess {dataset} "
                              f"--preset {preset}' first (or pass --plans)")
        plans = Plans.load(plans_file)
        config = plans.configuration(configuration)
        cache = PreprocessedCache(preprocessed / config.data_identifier)
        case_ids = cache.case_ids()
        if not case_ids:
            raise MedsegError(f"{cache.folder}: no preprocessed cases; run 'medseg-auto plan_and_preprocess {dataset}'")
        spec = DatasetSpec.load(home.raw_dataset(dataset_name))
        sites = {case: cache.load_properties(case).site or spec.sites.get(case) for case in case_ids}
        return cls(home, dataset_name, spec, plans, cache, sites)


@dataclass
class Cell:
    """One training run of an experiment and the test sets it is scored on.

    ``key`` names the cell folder (``TRAINER/slug``); ``tag`` the training's fold folder
    (``fold_<tag>``); ``info`` the experiment's coordinates of the cell (fraction, repeat,
    held-out site, ...), copied into its result row.
    """

    key: str
    trainer: str
    tag: str
    train_ids: list[str]
    val_ids: list[str]
    test_sets: dict[str, list[str]]
    seed: int
    info: dict[str, Any] = field(default_factory=dict)
    external_sets: dict[str, str] = field(default_factory=dict)


def settings_hash(payload: Mapping[str, Any]) -> str:
    """Eight hex digits identifying an experiment's settings (part of every cell's tag, so two
    experiments with different settings never share a training folder)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def read_done(cell_folder: Path) -> dict[str, Any] | None:
    """The result row of a finished cell, or None."""
    marker = cell_folder / DONE_MARKER
    return read_json(marker)["row"] if marker.is_file() else None


def run_cell(data: ExperimentData, cell: Cell, options: TrainingOptions, cell_folder: Path) -> tuple[dict[str, Any], bool]:
    """Run ``cell`` unless its done marker exists; return ``(result row, ran)``."""
    done = read_done(cell_folder)
    if done is not None:
        return done, False
    started = time.perf_counter()
    cell_folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cell_folder / CELL_FILE, asdict(cell))
    fold_folder = _train(data, cell, options)
    row: dict[str, Any] = {"trainer": cell.trainer, **cell.info, "n_train": len(cell.train_ids),
                           "n_val": len(cell.val_ids), "seed": cell.seed}
    model, checkpoint = _load_model(fold_folder, options.checkpoint)
    ood = ood_scorer(data, model, fold_folder, options.device)
    for name, case_ids in cell.test_sets.items():
        if not case_ids:
            continue
        summary = _score(data, model, case_ids, cell_folder / f"test_{name}", options.device, ood)
        _write_case_feature_discrepancy(data, model, case_ids, cell_folder / f"test_{name}", options.device)
        mean = summary.get("foreground_mean", {})
        row.update({f"dice_{name}": mean.get("dice"), f"iou_{name}": mean.get("iou"), f"n_{name}": len(case_ids)})
    for name, raw_folder in cell.external_sets.items():
        from medseg_auto.experiments.external import score_external

        summary = score_external(model, Path(raw_folder), cell_folder / f"test_{name}", options.device, ood=ood)
        mean = summary.get("foreground_mean", {})
        row.update({f"dice_{name}": mean.get("dice"), f"iou_{name}": mean.get("iou"), f"n_{name}": summary.get("num_cases")})
    row.update(checkpoint=checkpoint, fold_folder=str(fold_folder), seconds=round(time.perf_counter() - started, 1))
    write_json_atomic(cell_folder / DONE_MARKER, {"cell": cell.key, "tag": cell.tag, "row": row})
    return row, True


def _train(data: ExperimentData, cell: Cell, options: TrainingOptions) -> Path:
    from medseg_auto.run.train import (
        TrainRequest, experiment_trainer_name, fold_folder_name, train_fold, trainer_folder_name,
    )

    folder = (data.home.results_dataset(data.dataset_name)
              / trainer_folder_name(experiment_trainer_name(cell.trainer, options.network), options.plans_name,
                                    options.configuration)
              / fold_folder_name(cell.tag))
    if (folder / FINAL).is_file() and (folder / "validation" / "summary.json").is_file():
        log.info("%s: training finished earlier (%s)", cell.key, folder)
        return folder
    resume = find_resume_checkpoint(folder) is not None
    if resume:
        log.info("%s: resuming the interrupted training in %s", cell.key, folder)
    named = {"num_epochs": options.epochs, "iterations_per_epoch": options.iters_per_epoch,
             "val_iterations_per_epoch": options.val_iters_per_epoch, "num_workers": options.num_workers}
    return train_fold(TrainRequest(
        data.home, data.dataset_name, options.configuration, cell.tag, trainer_name=cell.trainer,
        plans_name=options.plans_name, network=options.network, trainer_options=options.trainer_options,
        settings={name: value for name, value in named.items() if value is not None},
        split=(cell.train_ids, cell.val_ids), continue_training=resume, device=options.device, seed=cell.seed,
        val_best=options.checkpoint == "best", show_progress=False,
    ))


def _load_model(fold_folder: Path, checkpoint: str):
    """The trained network of ``fold_folder`` (``best`` falls back to ``final`` when no best exists)."""
    from medseg_auto.inference.model_loading import load_fold

    chosen = checkpoint if checkpoint != "best" or (fold_folder / BEST).is_file() else "final"
    if chosen != checkpoint:
        log.warning("%s: no %s (the validation Dice never improved); testing checkpoint_final", fold_folder, BEST)
    tag = fold_folder.name[len("fold_"):]
    return load_fold(fold_folder.parent, tag, chosen), chosen


def _score(data: ExperimentData, model, case_ids: list[str], output: Path, device: str, ood=None) -> dict[str, Any]:
    """Predict ``case_ids`` from the cache and score them (``output``: predictions, metrics.csv,
    summary.json, and the per-case failure signals ``failure_signals.csv``)."""
    from medseg_auto.inference.predict import resolve_device
    from medseg_auto.evaluation.validation import validate_cases

    torch_device = resolve_device(device)
    return validate_cases(model.network.to(torch_device), model.plans, model.config, data.cache, case_ids,
                          data.spec, output, model.mirror_axes, torch_device, show_progress=False,
                          signals=True, ood=ood)


def ood_scorer(data: ExperimentData, model, fold_folder: Path, device: str):
    """The OOD scorer of the cell's model (its fold's reference, built from the training sites
    by the final validation), so every test case also gets the feature-distance score among its
    failure signals; None (logged) where the fold has no reference (too few validation cases:
    making one here would sample the training cases again, through the trainer's own sampler)
    or the network has no feature taps."""
    from medseg_auto.inference.ood import OOD_REFERENCE_FILE
    from medseg_auto.inference.ood_references import make_scorer
    from medseg_auto.inference.predict import resolve_device

    if not (fold_folder / OOD_REFERENCE_FILE).is_file():
        log.info("%s: no %s, so no OOD score among the failure signals", fold_folder, OOD_REFERENCE_FILE)
        return None
    try:
        return make_scorer([model], fold_folder.parent, data.home.preprocessed_dataset(data.dataset_name),
                           resolve_device(device))
    except MedsegError as error:
        log.warning("%s: no OOD score among the failure signals (%s)", fold_folder, error)
        return None


def _write_case_feature_discrepancy(data: ExperimentData, model, case_ids: list[str], output: Path, device: str) -> None:
    """``per_case_l_fd.csv`` next to the test metrics, for ``compare``'s L_fd-against-Dice plot
    (skipped for networks without DynUNet feature taps)."""
    from medseg_auto.evaluation.case_feature_discrepancy import (
        PER_CASE_LFD_FILE, per_case_feature_discrepancy, write_per_case_feature_discrepancy,
    )
    from medseg_auto.inference.predict import resolve_device
    from medseg_auto.training.network import tap_channels

    if not tap_channels(model.network):
        log.info("%s: no feature taps on %s; per-case L_fd skipped", output, type(model.network).__name__)
        return
    torch_device = resolve_device(device)
    frame = per_case_feature_discrepancy(model.network.to(torch_device), model.config, model.plans.num_classes,
                                         data.cache, case_ids, torch_device)
    write_per_case_feature_discrepancy(frame, output / PER_CASE_LFD_FILE)


EXPERIMENT_FILE = "experiment.json"


def check_experiment_settings(folder: Path, identity: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """Record ``identity`` (what every cell computes with) in ``folder/experiment.json``; refuse
    a folder whose cells were computed with other settings. ``extra`` (the trainers, fractions,
    repeats asked for this time) may change between calls: that only adds or leaves out cells."""
    path = folder / EXPERIMENT_FILE
    identity = json.loads(json.dumps(dict(identity), default=str))  # compare as stored (tuples -> lists)
    if path.is_file():
        stored = read_json(path).get("identity", {})
        differing = sorted(key for key in set(stored) | set(identity) if stored.get(key) != identity.get(key))
        if differing:
            shown = ", ".join(f"{key}: was {stored.get(key)!r}, now {identity.get(key)!r}" for key in differing)
            raise MedsegError(f"{path}: this experiment folder holds cells computed with other settings ({shown}); "
                              "pass another --out, or delete the folder to start over")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"identity": identity, "last_request": dict(extra)})


@dataclass
class CellTask:
    """One cell as a picklable task for :mod:`.executor` (runs in this process, a worker
    process or a SLURM job alike); returns the cell's result row."""

    data: ExperimentData
    cell: Cell
    options: TrainingOptions
    folder: Path

    @property
    def key(self) -> str:
        return self.cell.key

    @property
    def log_file(self) -> Path:
        return self.folder / "logs" / "cell.txt"

    def __call__(self) -> dict[str, Any]:
        return run_cell(self.data, self.cell, self.options, self.folder)[0]


class CellsFailed(MedsegError):
    """Some cells raised; the others finished and keep their markers."""


def run_cells(data: ExperimentData, cells: list[tuple[Cell, Path]], options: TrainingOptions,
              on_progress: Any = None, show_progress: bool = True, executor: Any = None,
              work_folder: Path | None = None) -> list[dict[str, Any]]:
    """Run every cell without a done marker through ``executor`` (an
    :class:`~.executor.ExecutorSettings`; default: here, in order); after each one that ran,
    ``on_progress(rows)`` gets the rows of every finished cell (to rewrite the tables).

    Returns the result rows of all cells, in the order given. A cell that raises is reported and
    the others go on; then :class:`CellsFailed` names the failed cells (rerunning retries them,
    finished cells are skipped). ``work_folder`` holds the executor's files (default: the
    folder above ``cells/``).
    """
    from tqdm import tqdm

    from medseg_auto.experiments.executor import ExecutorSettings, run_tasks

    todo = [CellTask(data, cell, options, folder) for cell, folder in cells if read_done(folder) is None]
    skipped = len(cells) - len(todo)
    if skipped:
        log.info("%d of %d cell(s) were done already (done.json) and are not run again", skipped, len(cells))
    progress = tqdm(total=len(todo), desc="cells", unit="cell", disable=not show_progress)
    finished = 0

    def on_result(key: str, row: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        progress.update()
        scores = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("dice_") and v is not None)
        log.info("cell %d/%d %s: %s (%.0f s)", finished, len(todo), key, scores or "no test cases", row["seconds"])
        if on_progress is not None:
            on_progress([r for r in (read_done(f) for _, f in cells) if r is not None])

    folder = work_folder if work_folder is not None else (cells[0][1].parents[2] if cells else Path("."))
    outcome = run_tasks(todo, executor or ExecutorSettings(), folder, on_result)
    progress.close()
    if outcome.failures:
        raise CellsFailed(f"{len(outcome.failures)} of {len(cells)} cell(s) failed ({', '.join(sorted(outcome.failures))}; "
                          f"errors above and in {folder}); the others are done: rerun the same command to retry")
    return [r for r in (read_done(f) for _, f in cells) if r is not None]
