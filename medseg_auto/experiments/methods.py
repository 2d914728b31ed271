"""The method benchmark: every trainer x seed trained on one dataset, tested in domain and on
external datasets it never saw, compared with Base case by case (``experiment methods``).

Splits (drawn once, ``splits.json``): the training dataset's cases (restricted to
``train_sites``) are split into an in-domain test set (``test_fraction``), validation cases
for model selection (``val_fraction`` of the rest) and training cases, stratified by site.
Exact and near-duplicate images (:mod:`medseg_auto.dataset.duplicates`, clusters written to
``duplicates.json``) and the cases of one patient (``groups`` in ``dataset.json``) always land
on one side, so no test image has a copy in training. Every case of every external dataset
(``test_datasets``) is a test case; those datasets are never trained or validated on.

Arms: each trainer (``all``: every registered trainer that trains from scratch without extra
inputs, see :data:`NOT_IN_ALL`, and none whose ``min_training_sites`` exceeds the sites of the
training cases: on one site SiteBalanced is Base, so it would be counted twice; see
:func:`arms_for_sites`) with the default network, plus Base with each network variant
(``networks``, arm name ``Base-NETWORK`` as in the results folder). Base is always an arm: it
is the reference of the paired statistics. ``fda``: one more arm, ``Base+FDA``: each seed's
Base model predicting the external sets with prediction-time FDA (:mod:`.fda_arm`).

Cells (:mod:`.cells`): one per arm and seed, all seeds on the same splits (so per-case
differences pair up), ordered seed by seed (every arm's seed 0 first), so a run stopped early
has complete seeds. Cells are independent and resumable (``done.json``) and run through the
experiments' one executor (:mod:`.executor`: here in order, ``-j N`` local processes with
``cores // N`` threads each, or SLURM / submitit-local jobs), ``Base+FDA`` cells after their Base
cell. A cell that fails is logged with its error in ``failed.json`` and the others go on;
rerunning retries it. Tables (:mod:`.methods_tables`) are rewritten after every finished cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from medseg_auto.dataset.duplicates import DEFAULT_MAX_DISTANCE, case_links, find_duplicates
from medseg_auto.errors import MedsegError
from medseg_auto.experiments.cells import (
    Cell, CellTask, ExperimentData, TrainingOptions, check_experiment_settings, read_done, run_cell, settings_hash,
)
from medseg_auto.experiments.data_addition import ExperimentOutcome
from medseg_auto.experiments.executor import ExecutorSettings, run_tasks
from medseg_auto.experiments.splits import ExperimentSplitError, load_or_write_splits, split_off_linked
from medseg_auto.paths import DataHome
from medseg_auto.training.network_registry import DEFAULT_NETWORK
from medseg_auto.training.site_requirements import count_sites
from medseg_auto.utils.atomic import write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

BASE = "Base"
ALL = "all"
IN_DOMAIN = "in_domain"
FAILED_MARKER = "failed.json"
DUPLICATES_FILE = "duplicates.json"
#: Registered trainers that ``--trainers all`` leaves out, and why (name them to run them anyway).
NOT_IN_ALL = {
    "FewEpochs": "a budget preset of Base (the benchmark sets the budget)",
    "FineTuneOnSites": "fine-tunes a --pretrained model",
    "MixedMinibatchTransfer": "fine-tunes a --pretrained model towards a --target-site",
    "OptimizerCarryOver": "needs a --pretrained source run",
    "IntraSiteVariabilityAlignment": "needs unlabelled --target-images",
    "TrainOnSites": "needs --train-sites (the benchmark's --train-sites restricts every arm)",
}
log = get_logger("experiments.methods")


@dataclass(frozen=True)
class Arm:
    """One compared model recipe: ``trainer`` with ``network``; ``name`` labels tables and folders."""

    name: str
    trainer: str
    network: str = DEFAULT_NETWORK
    from_all: bool = field(default=False, compare=False)  # came from ``--trainers all``, not by name


@dataclass
class MethodsRequest:
    """What to run; see the module docstring. ``trainers`` may hold ``"all"``."""

    dataset: str
    trainers: list[str]
    options: TrainingOptions
    networks: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    test_datasets: list[str] = field(default_factory=list)
    train_sites: list[str] | None = None
    test_fraction: float = 0.2
    val_fraction: float = 0.125
    split_seed: int = 0
    duplicate_distance: int = DEFAULT_MAX_DISTANCE
    executor: ExecutorSettings | None = None  # where the cells run (default: here, one after another)
    output: Path | None = None
    report_only: bool = False
    fda: bool = False
    add_signals: bool = False  # predict again the test sets of finished cells that lack failure signals


def resolve_arms(trainers: Sequence[str], networks: Sequence[str] = (), quiet: bool = False) -> list[Arm]:
    """The arms in order: Base first, then the trainers as asked (``all`` expanded), then
    ``Base-NETWORK`` per network variant. Unknown names fail here, before any work."""
    from medseg_auto.training.network_registry import available_networks
    from medseg_auto.training.registry import available_trainers, get_trainer

    names: list[str] = []
    named = {name for name in trainers if name != ALL}
    for name in trainers:
        if name == ALL:
            skipped = [t for t in available_trainers() if t in NOT_IN_ALL]
            names += [t for t in available_trainers() if t not in NOT_IN_ALL]
            if not quiet:
                log.info("--trainers all leaves out %s", "; ".join(f"{t} ({NOT_IN_ALL[t]})" for t in skipped))
        else:
            get_trainer(name)
            names.append(name)
    ordered = [BASE] + [name for index, name in enumerate(names) if name != BASE and name not in names[:index]]
    arms = [Arm(name, name, from_all=name not in named and name != BASE) for name in ordered]
    known_networks = available_networks()
    for network in networks:
        if network not in known_networks:
            raise MedsegError(f"--networks {network}: unknown network (known: {', '.join(known_networks)})")
        if network != DEFAULT_NETWORK:
            arms.append(Arm(f"{BASE}-{network}", BASE, network))
    return arms


def arms_for_sites(arms: Sequence[Arm], n_sites: int) -> tuple[list[Arm], dict[str, str]]:
    """Leave out the arms from ``--trainers all`` whose trainer needs more training sites than
    ``n_sites`` (it would reduce to another arm, :mod:`medseg_auto.training.site_requirements`);
    return the kept arms and ``{left-out trainer: why}``. Arms named explicitly stay, with a warning."""
    from medseg_auto.training.site_requirements import trainers_needing_more_sites

    needs = trainers_needing_more_sites(sorted({arm.trainer for arm in arms}), n_sites)
    left_out = {arm.name: f"needs >= {needs[arm.trainer]} training sites, the training cases hold {n_sites}"
                for arm in arms if arm.from_all and arm.trainer in needs}
    if left_out:
        log.info("--trainers all leaves out %s: with fewer sites each reduces to another arm",
                 "; ".join(f"{name} ({why})" for name, why in left_out.items()))
    for arm in arms:
        if not arm.from_all and arm.trainer in needs:
            log.warning("%s needs >= %d training sites, the training cases hold %d: it runs as asked, but its "
                        "mechanism has nothing to work across (read its numbers as those of the trainer it reduces "
                        "to)", arm.name, needs[arm.trainer], n_sites)
    return [arm for arm in arms if arm.name not in left_out], left_out


def default_folder(home: DataHome, request: MethodsRequest) -> Path:
    o = request.options
    return home.results_dataset(request.dataset) / "experiments" / f"methods__{o.configuration}__{o.plans_name}"


def check_request(request: MethodsRequest, quiet: bool = False) -> list[Arm]:
    """Fail fast on impossible numbers and unknown names; return the arms."""
    if not request.trainers:
        raise MedsegError("name at least one trainer (--trainers), or 'all'")
    if not request.seeds:
        raise MedsegError("name at least one seed (--seeds)")
    for name, value in (("--test-fraction", request.test_fraction), ("--val-fraction", request.val_fraction)):
        if not 0.0 < value < 1.0:
            raise MedsegError(f"{name} must lie strictly between 0 and 1, got {value}")
    if request.options.checkpoint not in ("best", "final"):
        raise MedsegError(f"checkpoint must be 'best' or 'final', got {request.options.checkpoint!r}")
    return resolve_arms(request.trainers, request.networks, quiet)


def external_folders(home: DataHome, names: Sequence[str], training_dataset: str) -> dict[str, Path]:
    """``{short name: raw folder}`` of the external test datasets (never the training one);
    the short name (``STU`` for ``Dataset502_STU``) labels columns and folders."""
    from medseg_auto.dataset.merge import dataset_short_name

    folders: dict[str, Path] = {}
    for name in names:
        dataset = home.find_dataset(name)
        if dataset == training_dataset:
            raise MedsegError(f"--test-datasets {name}: that is the training dataset; external sets are never trained on")
        short = dataset_short_name(dataset)
        if short in folders or short == IN_DOMAIN:
            raise MedsegError(f"--test-datasets {name}: a second test set named '{short}'")
        folders[short] = home.raw_dataset(dataset)
    return folders


def _check_external_labels(data: ExperimentData, externals: dict[str, Path]) -> None:
    """An external set is scored with its own labels, so they must be the training dataset's."""
    from medseg_auto.dataset.dataset_json import DatasetSpec

    for name, folder in externals.items():
        labels = DatasetSpec.load(folder).labels
        if sorted(labels.values()) != sorted(data.spec.labels.values()):
            raise MedsegError(f"{folder / 'dataset.json'}: labels {labels} differ from the training dataset's "
                              f"{data.spec.labels}; an external test set needs the same label values")


