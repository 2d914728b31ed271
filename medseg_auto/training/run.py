"""``train_fold``: everything between the command line and the :class:`Trainer` of one fold.

Finds the plans and the preprocessed cache, the fold's cases (``splits.json``), the trainer's
methods, the device and (under ``torchrun``) the process group; lays out
``results/NAME/TRAINER__PLANS__CONFIG/fold_F/`` with ``plans.json`` and ``dataset.json``
copied next to the fold folders; trains, resuming with ``continue_training``; and finally
calls the final validation.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

from medseg_auto.errors import DatasetError, MedsegError
from medseg_auto.paths import DataHome, check_safe_name
from medseg_auto.planning.plans import PLANS_FILE_NAME, Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.checkpoint import BEST, FINAL, LATEST, find_resume_checkpoint, load_checkpoint, load_pretrained_weights
from medseg_auto.training.data.splits import fold_cases, load_or_create_splits
from medseg_auto.training.distributed import (
    DistributedContext, barrier, configure_threads, rank_batch_size, context_from_environment, destroy_process_group, init_process_group,
    resolve_device,
)
from medseg_auto.training.final_validation import VALIDATION_FOLDER, FinalValidationRequest, run_final_validation
from medseg_auto.training.hooks import TrainingSettings
from medseg_auto.training.progress import PROGRESS_CSV, PROGRESS_PNG, TRAINING_LOG, training_log_file
from medseg_auto.training.registry import get_trainer
from medseg_auto.training.sampled_sites import sampled_sites
from medseg_auto.training.network_registry import DEFAULT_NETWORK, available_networks
from medseg_auto.training.trainer import Trainer, TrainingJob
from medseg_auto.utils.atomic import read_json, write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

COPIED_FILES = ("dataset.json", "dataset_fingerprint.json")
SPLIT_FILE = "split.json"  # fold_<tag>/split.json: the case lists of a run with an explicit split
log = get_logger("training.run")
PREVIOUS_RUN_FOLDER = "previous_run"


def trainer_folder_name(trainer_name: str, plans_name: str, configuration: str) -> str:
    """``TRAINER__PLANS__CONFIG`` (nnU-Net's naming)."""
    return f"{trainer_name}__{plans_name}__{configuration}"


def experiment_trainer_name(trainer_name: str, network: str = DEFAULT_NETWORK) -> str:
    """The trainer part of the results folder: ``TRAINER``, or ``TRAINER-NETWORK`` for a
    non-default ``--network`` (two networks must not share a folder)."""
    return trainer_name if network == DEFAULT_NETWORK else f"{trainer_name}-{network}"


def fold_folder_name(fold: int | str) -> str:
    return f"fold_{fold}"


def train_fold(
    home: DataHome | str | Path | None,
    dataset: str,
    configuration: str,
    fold: int | str,
    trainer_name: str = "Base",
    plans_name: str = "plans",
    epochs: int | None = None,
    iters_per_epoch: int | None = None,
    continue_training: bool = False,
    pretrained: str | Path | None = None,
    device: str = "auto",
    seed: int | None = None,
    val_iters_per_epoch: int | None = None,
    num_workers: int | None = None,
    cpu_bf16: bool | None = None,
    val_best: bool = False,
    save_probabilities: bool = False,
    trainer_options: Mapping[str, Any] | None = None,
    settings_overrides: Mapping[str, Any] | None = None,
    network: str = DEFAULT_NETWORK,
    split: tuple[Sequence[str], Sequence[str]] | None = None,
) -> Path:
    """Train one fold (``0..4`` or ``"all"``) and return its results folder.

    ``split=(train_ids, val_ids)`` trains on those cases instead of a cross-validation fold;
    ``fold`` is then a tag naming the run (``fold_<tag>/``; not a number, not ``all``). The
    validation loss, the pseudo Dice behind ``checkpoint_best`` and the final validation see
    only ``val_ids``, so an experiment keeps its test cases out of both lists.

    ``epochs``, ``iters_per_epoch``, ``val_iters_per_epoch``, ``num_workers``, ``cpu_bf16``
    and ``settings_overrides`` (any :class:`~medseg_auto.training.hooks.TrainingSettings`
    field) override the trainer's settings when given. ``trainer_options`` are the values of
    the trainer's own options (``add_cli_arguments``). ``network`` names a registered network
    (:mod:`~medseg_auto.training.network_registry`). ``seed=None`` draws one (recorded in the
    checkpoints; ``--continue`` reuses it).
    """
    if continue_training and pretrained is not None:
        raise MedsegError("--continue and --pretrained exclude each other: a resumed run already has its weights")
    spec = get_trainer(trainer_name)  # first: a typo should not wait for the data to load
    if network not in available_networks():
        raise MedsegError(f"unknown network '{network}'; available: {', '.join(available_networks())}")
    if pretrained is not None and not Path(pretrained).is_file():
        raise MedsegError(f"--pretrained {pretrained}: no such checkpoint file")
    methods = spec.create_methods(dict(trainer_options or {}))
    home = home if isinstance(home, DataHome) else DataHome.resolve(home)
    fold = _parse_fold(fold) if split is None else _parse_split_tag(fold)
    dataset_name = home.find_dataset(dataset)
    preprocessed = home.preprocessed_dataset(dataset_name)
    plans = Plans.load(preprocessed / f"{plans_name}.json")
    config = plans.configuration(configuration)
    cache = PreprocessedCache(preprocessed / config.data_identifier)
    case_ids = cache.case_ids()
    if not case_ids:
        raise DatasetError(f"{cache.folder}: no preprocessed cases; run 'medseg-auto plan_and_preprocess {dataset}'")
    sites = {case: cache.load_properties(case).site for case in case_ids}
    if split is None and fold == "all":  # every case trains and validates; no 5-fold split needed
        train_ids, val_ids = sorted(case_ids), sorted(case_ids)
    elif split is None:
        train_ids, val_ids = fold_cases(load_or_create_splits(preprocessed, case_ids, sites), fold)
    else:
        train_ids, val_ids = _check_split(split, case_ids, cache.folder)

    context = context_from_environment()
    torch_device = resolve_device(device, context)
    threads = configure_threads(torch_device, context)
    init_process_group(torch_device, context)
    try:
        seed = _shared_seed(seed, context, torch_device)
        experiment = home.results_dataset(dataset_name) / trainer_folder_name(experiment_trainer_name(spec.name, network), plans_name, configuration)
        output = experiment / fold_folder_name(fold)
        if context.is_main:
            output.mkdir(parents=True, exist_ok=True)
            _copy_dataset_files(preprocessed, plans_name, experiment)
            if split is not None:
                _record_split(output / SPLIT_FILE, train_ids, val_ids, continue_training)
        job = TrainingJob(
            plans=plans, configuration_name=configuration, cache=cache, train_case_ids=train_ids,
            val_case_ids=val_ids, sites=sites, output_folder=output, trainer_name=spec.name, seed=seed,
            init_args={"dataset": dataset_name, "configuration": configuration, "fold": str(fold),
                       "plans_name": plans_name, "trainer_name": spec.name, "device": str(torch_device),
                       "network": network},
            pretrained=Path(pretrained) if pretrained is not None else None, network_name=network,
        )
        overrides = _settings_overrides(epochs, iters_per_epoch, val_iters_per_epoch, num_workers, cpu_bf16,
                                        settings_overrides)
        if continue_training:
            overrides = {**_stored_settings(output), **overrides}
        log_context = training_log_file(output / TRAINING_LOG) if context.is_main else contextlib.nullcontext()  # other ranks write no files
        with log_context:
            trainer = Trainer(job, methods, device=torch_device, distributed=context, overrides=overrides)
            _log_start(trainer, spec.description, threads, len(train_ids), len(val_ids))
            _restore(trainer, output, continue_training, pretrained)
            trainer.fit()
            # Every rank leaves the group together before rank 0's (long, collective-free) final validation:
            # a rank tearing gloo down while a peer still uses it can abort the process.
            barrier(context)
            destroy_process_group(context)
            if context.is_main:
                _final_validation(trainer, home, dataset_name, preprocessed, val_best, save_probabilities)
    finally:
        destroy_process_group(context)
    return output


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


def _settings_overrides(epochs, iters, val_iters, num_workers, cpu_bf16, extra) -> dict[str, Any]:
    overrides: dict[str, Any] = dict(extra or {})
    named = {"num_epochs": epochs, "iterations_per_epoch": iters, "val_iterations_per_epoch": val_iters,
             "num_workers": num_workers, "cpu_bf16": cpu_bf16}
    overrides.update({key: value for key, value in named.items() if value is not None})
    return overrides


def _stored_settings(output: Path) -> dict[str, Any]:
    """The settings of the run being resumed (a resumed run keeps its epochs, iterations, ...;
    only what the user names again changes). Empty when there is nothing to resume."""
    checkpoint = find_resume_checkpoint(output)
    if checkpoint is None:
        return {}
    stored = load_checkpoint(checkpoint).get("init_args", {}).get("settings", {})
    known = {f.name for f in fields(TrainingSettings)}
    return {key: value for key, value in stored.items() if key in known}


def _restore(trainer: Trainer, output: Path, continue_training: bool, pretrained: str | Path | None) -> None:
    if continue_training:
        checkpoint = find_resume_checkpoint(output)
        if checkpoint is None:
            log.warning("--continue: no checkpoint in %s; starting from scratch", output)
        else:
            trainer.load_checkpoint(checkpoint)
    elif pretrained is not None:
        load_pretrained_weights(trainer.network, pretrained)
    if not continue_training and find_resume_checkpoint(output) is not None:
        moved = set_aside_earlier_run(output)
        log.warning("%s held checkpoints of an earlier run; moved to %s (use --continue to resume instead)",
                    output, moved)


def set_aside_earlier_run(output: Path) -> Path:
    """Move an earlier run's checkpoints and curves into ``output/previous_run/`` before a fresh
    start. Left in place, a stale ``checkpoint_final.pt`` would be what a later ``--continue``
    of the *new* run resumes from (it was: a fresh run killed after 4 epochs resumed the old
    30-epoch run's final checkpoint). Only the latest earlier run is kept."""
    previous = output / PREVIOUS_RUN_FOLDER
    if previous.exists():
        shutil.rmtree(previous)
    previous.mkdir()
    for name in (FINAL, LATEST, BEST, PROGRESS_CSV, PROGRESS_PNG):  # the log is open and appended to
        if (output / name).exists():
            (output / name).replace(previous / name)
    return previous


def _final_validation(trainer: Trainer, home: DataHome, dataset_name: str, preprocessed: Path,
                      val_best: bool, save_probabilities: bool) -> None:
    checkpoint_name = FINAL
    if val_best and (trainer.job.output_folder / BEST).is_file():
        trainer.network.load_state_dict(load_checkpoint(trainer.job.output_folder / BEST)["network_weights"])
        checkpoint_name = BEST
    raw = home.raw_dataset(dataset_name)
    run_final_validation(FinalValidationRequest(
        fold_folder=trainer.job.output_folder, output_folder=trainer.job.output_folder / VALIDATION_FOLDER,
        network=trainer.network, plans=trainer.job.plans, configuration_name=trainer.job.configuration_name,
        case_ids=list(trainer.job.val_case_ids), preprocessed_dataset_folder=preprocessed,
        raw_dataset_folder=raw if raw.is_dir() else None, device=trainer.device,
        mirror_axes=trainer.mirror_axes, save_probabilities=save_probabilities, checkpoint_name=checkpoint_name,
        reference_sites=sampled_sites(trainer.methods, trainer.job.train_case_ids, trainer.job.sites),
    ))


def _log_start(trainer: Trainer, description: str, threads: int, n_train: int, n_val: int) -> None:
    job, settings = trainer.job, trainer.settings
    precision = "fp16 autocast + GradScaler" if trainer.device.type == "cuda" else (
        "bf16 autocast" if trainer.cpu_bf16 else "fp32")
    log.info("trainer %s: %s", job.trainer_name, description)
    log.info("dataset %s, configuration %s, fold %s, seed %d", job.init_args.get("dataset"),
             job.configuration_name, job.init_args.get("fold"), job.seed)
    log.info("%d training cases, %d validation cases", n_train, n_val)
    log.info("device %s (%s), %d threads, rank %d of %d, %d sample(s) per rank", trainer.device, precision,
             threads, trainer.distributed.rank, trainer.distributed.world_size,
             rank_batch_size(settings.batch_size or job.configuration.batch_size, trainer.distributed))
    log.info("settings: %s", settings)
