#!/usr/bin/env python3
"""Parameters and seconds per iteration of registered networks (``--network``) on one configuration.

Every network named by ``--networks`` is built from the same configuration and trained by the
``Base`` trainer's own ``Trainer.train_step`` (forward with deep supervision, Dice+CE, backward,
clipping, SGD; the trainer's precision: fp16 autocast + GradScaler on CUDA, bf16 autocast on
CPU) on the *same* random batches, interleaved every iteration with the order rotating, so a
noisy neighbour hits every network alike. Then the same for inference: one forward pass in
eval mode without gradients (the sliding-window cost per patch). Batch content does not change
the cost of a dense network, so random images and labels of the configuration's shape stand in
for data: no dataset is read, and the configuration can be a real plans file or a shape.

``benchmarks/trainer_overhead.py`` compares *trainers* on one network; this script compares
*networks* under one trainer (``disseg`` against the plain ``dynunet`` first of all).

Columns: ``params`` (unique parameters), ``params_vs_first_%``; ``train_s`` mean seconds per
training step, ``train_median_s``, ``train_overhead_%`` (mean / first network's mean - 1);
``infer_s`` and ``infer_overhead_%`` likewise for one eval forward of the batch; on CUDA
``train_peak_mib`` (peak allocated during a step, weights included).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import common
from common import BenchmarkError

from medseg_auto.errors import MedsegError
from medseg_auto.paths import DataHome
from medseg_auto.planning.plans import ConfigurationPlan, NetworkPlan, Plans, ResamplingPlan
from medseg_auto.planning.presets import PlannerPreset
from medseg_auto.planning.topology import pool_and_conv_props
from medseg_auto.training.distributed import DistributedContext, configure_threads, resolve_device
from medseg_auto.training.network_registry import available_networks
from medseg_auto.training.registry import get_trainer
from medseg_auto.training.trainer import Trainer, TrainingJob

TABLE_COLUMNS = ("network", "params", "params_vs_first_%", "train_s", "train_median_s", "train_overhead_%",
                 "infer_s", "infer_overhead_%", "train_peak_mib")

EXAMPLES = """\
examples:
  # the plans of a preprocessed dataset
  .venv/bin/python benchmarks/network_cost.py --home medseg_auto_data --dataset BreastUS --plans plans_cpu_coarse \\
      --configuration 2d

  # a configuration given by its shape (topology and widths as the default planner makes them)
  .venv/bin/python benchmarks/network_cost.py --patch 128 160 --batch-size 10 --classes 2
  .venv/bin/python benchmarks/network_cost.py --patch 128 128 128 --batch-size 2 --classes 3 --device cuda

  # a smoke run on one thread
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/network_cost.py --patch 32 32 --batch-size 2 --iterations 2 --warmup 1

Results: WORK/network_cost.{json,csv,md} (WORK defaults to benchmarks/_work/network_cost).
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the examples' line breaks and show defaults."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="network_cost.py", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=HelpFormatter)
    source = parser.add_argument_group("configuration: a preprocessed dataset's plans, or a shape")
    source.add_argument("--home", default=None, help="data home (default: $MEDSEG_AUTO_HOME or ./medseg_auto_data)")
    source.add_argument("--dataset", default=None, help="dataset name, id or folder name")
    source.add_argument("--plans", default="plans", help="plans name")
    source.add_argument("--configuration", default="2d", help="configuration of the plans")
    source.add_argument("--patch", type=int, nargs="+", default=None, help="patch size (2 or 3 numbers) instead of plans")
    source.add_argument("--spacing", type=float, nargs="+", default=None, help="spacing of --patch (default: 1 per axis)")
    source.add_argument("--batch-size", type=int, default=None, help="batch size (required with --patch; overrides plans)")
    source.add_argument("--classes", type=int, default=2, help="classes including background (with --patch)")
    source.add_argument("--channels", type=int, default=1, help="input channels (with --patch)")
    parser.add_argument("--networks", nargs="+", default=["dynunet", "disseg"], help="registered networks; first = reference")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per network")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per network first")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device")
    parser.add_argument("--no-bf16", action="store_true", help="float32 on CPU instead of bf16 autocast")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the networks and the batches")
    parser.add_argument("--work", type=Path, default=common.repo_root() / "benchmarks" / "_work" / "network_cost",
                        help="output folder")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    if (args.patch is None) == (args.dataset is None):
        parser.error("give either --dataset (plans of a preprocessed dataset) or --patch (a shape)")
    if args.patch is not None and (len(args.patch) not in (2, 3) or args.batch_size is None):
        parser.error("--patch needs 2 or 3 numbers and --batch-size")
    unknown = [name for name in args.networks if name not in available_networks()]
    if unknown:
        parser.error(f"unknown network(s) {unknown}; available: {', '.join(available_networks())}")
    return args