def draw_splits(data: ExperimentData, case_ids: Sequence[str], request: MethodsRequest,
                folder: Path) -> dict[str, list[str]]:
    """Train / validation / in-domain test lists, keeping duplicates and patients together."""
    duplicates = find_duplicates(data.spec, request.duplicate_distance)
    write_json_atomic(folder / DUPLICATES_FILE, duplicates.to_json())
    log.info("%s: %d case(s) with a near duplicate in %d cluster(s) (%s, <= %d bits); %d patient group(s) in "
             "dataset.json; linked cases stay on one side of every split", data.dataset_name,
             duplicates.num_duplicate_cases, len(duplicates.near), duplicates.method, request.duplicate_distance,
             len(set(data.spec.groups.values())))
    links = case_links(case_ids, duplicates.near, data.spec.groups)
    test, rest = split_off_linked(case_ids, request.test_fraction, request.split_seed, data.sites, links)
    val, train = split_off_linked(rest, request.val_fraction, request.split_seed + 1, data.sites, links)
    if not test or not val or not train:
        raise ExperimentSplitError(f"{len(case_ids)} case(s) leave an empty training, validation or test set")
    return {"train": train, "val": val, "test": test}


def build_cells(arms: Sequence[Arm], seeds: Sequence[int], splits: dict[str, list[str]],
                externals: dict[str, Path], digest: str, folder: Path,
                fda: bool = False) -> list[tuple[Cell, Path, Arm]]:
    """Every arm x seed, seed by seed; with ``fda`` the ``Base+FDA`` cell right after Base's."""
    from medseg_auto.experiments.fda_arm import FDA_ARM, fda_cell

    cells = []
    for seed in seeds:
        for arm in arms:
            cell = Cell(key=f"{arm.name}/seed{seed}", trainer=arm.trainer, tag=f"mb-{digest}-s{seed}",
                        train_ids=splits["train"], val_ids=splits["val"], test_sets={IN_DOMAIN: splits["test"]},
                        seed=seed, info={"arm": arm.name, "network": arm.network},
                        external_sets={name: str(path) for name, path in externals.items()})
            path = folder / "cells" / arm.name / f"seed{seed}"
            cells.append((cell, path, arm))
            if fda and arm.name == BASE and externals:
                cells.append((fda_cell(cell, path, folder / "cells" / FDA_ARM / f"seed{seed}"),
                              folder / "cells" / FDA_ARM / f"seed{seed}", Arm(FDA_ARM, BASE)))
    return cells


