#!/usr/bin/env python3
"""Seconds per training iteration of several trainers on the same data, in one process.

Every trainer named by ``--trainers`` is built on the same fold of the same preprocessed
configuration, with the same seed (so the same initial network), the same settings and the same
torch threads; then all of them train on the *same* pre-drawn augmented batches, one
``Trainer.train_step`` per batch each. ``--order alternating`` (default) interleaves them,
rotating who goes first every iteration, so a noisy neighbour on the machine hits every trainer
alike; ``sequential`` runs each trainer's iterations back to back. Data loading is not timed (the
batches exist before the clock starts): the table shows what each method adds to a step.

Methods are timed as they run late in training: ``on_epoch_start(--epoch)`` is called first
(default: the last epoch of ``--epochs``), so a method whose loss is switched off during a warm-up
(``FeatureDiscrepancy``) is timed with it on. Where a method's sampler shapes its batches (the
site-balanced batches of ``ExchangeableFeatureDiscrepancy``) the shared batches are still the
uniform ones: the cost of a step does not depend on which cases it holds.

Columns: ``s_per_it`` mean seconds of ``train_step`` (forward, losses, backward, clipping,
optimizer), ``median_s``, ``overhead_%`` = mean / Base's mean - 1 (``overhead_median_%`` the
same on medians); on CUDA (timed with ``synchronize``) also ``peak_mib`` (``max_memory_allocated``
during the step, every trainer's weights included) and ``step_mib`` (peak minus what was
allocated before the step: the step's own activations, comparable between trainers). On CPU
per-trainer memory is not separable in one process, so those columns stay empty.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import common
from common import BenchmarkError

from medseg_auto.errors import MedsegError
from medseg_auto.paths import DataHome
from medseg_auto.training.data.loader import make_training_loader
from medseg_auto.training.distributed import DistributedContext, configure_threads, resolve_device
from medseg_auto.training.hooks import TrainingSettings
from medseg_auto.training.network_registry import DEFAULT_NETWORK, available_networks
from medseg_auto.training.registry import get_trainer
from medseg_auto.run.train import TrainRequest, locate_fold
from medseg_auto.training.trainer import Trainer, TrainingJob

REFERENCE = "Base"
DEFAULT_TRAINERS = ("Base", "FeatureDiscrepancy", "ExchangeableFeatureDiscrepancy", "LocalContrastive")
TABLE_COLUMNS = ("trainer", "timed_its", "s_per_it", "median_s", "overhead_%", "overhead_median_%", "peak_mib",
                 "step_mib")

EXAMPLES = """\
examples:
  # the default trainers on a 2D configuration, 20 timed iterations after 3 warm-up ones
  .venv/bin/python benchmarks/trainer_overhead.py --home medseg_auto_data --dataset BreastUS --configuration 2d

  # chosen trainers and options, a GPU, more iterations
  .venv/bin/python benchmarks/trainer_overhead.py --home H --dataset Hippocampus --configuration 3d_fullres \\
      --trainers Base FeatureDiscrepancy LocalContrastive --device cuda --iterations 50 --options fd_weight=0.3

  # a tiny smoke run on one thread
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_overhead.py --home H --dataset Toy --configuration 2d \\
      --iterations 2 --warmup 1