def shape_plans(args: argparse.Namespace) -> Plans:
    """Plans with one configuration for ``--patch``: the default planner's topology and widths."""
    dims = len(args.patch)
    spacing = args.spacing or [1.0] * dims
    preset = PlannerPreset()
    topology = pool_and_conv_props(spacing, args.patch, preset.featuremap_min_edge_length)
    limit = preset.max_features_2d if dims == 2 else preset.max_features_3d
    n = topology.n_stages
    configuration = ConfigurationPlan(
        name=args.configuration, data_identifier="network_cost", spacing=list(spacing),
        patch_size=list(topology.patch_size), median_image_size_in_voxels=[float(p) for p in topology.patch_size],
        batch_size=args.batch_size, batch_dice=dims == 2, normalization_schemes=["ZScoreNormalization"] * args.channels,
        use_mask_for_norm=[False] * args.channels, resampling_data=ResamplingPlan(order=3),
        resampling_seg=ResamplingPlan(order=1), resampling_probabilities=ResamplingPlan(order=1),
        network=NetworkPlan(n_stages=n, features_per_stage=[min(limit, preset.base_num_features * 2**s) for s in range(n)],
                            kernel_sizes=topology.kernel_sizes, strides=topology.strides,
                            n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1)),
        is_2d=dims == 2,
    )
    labels = {"background": 0, **{f"class_{k}": k for k in range(1, args.classes)}}
    return Plans(dataset_name="shape", plans_name="network_cost", preset="default", transpose_forward=list(range(3)),
                 transpose_backward=list(range(3)), original_median_spacing_after_transp=[1.0] * 3,
                 original_median_shape_after_transp=[1.0] * 3, foreground_intensity_properties_per_channel={},
                 configurations={args.configuration: configuration}, num_input_channels=args.channels, labels=labels)


def load_plans(args: argparse.Namespace) -> Plans:
    if args.patch is not None:
        return shape_plans(args)
    home = DataHome.resolve(args.home)
    plans_file = home.preprocessed_dataset(home.find_dataset(args.dataset)) / f"{args.plans}.json"
    if not plans_file.is_file():
        raise BenchmarkError(f"{plans_file}: no plans; run 'medseg-auto plan_and_preprocess {args.dataset}' first")
    return Plans.load(plans_file)


def build_trainers(args: argparse.Namespace, plans: Plans, device: torch.device, scratch: Path) -> dict[str, Trainer]:
    """A Base trainer per network, same seed; nothing is written (no epoch ends)."""
    overrides: dict[str, Any] = {"cpu_bf16": not args.no_bf16}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    trainers = {}
    for name in args.networks:
        job = TrainingJob(plans=plans, configuration_name=args.configuration, cache=None, train_case_ids=[],
                          val_case_ids=[], sites={}, output_folder=scratch / name, trainer_name="Base",
                          seed=args.seed, network_name=name)
        trainers[name] = Trainer(job, get_trainer("Base").create_methods(), device=device, overrides=overrides)
    return trainers


def random_batches(plans: Plans, configuration: str, batch_size: int, count: int, seed: int) -> list[dict[str, Any]]:
    config = plans.configuration(configuration)
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, plans.num_input_channels, *config.patch_size)
    return [{"data": torch.randn(shape, generator=generator),
             "target": torch.randint(plans.num_classes, (batch_size, 1, *config.patch_size), generator=generator),
             "case_ids": ["random"] * batch_size, "sites": [None] * batch_size} for _ in range(count)]