def run_methods(home: DataHome, request: MethodsRequest, show_progress: bool = True) -> ExperimentOutcome:
    """Run every missing cell and (re)write the leaderboard; return the folder, rows and files."""
    from medseg_auto.experiments.methods_tables import write_methods_results

    arms = check_request(request)
    o = request.options
    data = ExperimentData.load(home, request.dataset, o.configuration, o.plans_name)
    externals = external_folders(home, request.test_datasets, data.dataset_name)
    _check_external_labels(data, externals)
    known_sites = sorted({str(site) for site in data.sites.values()})
    unknown = sorted(set(request.train_sites or []) - set(known_sites))
    if unknown:
        raise MedsegError(f"--train-sites {', '.join(unknown)}: not a site of {data.dataset_name} "
                          f"(sites: {', '.join(known_sites)})")
    case_ids = sorted(c for c, s in data.sites.items() if request.train_sites is None or s in request.train_sites)
    arms, left_out = arms_for_sites(arms, count_sites(case_ids, data.sites))
    folder = Path(request.output) if request.output is not None else default_folder(home, request)
    split_settings = {"dataset": data.dataset_name, "train_sites": request.train_sites,
                      "test_fraction": request.test_fraction, "val_fraction": request.val_fraction,
                      "seed": request.split_seed, "duplicate_distance": request.duplicate_distance}
    identity = {**split_settings, **{k: v for k, v in o.identity().items() if k != "network"},
                "test_datasets": sorted(externals)}
    check_experiment_settings(folder, identity, {"arms": [arm.name for arm in arms], "seeds": request.seeds,
                                                 "left_out_for_sites": left_out})
    splits = load_or_write_splits(folder, split_settings, lambda: draw_splits(data, case_ids, request, folder),
                                  list(data.sites))
    log.info("%s: %d training, %d validation, %d in-domain test case(s); external: %s", data.dataset_name,
             len(splits["train"]), len(splits["val"]), len(splits["test"]),
             ", ".join(f"{name} (all cases)" for name in externals) or "none")
    cells = build_cells(arms, request.seeds, splits, externals, settings_hash(identity), folder, request.fda)
    settings = {**identity, "n_train": len(splits["train"]), "n_val": len(splits["val"]),
                "n_test": len(splits["test"]), "seeds": list(request.seeds)}

    def write() -> dict[str, Path]:
        names = list(dict.fromkeys(arm.name for _, _, arm in cells)) or [a.name for a in arms]
        return write_methods_results(folder, [(cell, path) for cell, path, _ in cells], names, settings)

    todo = [(cell, path, arm) for cell, path, arm in cells if read_done(path) is None]
    executor = request.executor or ExecutorSettings()
    log.info("methods benchmark in %s: %d arm(s) x %d seed(s) = %d cell(s), %d to run (%s)", folder, len(arms),
             len(request.seeds), len(cells), len(todo), _describe(executor))
    if request.report_only:
        log.info("--report-only: no cell is run; tables from the %d finished cell(s)", len(cells) - len(todo))
        todo = []
    tasks = [MethodsCellTask(data, cell, replace(o, network=arm.network), path, f"{index}/{len(todo)}")
             for index, (cell, path, arm) in enumerate(todo, start=1)]
    failures = run_method_tasks(tasks, executor, folder, write, show_progress)
    if request.add_signals:
        from medseg_auto.experiments.backfill_signals import add_missing_signals

        add_missing_signals(data, [(cell, path) for cell, path, _ in cells], o)
    files = write()
    rows = [row for row in (read_done(path) for _, path, _ in cells) if row is not None]
    if failures:
        log.error("%d cell(s) failed (see their failed.json; rerun to retry): %s", len(failures), ", ".join(failures))
    return ExperimentOutcome(folder, rows, files)