Base is always measured (added first if not named): it is the reference of the overhead columns.
Results: WORK/trainer_overhead.{json,csv,md} (WORK defaults to benchmarks/_work/trainer_overhead).
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the examples' line breaks; show a default only where the help does not name one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trainer_overhead.py", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--home", default=None, help="data home (default: $MEDSEG_AUTO_HOME or ./medseg_auto_data)")
    parser.add_argument("--dataset", required=True, help="dataset name, id or folder name")
    parser.add_argument("--configuration", required=True, help="configuration of the plans (2d, 3d_fullres, ...)")
    parser.add_argument("--plans", default="plans", help="plans name")
    parser.add_argument("--fold", default="0", help="fold whose training cases the batches come from")
    parser.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS), help="trainer names (-tr)")
    parser.add_argument("--network", default=DEFAULT_NETWORK, help="registered network (--network of train)")
    parser.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE",
                        help="trainer options by dest (fd_weight=0.3); each trainer takes those it knows; "
                             "values are parsed as JSON when they can be")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per trainer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per trainer first")
    parser.add_argument("--order", choices=("alternating", "sequential"), default="alternating",
                        help="interleave the trainers every iteration, or run them one after the other")
    parser.add_argument("--epochs", type=int, default=TrainingSettings.num_epochs,
                        help="the schedule length the methods see (warm-up fractions are of it)")
    parser.add_argument("--epoch", type=int, default=None, help="the epoch the methods are timed at (default: the last)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the plans' batch size")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    parser.add_argument("--no-bf16", action="store_true", help="float32 on CPU instead of bf16 autocast")
    parser.add_argument("--num-workers", type=int, default=0, help="augmentation workers drawing the batches (untimed)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the networks and of the batches")
    parser.add_argument("--work", type=Path, default=common.repo_root() / "benchmarks" / "_work" / "trainer_overhead",
                        help="output folder")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    if args.network not in available_networks():
        parser.error(f"--network {args.network}: unknown; available: {', '.join(available_networks())}")
    args.trainers = list(dict.fromkeys([REFERENCE, *args.trainers]))
    args.trainer_options = parse_options(parser, args.options)
    args.epoch = args.epochs - 1 if args.epoch is None else args.epoch
    return args