def timed(device: torch.device, work) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(trainers: dict[str, Trainer], batches: list[dict[str, Any]], warmup: int,
            device: torch.device) -> dict[str, dict[str, list[float]]]:
    """Per network: training-step seconds, inference seconds and (CUDA) peak MiB, warm-up dropped."""
    names = list(trainers)
    records = {name: {"train": [], "infer": [], "peak": []} for name in names}
    for index, batch in enumerate(batches):
        for shift in range(len(names)):
            name = names[(index + shift) % len(names)]
            trainer = trainers[name]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            trainer.network.train()
            train_seconds = timed(device, lambda: trainer.train_step(batch))
            peak = torch.cuda.max_memory_allocated(device) / common.MIB if device.type == "cuda" else None
            trainer.network.eval()
            data = batch["data"].to(device)

            def infer() -> None:
                with torch.no_grad(), trainer.autocast():
                    trainer.network(data)

            infer_seconds = timed(device, infer)
            if index >= warmup:
                records[name]["train"].append(train_seconds)
                records[name]["infer"].append(infer_seconds)
                if peak is not None:
                    records[name]["peak"].append(peak)
    return records


def summarise(trainers: dict[str, Trainer], records: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    rows = []
    for name, trainer in trainers.items():
        train, infer = records[name]["train"], records[name]["infer"]
        rows.append({"network": name, "params": sum(p.numel() for p in trainer.network.parameters()),
                     "train_s": statistics.fmean(train), "train_median_s": statistics.median(train),
                     "infer_s": statistics.fmean(infer), "infer_median_s": statistics.median(infer),
                     "train_peak_mib": max(records[name]["peak"]) if records[name]["peak"] else None,
                     "train_seconds": train, "infer_seconds": infer})
    first = rows[0]
    for row in rows:
        row["params_vs_first_%"] = 100.0 * (row["params"] / first["params"] - 1.0)
        row["train_overhead_%"] = 100.0 * (row["train_s"] / first["train_s"] - 1.0)
        row["infer_overhead_%"] = 100.0 * (row["infer_s"] / first["infer_s"] - 1.0)
    return rows


def write_outputs(folder: Path, rows: list[dict[str, Any]], metadata: dict[str, Any]) -> dict[str, Path]:
    """``network_cost.{json,csv,md}`` in ``folder`` (``common.write_results``: atomic)."""
    return common.write_results(folder, "network_cost", rows, TABLE_COLUMNS, metadata)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warning = common.busy_machine_warning()
    if warning:
        print(warning, file=sys.stderr)
    context = DistributedContext()
    device = resolve_device(args.device, context)
    threads = configure_threads(device, context)
    plans = load_plans(args)
    configuration = plans.configuration(args.configuration)
    batch_size = args.batch_size or configuration.batch_size
    with tempfile.TemporaryDirectory() as scratch:
        trainers = build_trainers(args, plans, device, Path(scratch))
        batches = random_batches(plans, args.configuration, batch_size, args.warmup + args.iterations, args.seed)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        records = measure(trainers, batches, args.warmup, device)
    rows = summarise(trainers, records)
    reference = next(iter(trainers.values()))
    precision = "fp16 autocast" if device.type == "cuda" else ("bf16 autocast" if reference.cpu_bf16 else "fp32")
    shape = [batch_size, plans.num_input_channels, *configuration.patch_size]
    metadata = {
        "benchmark": "network_cost", "date": started, "source": args.dataset or "shape", "plans": args.plans,
        "configuration": args.configuration, "batch_shape": shape, "classes": plans.num_classes,
        "features_per_stage": configuration.network.features_per_stage, "strides": configuration.network.strides,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "precision": precision, "threads": threads, "iterations": args.iterations, "warmup": args.warmup,
        "torch": torch.__version__, "machine": platform.node(), "cpu_count": os.cpu_count(),
        "load_average_1min_after": os.getloadavg()[0],
    }
    paths = write_outputs(args.work, rows, metadata)
    print(f"\nnetwork cost: {metadata['source']} {args.configuration}, batch {'x'.join(map(str, shape))}, "
          f"features {configuration.network.features_per_stage}, {device} ({precision}, {threads} thread(s)), "
          f"{args.iterations} timed + {args.warmup} warm-up iterations per network, interleaved\n")
    print(common.markdown_table(rows, TABLE_COLUMNS))
    print(f"\nresults written to {paths['json']} (.csv, .md)")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (BenchmarkError, MedsegError) as error:
        print(f"network_cost.py: error: {error}", file=sys.stderr)
        raise SystemExit(2)
