"""``train_fold(TrainRequest(...))``: everything between a caller and the :class:`Trainer` of one fold.

Every caller (``medseg-auto train``, the experiments' cells, the demo, the benchmarks' driver)
fills one :class:`TrainRequest`; :func:`train_fold` then runs a few named steps:

1. :func:`_check_request`: the trainer, network, settings and ``--pretrained`` exist (before any
   data is read, so a typo fails at once);
2. :func:`locate_fold`: the plans, the preprocessed cache and the fold's cases (``splits.json``,
   or the request's explicit ``split``);
3. :func:`_prepare_output`: ``results/NAME/TRAINER__PLANS__CONFIG/fold_F/`` with ``plans.json`` and
   ``dataset.json`` next to the fold folders; an earlier run's files set aside into
   ``previous_run/`` on a fresh start; the split recorded;
4. :func:`_build_trainer` and :func:`_restore` (``continue_training`` or ``pretrained``), then
   ``Trainer.fit``;
5. the final validation (unless ``final_validation=False``):
   :func:`~medseg_auto.evaluation.validation.run_final_validation` with the trained network.

It sits above the inference and evaluation stages because of step 5 (nnU-Net's
``run/run_training.py`` likewise trains, then validates); the training stage itself knows
nothing of prediction.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

from medseg_auto.errors import DatasetError, MedsegError
from medseg_auto.evaluation.validation import VALIDATION_FOLDER, FinalValidationRequest, run_final_validation
from medseg_auto.paths import DataHome, check_safe_name
from medseg_auto.planning.plans import PLANS_FILE_NAME, Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.checkpoint import BEST, FINAL, find_resume_checkpoint, load_checkpoint, load_pretrained_weights
from medseg_auto.training.data.splits import SPLIT_FILE, fold_cases, load_or_create_splits
from medseg_auto.training.distributed import (
    DistributedContext, barrier, configure_threads, rank_batch_size, context_from_environment, destroy_process_group, init_process_group,
    resolve_device,
)
from medseg_auto.training.hooks import DomainMethod, TrainingSettings
from medseg_auto.training.progress import TRAINING_LOG, training_log_file
from medseg_auto.training.registry import TrainerSpec, get_trainer
from medseg_auto.training.run_checks import PREVIOUS_RUN_FOLDER, check_settings, has_earlier_run, set_aside_earlier_run  # noqa: F401
from medseg_auto.training.sampled_sites import sites_of
from medseg_auto.training.network_registry import DEFAULT_NETWORK, available_networks
from medseg_auto.training.trainer import Trainer, TrainingJob
from medseg_auto.utils.atomic import read_json, write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

COPIED_FILES = ("dataset.json", "dataset_fingerprint.json")
log = get_logger("run.train")


@dataclass(frozen=True)
class TrainRequest:
    """One fold to train: what ``medseg-auto train`` and every other caller ask for.

    ``fold``: ``0..4`` or ``"all"``; with ``split=(train_ids, val_ids)`` a tag naming the run
    instead (``fold_<tag>/``; not a number, not ``all``), trained on those cases: the validation
    loss, the pseudo Dice behind ``checkpoint_best`` and the final validation see only
    ``val_ids``, so an experiment keeps its test cases out of both lists.

    ``settings``: :class:`~medseg_auto.training.hooks.TrainingSettings` fields to override
    (``num_epochs``, ``iterations_per_epoch``, ``val_iterations_per_epoch``, ``num_workers``,
    ``cpu_bf16``, ``batch_size``, ...); they win over the trainer's presets, and a resumed run
    keeps its stored settings except these. ``trainer_options``: the values of the trainer's own
    options (``add_cli_arguments``). ``network`` names a registered network
    (:mod:`~medseg_auto.training.network_registry`). ``seed=None`` draws one (recorded in the
    checkpoints; ``continue_training`` reuses it).

    ``final_validation=False`` skips predicting the validation cases after training (the
    benchmarks time training only). ``trainer_class`` is the loop to run, a subclass of
    :class:`Trainer` for instrumentation (the benchmarks' timers); methods plug in through
    ``trainer_name``, not here. ``show_progress=False`` (``--no-progress``) hides the final
    validation's progress bar. ``allow_untrained=True`` accepts ``num_epochs=0`` on a fresh
    run (the final validation then scores the untrained network: the demo's baseline); otherwise
    0 epochs is refused unless ``pretrained`` weights are given.
    """

    home: DataHome | str | Path | None
    dataset: str
    configuration: str
    fold: int | str
    trainer_name: str = "Base"
    plans_name: str = "plans"
    network: str = DEFAULT_NETWORK
    settings: Mapping[str, Any] = field(default_factory=dict)
    trainer_options: Mapping[str, Any] = field(default_factory=dict)
    split: tuple[Sequence[str], Sequence[str]] | None = None
    continue_training: bool = False
    pretrained: str | Path | None = None
    device: str = "auto"
    seed: int | None = None
    final_validation: bool = True
    val_best: bool = False
    save_probabilities: bool = False
    show_progress: bool = True
    allow_untrained: bool = False
    trainer_class: type[Trainer] = Trainer


@dataclass
class FoldData:
    """What :func:`locate_fold` found: the dataset's folders, plans, cache and the fold's cases."""

    home: DataHome
    dataset_name: str
    preprocessed: Path
    plans: Plans
    cache: PreprocessedCache
    fold: int | str
    train_ids: list[str]
    val_ids: list[str]
    sites: dict[str, str | None]


def trainer_folder_name(trainer_name: str, plans_name: str, configuration: str) -> str:
    """``TRAINER__PLANS__CONFIG`` (nnU-Net's naming)."""
    return f"{trainer_name}__{plans_name}__{configuration}"


def experiment_trainer_name(trainer_name: str, network: str = DEFAULT_NETWORK) -> str:
    """The trainer part of the results folder: ``TRAINER``, or ``TRAINER-NETWORK`` for a
    non-default ``--network`` (two networks must not share a folder)."""
    return trainer_name if network == DEFAULT_NETWORK else f"{trainer_name}-{network}"


def fold_folder_name(fold: int | str) -> str:
    return f"fold_{fold}"


def train_fold(request: TrainRequest) -> Path:
    """Train the fold of ``request`` and return its results folder (``.../fold_F``)."""
    spec, methods = _check_request(request)
    data = locate_fold(request)
    context = context_from_environment()
    device = resolve_device(request.device, context)
    threads = configure_threads(device, context)
    init_process_group(device, context)
    try:
        experiment = data.home.results_dataset(data.dataset_name) / trainer_folder_name(
            experiment_trainer_name(spec.name, request.network), request.plans_name, request.configuration)
        output = experiment / fold_folder_name(data.fold)
        seed = _shared_seed(request.seed, context, device)
        resumed = _resumed_init_args(output) if request.continue_training else {}
        # a resumed run keeps its seed from the start: methods seed their own generators in setup
        seed = int(resumed.get("seed", seed))
        if context.is_main:
            output.mkdir(parents=True, exist_ok=True)
            _prepare_output(request, data, output)
            _copy_dataset_files(data.preprocessed, request.plans_name, experiment)
        log_context = training_log_file(output / TRAINING_LOG) if context.is_main else contextlib.nullcontext()  # other ranks write no files
        with log_context:
            trainer = _build_trainer(request, spec, methods, data, output, seed, device, context, resumed)
            _log_start(trainer, spec.description, threads, len(data.train_ids), len(data.val_ids))
            _restore(trainer, output, request)
            trainer.fit()
            # Every rank leaves the group together before rank 0's (long, collective-free) final validation:
            # a rank tearing gloo down while a peer still uses it can abort the process.
            barrier(context)
            trainer.release_distributed()
            destroy_process_group(context)
            if context.is_main and request.final_validation:
                _final_validation(trainer, data, request)
    finally:
        destroy_process_group(context)
    return output


def _check_request(request: TrainRequest) -> tuple[TrainerSpec, list[DomainMethod]]:
    """The trainer and its methods, once every name in the request is known to exist."""
    if request.continue_training and request.pretrained is not None:
        raise MedsegError("--continue and --pretrained exclude each other: a resumed run already has its weights")
    spec = get_trainer(request.trainer_name)  # first: a typo should not wait for the data to load
    if request.network not in available_networks():
        raise MedsegError(f"unknown network '{request.network}'; available: {', '.join(available_networks())}")
    known = {f.name for f in fields(TrainingSettings)}
    unknown = sorted(set(request.settings) - known)
    if unknown:
        raise MedsegError(f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    check_settings(request.settings, with_pretrained=request.pretrained is not None or request.allow_untrained)
    if request.pretrained is not None and not Path(request.pretrained).is_file():
        raise MedsegError(f"--pretrained {request.pretrained}: no such checkpoint file")
    return spec, spec.create_methods(dict(request.trainer_options))


def locate_fold(request: TrainRequest) -> FoldData:
    """The plans, the cache and the fold's ``(train, val)`` cases of the request (also what the
    benchmarks build their trainers on)."""
    home = request.home if isinstance(request.home, DataHome) else DataHome.resolve(request.home)
    fold = _parse_fold(request.fold) if request.split is None else _parse_split_tag(request.fold)
    dataset_name = home.find_dataset(request.dataset)
    preprocessed = home.preprocessed_dataset(dataset_name)
    plans = Plans.load(preprocessed / f"{request.plans_name}.json")
    config = plans.configuration(request.configuration)
    cache = PreprocessedCache(preprocessed / config.data_identifier)
    case_ids = cache.case_ids()
    if not case_ids:
        raise DatasetError(f"{cache.folder}: no preprocessed cases; run 'medseg-auto plan_and_preprocess {request.dataset}'")
    sites = {case: cache.load_properties(case).site for case in case_ids}
    if request.split is None and fold == "all":  # every case trains and validates; no 5-fold split needed
        train_ids, val_ids = sorted(case_ids), sorted(case_ids)
    elif request.split is None:
        train_ids, val_ids = fold_cases(load_or_create_splits(preprocessed, case_ids, sites), fold)
    else:
        train_ids, val_ids = _check_split(request.split, case_ids, cache.folder)
    return FoldData(home, dataset_name, preprocessed, plans, cache, fold, train_ids, val_ids, sites)


def _prepare_output(request: TrainRequest, data: FoldData, output: Path) -> None:
    """Rank 0, before the trainer and its log exist: set a whole earlier run aside on a fresh
    start (its log, validation and split included, so it goes before the new split is written
    and before the new log opens), then record an explicit split."""
    if not request.continue_training and has_earlier_run(output):
        log.warning("%s held an earlier run; moved to %s (use --continue to resume instead)",
                    output, set_aside_earlier_run(output))
    if request.split is not None:
        _record_split(output / SPLIT_FILE, data.train_ids, data.val_ids, request.continue_training)


def _build_trainer(request: TrainRequest, spec: TrainerSpec, methods: list[DomainMethod], data: FoldData,
                   output: Path, seed: int, device: torch.device, context: DistributedContext,
                   resumed: Mapping[str, Any]) -> Trainer:
    """The request's trainer class on the fold, with the request's settings over the trainer's
    presets (over the stored settings of the run being resumed)."""
    job = TrainingJob(
        plans=data.plans, configuration_name=request.configuration, cache=data.cache, train_case_ids=data.train_ids,
        val_case_ids=data.val_ids, sites=data.sites, output_folder=output, trainer_name=spec.name, seed=seed,
        init_args={"dataset": data.dataset_name, "configuration": request.configuration, "fold": str(data.fold),
                   "plans_name": request.plans_name, "trainer_name": spec.name, "device": str(device),
                   "network": request.network},
        pretrained=Path(request.pretrained) if request.pretrained is not None else None, network_name=request.network,
    )
    known = {f.name for f in fields(TrainingSettings)}
    stored = {key: value for key, value in resumed.get("settings", {}).items() if key in known}
    overrides = {**stored, **request.settings}  # a resumed run keeps its settings but those named again
    return request.trainer_class(job, methods, device=device, distributed=context, overrides=overrides)


def _parse_fold(fold: int | str) -> int | str:
    if str(fold) == "all":
        return "all"
    try:
        return int(fold)
    except ValueError:
        raise MedsegError(f"fold must be a number (0..4) or 'all', got {fold!r}") from None


def _parse_split_tag(tag: int | str) -> str:
    tag = str(tag)
    if tag == "all" or tag.isdigit():
        raise MedsegError(f"a run with an explicit split needs a tag as its fold name, not {tag!r} (that is a cross-validation fold)")
    return check_safe_name(tag, what="split tag")


def _check_split(split: tuple[Sequence[str], Sequence[str]], case_ids: Sequence[str],
                 cache_folder: Path) -> tuple[list[str], list[str]]:
    """The split's ``(train, val)`` lists, refused when empty or naming cases the cache lacks."""
    train_ids, val_ids = [str(c) for c in split[0]], [str(c) for c in split[1]]
    if not train_ids or not val_ids:
        raise MedsegError(f"split: {len(train_ids)} training and {len(val_ids)} validation case(s); both lists need cases")
    unknown = sorted(set(train_ids + val_ids) - set(case_ids))
    if unknown:
        raise DatasetError(f"{cache_folder}: split names {len(unknown)} case(s) that are not preprocessed: {', '.join(unknown[:5])}")
    overlap = set(train_ids) & set(val_ids)
    if overlap:
        log.warning("split: %d case(s) are in both the training and the validation list", len(overlap))
    return train_ids, val_ids


def _record_split(path: Path, train_ids: list[str], val_ids: list[str], resuming: bool) -> None:
    """Write the split next to the checkpoints; a resumed run must train on the same cases."""
    split = {"train": train_ids, "val": val_ids}
    if resuming and path.is_file() and find_resume_checkpoint(path.parent) is not None and read_json(path) != split:
        raise MedsegError(f"{path}: {path.parent} was trained on another split; use another tag or delete the folder")
    write_json_atomic(path, split)


def _shared_seed(seed: int | None, context: DistributedContext, device: torch.device) -> int:
    """The given seed, or a random one that every rank agrees on (rank 0's; on the training
    device, since NCCL moves only CUDA tensors)."""
    value = int(seed) if seed is not None else secrets.randbelow(2**31)
    if context.enabled:
        shared = torch.tensor([value], dtype=torch.int64, device=device)
        dist.broadcast(shared, src=0)
        value = int(shared.item())
    return value


def _copy_dataset_files(preprocessed: Path, plans_name: str, experiment: Path) -> None:
    """``plans.json`` (whatever the plans' name) and ``dataset.json`` next to the fold folders."""
    shutil.copyfile(preprocessed / f"{plans_name}.json", experiment / PLANS_FILE_NAME)
    for name in COPIED_FILES:
        if (preprocessed / name).is_file():
            shutil.copyfile(preprocessed / name, experiment / name)


def _resumed_init_args(output: Path) -> dict[str, Any]:
    """The ``init_args`` (seed, settings, ...) of the run being resumed; empty when there is
    nothing to resume."""
    checkpoint = find_resume_checkpoint(output)
    return dict(load_checkpoint(checkpoint).get("init_args", {})) if checkpoint is not None else {}


def _restore(trainer: Trainer, output: Path, request: TrainRequest) -> None:
    """Resume the run (``continue_training``) or start from ``pretrained`` weights."""
    if request.continue_training:
        checkpoint = find_resume_checkpoint(output)
        if checkpoint is None:
            log.warning("--continue: no checkpoint in %s; starting from scratch", output)
        else:
            trainer.load_checkpoint(checkpoint)
    elif request.pretrained is not None:
        load_pretrained_weights(trainer.network, request.pretrained)



def _final_validation(trainer: Trainer, data: FoldData, request: TrainRequest) -> None:
    """Predict and score the validation cases with the final (or, ``val_best``, the best) weights."""
    checkpoint_name = FINAL
    if request.val_best and (trainer.job.output_folder / BEST).is_file():
        trainer.network.load_state_dict(load_checkpoint(trainer.job.output_folder / BEST)["network_weights"])
        checkpoint_name = BEST
    raw = data.home.raw_dataset(data.dataset_name)
    run_final_validation(FinalValidationRequest(
        fold_folder=trainer.job.output_folder, output_folder=trainer.job.output_folder / VALIDATION_FOLDER,
        network=trainer.network, plans=trainer.job.plans, configuration_name=trainer.job.configuration_name,
        case_ids=list(trainer.job.val_case_ids), preprocessed_dataset_folder=data.preprocessed,
        raw_dataset_folder=raw if raw.is_dir() else None, device=trainer.device,
        mirror_axes=trainer.mirror_axes, save_probabilities=request.save_probabilities,
        checkpoint_name=checkpoint_name, show_progress=request.show_progress,
        reference_sites=sites_of(trainer.sampled_case_ids or trainer.job.train_case_ids,
                                 trainer.job.sites),
    ))


def _log_start(trainer: Trainer, description: str, threads: int, n_train: int, n_val: int) -> None:
    job, settings = trainer.job, trainer.settings
    precision = "fp16 autocast + GradScaler" if trainer.device.type == "cuda" else (
        "bf16 autocast" if trainer.cpu_bf16 else "fp32")
    schedule = f"{settings.num_epochs} x {settings.iterations_per_epoch} iterations"
    # The description states the trainer's default schedule; the log states this run's.
    log.info("trainer %s: %s", job.trainer_name, re.sub(r"\d+ x \d+ iterations", schedule, description))
    log.info("this run: %d epochs x %d iterations, %d validation batches per epoch", settings.num_epochs,
             settings.iterations_per_epoch, settings.validation_iterations)
    log.info("dataset %s, configuration %s, fold %s, seed %d", job.init_args.get("dataset"),
             job.configuration_name, job.init_args.get("fold"), job.seed)
    log.info("%d training cases, %d validation cases", n_train, n_val)
    log.info("device %s (%s), %d threads, rank %d of %d, %d sample(s) per rank", trainer.device, precision,
             threads, trainer.distributed.rank, trainer.distributed.world_size,
             rank_batch_size(settings.batch_size or job.configuration.batch_size, trainer.distributed))
    log.info("settings: %s", settings)