def parse_options(parser: argparse.ArgumentParser, values: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for value in values:
        key, separator, raw = value.partition("=")
        if not separator or not key:
            parser.error(f"--options {value}: expected KEY=VALUE")
        try:
            options[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = raw
    return options


def build_trainers(args: argparse.Namespace, home: DataHome, device: torch.device) -> dict[str, Trainer]:
    """One :class:`Trainer` per name on the same fold, seed (the same initial network) and settings."""
    fold = locate_fold(TrainRequest(home, args.dataset, args.configuration, args.fold, plans_name=args.plans))
    plans, cache, sites, train_ids = fold.plans, fold.cache, fold.sites, fold.train_ids
    overrides: dict[str, Any] = {"num_epochs": args.epochs, "cpu_bf16": not args.no_bf16}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    trainers = {}
    for name in args.trainers:
        spec = get_trainer(name)
        job = TrainingJob(plans=plans, configuration_name=args.configuration, cache=cache, train_case_ids=train_ids,
                          val_case_ids=train_ids[:1], sites=sites, output_folder=args.work / "runs" / name,
                          trainer_name=spec.name, seed=args.seed, network_name=args.network)
        trainer = Trainer(job, spec.create_methods(args.trainer_options), device=device, overrides=overrides)
        trainer.current_epoch = args.epoch
        for method in trainer.methods:
            method.on_epoch_start(args.epoch, trainer.progress.curves)
        trainer.network.train()
        trainers[name] = trainer
    return trainers


def draw_batches(trainer: Trainer, count: int, num_workers: int, seed: int) -> list[dict[str, Any]]:
    """``count`` augmented training batches of the reference trainer's loader (uniform cases)."""
    job, settings = trainer.job, trainer.settings
    loader = make_training_loader(job.cache, job.train_case_ids, job.configuration, mirror_axes=trainer.mirror_axes,
                                  batch_size=settings.batch_size or job.configuration.batch_size,
                                  oversample_foreground_percent=settings.oversample_foreground_percent,
                                  num_workers=num_workers, seed=seed)
    try:
        return [next(loader) for _ in range(count)]
    finally:
        loader.close()


def timed_step(trainer: Trainer, batch: dict[str, Any], device: torch.device) -> dict[str, float | None]:
    """Seconds of one ``train_step`` and, on CUDA, its peak and own memory in MiB."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    trainer.train_step(batch)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if not cuda:
        return {"seconds": seconds, "peak_mib": None, "step_mib": None}
    peak = torch.cuda.max_memory_allocated(device)
    return {"seconds": seconds, "peak_mib": peak / common.MIB, "step_mib": (peak - before) / common.MIB}


def measure(trainers: dict[str, Trainer], batches: list[dict[str, Any]], warmup: int, order: str,
            device: torch.device) -> dict[str, list[dict[str, float | None]]]:
    """Per trainer, one record per timed iteration (the first ``warmup`` iterations are dropped)."""
    names = list(trainers)
    records: dict[str, list[dict[str, float | None]]] = {name: [] for name in names}
    if order == "sequential":
        schedule = [(name, index) for name in names for index in range(len(batches))]
    else:
        schedule = [(names[(index + shift) % len(names)], index) for index in range(len(batches))
                    for shift in range(len(names))]
    for name, index in schedule:
        record = timed_step(trainers[name], batches[index], device)
        if index >= warmup:
            records[name].append(record)
    return records


def summarise(records: dict[str, list[dict[str, float | None]]]) -> list[dict[str, Any]]:
    rows = []
    for name, steps in records.items():
        seconds = [float(step["seconds"]) for step in steps]
        peaks = [step["peak_mib"] for step in steps if step["peak_mib"] is not None]
        own = [step["step_mib"] for step in steps if step["step_mib"] is not None]
        rows.append({"trainer": name, "timed_its": len(seconds), "s_per_it": statistics.fmean(seconds),
                     "median_s": statistics.median(seconds), "min_s": min(seconds),
                     "std_s": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
                     "peak_mib": max(peaks) if peaks else None, "step_mib": max(own) if own else None,
                     "seconds": seconds})
    reference = next(row for row in rows if row["trainer"] == REFERENCE)
    for row in rows:
        row["overhead_%"] = 100.0 * (row["s_per_it"] / reference["s_per_it"] - 1.0)
        row["overhead_median_%"] = 100.0 * (row["median_s"] / reference["median_s"] - 1.0)
    return rows


def write_outputs(folder: Path, rows: list[dict[str, Any]], metadata: dict[str, Any]) -> dict[str, Path]:
    """``trainer_overhead.{json,csv,md}`` in ``folder`` (``common.write_results``: atomic)."""
    return common.write_results(folder, "trainer_overhead", rows, TABLE_COLUMNS, metadata)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warning = common.busy_machine_warning()
    if warning:
        print(warning, file=sys.stderr)
    context = DistributedContext()
    device = resolve_device(args.device, context)
    threads = configure_threads(device, context)
    home = DataHome.resolve(args.home)
    trainers = build_trainers(args, home, device)
    reference = trainers[REFERENCE]
    batches = draw_batches(reference, args.warmup + args.iterations, args.num_workers, args.seed)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    records = measure(trainers, batches, args.warmup, args.order, device)
    rows = summarise(records)
    shape = list(batches[0]["data"].shape)
    precision = "fp16 autocast" if device.type == "cuda" else ("bf16 autocast" if reference.cpu_bf16 else "fp32")
    metadata = {
        "benchmark": "trainer_overhead", "date": started, "dataset_name": home.find_dataset(args.dataset), "configuration": args.configuration, "plans": args.plans,
        "network": args.network, "batch_shape": shape, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "precision": precision, "threads": threads, "order": args.order, "epoch": args.epoch, "epochs": args.epochs,
        "trainer_options": args.trainer_options, "torch": torch.__version__, "machine": platform.node(),
        "cpu_count": os.cpu_count(), "load_average_1min_after": os.getloadavg()[0],
        "method_options": {name: {type(m).__name__: m.options for m in trainer.methods} for name, trainer in trainers.items()},
    }
    paths = write_outputs(args.work, rows, metadata)
    print(f"\ntrainer overhead: {metadata['dataset_name']} {args.configuration}, batch {'x'.join(map(str, shape))}, "
          f"{device} ({precision}, {threads} thread(s)), {args.iterations} timed + {args.warmup} warm-up iterations "
          f"per trainer, {args.order}, methods at epoch {args.epoch} of {args.epochs}\n")
    print(common.markdown_table(rows, TABLE_COLUMNS))
    print(f"\nresults written to {paths['json']} (.csv, .md)")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (BenchmarkError, MedsegError) as error:
        print(f"trainer_overhead.py: error: {error}", file=sys.stderr)
        raise SystemExit(2)