def _describe(executor: ExecutorSettings) -> str:
    if executor.backend == "local":
        return f"{executor.jobs} local process(es)" if executor.jobs > 1 else "one after another"
    return f"--executor {executor.backend}, {executor.jobs} at a time"


@dataclass
class MethodsCellTask(CellTask):
    """One benchmark cell as a picklable :class:`~.executor.Task` (runs here, in a worker
    process or as a SLURM job alike): a training cell (:func:`~.cells.run_cell`) or a
    ``Base+FDA`` cell (:func:`~.fda_arm.run_fda_cell`). A cell that raises leaves ``failed.json``
    (its error, for the tables and the user) and the error goes back to the executor; a rerun
    retries it, and success removes the marker. ``position`` (``"3/12"``) labels its log line."""

    position: str = ""

    def __call__(self) -> dict[str, Any]:
        log.info("cell %s: %s", self.position, self.cell.key)
        started = time.perf_counter()
        try:
            if "fda_of" in self.cell.info:
                from medseg_auto.experiments.fda_arm import run_fda_cell

                row = run_fda_cell(self.data, self.cell, self.options, self.folder)
            else:
                row, _ = run_cell(self.data, self.cell, self.options, self.folder)
        except Exception as error:  # recorded for the tables; the executor reports it and goes on
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.folder / FAILED_MARKER, {"cell": self.cell.key,
                                                            "error": f"{type(error).__name__}: {error}",
                                                            "seconds": round(time.perf_counter() - started, 1)})
            raise
        (self.folder / FAILED_MARKER).unlink(missing_ok=True)
        return row


def run_method_tasks(tasks: Sequence[MethodsCellTask], executor: ExecutorSettings, folder: Path,
                     write: Callable[[], Any], show_progress: bool = True) -> list[str]:
    """Run the cells through :func:`~.executor.run_tasks`, rewriting the tables (``write``)
    after every finished one; return the keys of the failed cells.

    In this process the cells run in the order given (seed by seed, each ``Base+FDA`` cell
    right after its Base cell). Elsewhere (``-j N``, SLURM) cells finish in any order, so the
    ``Base+FDA`` cells, which need their Base cell's model, go in a second round."""
    from tqdm import tqdm

    in_order = executor.backend == "local" and executor.jobs == 1
    fda = [task for task in tasks if "fda_of" in task.cell.info]
    later = {id(task) for task in fda}
    rounds = [list(tasks)] if in_order else [[task for task in tasks if id(task) not in later], fda]
    progress = tqdm(total=len(tasks), desc="cells", unit="cell", disable=not show_progress)

    def on_result(key: str, row: dict[str, Any]) -> None:
        progress.update()
        scores = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("dice_") and isinstance(v, float))
        log.info("cell %s finished: %s (%.0f s)", key, scores or "no test cases", row.get("seconds", 0.0))
        write()

    failures: list[str] = []
    for batch in rounds:
        outcome = run_tasks(batch, executor, folder, on_result)
        failures += sorted(outcome.failures)
        progress.update(len(outcome.failures))
    progress.close()
    return failures
