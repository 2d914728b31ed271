#!/usr/bin/env python3
"""Where our training time goes: waiting for data, forward, loss, backward, clipping, SGD step.

Trains a few epochs of a few iterations with our base trainer (Hippocampus 3d_fullres by
default) under ``_train_driver.py --phases``, which times each phase of every training
iteration with ``time.perf_counter`` from outside the package (on a CPU every op is synchronous,
so wall time of a phase is its cost):

| phase | what is timed |
|---|---|
| data wait | the main loop waiting in ``next(loader)`` for an augmented batch |
| forward | the network's forward (forward pre-hook to forward hook) |
| loss | the deep-supervised Dice + CE loss module (its forward hooks) |
| backward | ``Tensor.backward`` |
| grad clipping | ``torch.nn.utils.clip_grad_norm_`` |
| optimizer step | ``optimizer.step`` (step pre- and post-hooks) |
| other | the rest of ``train_step``: ``zero_grad``, ``.to(device)``, reading the loss |

The first epoch is warm-up and left out. ``--torch-profiler`` also records the first timed
epoch's iterations with ``torch.profiler`` and lists the operators that take the most CPU time
(the profiler costs microseconds per operator: nothing next to seconds per iteration).
``--nnunet`` profiles nnU-Net v2's ``nnUNetTrainer`` the same way, side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import common
import plan_preprocess
import train_throughput
from common import BenchmarkError
from plan_preprocess import DATASET_FOLDER, WorkLayout
from train_throughput import NNUNET_TOOL, OURS_FP32_TOOL, OURS_TOOL

PHASES = (("data wait", "wait_s"), ("forward", "forward_s"), ("loss", "loss_s"), ("backward", "backward_s"),
          ("grad clipping", "clip_s"), ("optimizer step", "optimizer_s"))
OPERATOR_ROWS = 15
OPERATOR_COLUMNS = ("tool", "operator", "calls_per_iteration", "self_cpu_s_per_iteration", "share_of_iteration_%")

EXAMPLES = """\
examples:
  # our base trainer, Hippocampus 3d_fullres, 2 epochs x 5 iterations (the first epoch is warm-up)
  .venv/bin/python benchmarks/profile_training.py

  # more iterations, the top operators from torch.profiler, and nnU-Net's trainer side by side
  .venv/bin/python benchmarks/profile_training.py --iterations 10 --torch-profiler --nnunet

  # float32 instead of the default bf16 autocast; 2D with batch 32
  .venv/bin/python benchmarks/profile_training.py --no-bf16
  .venv/bin/python benchmarks/profile_training.py -c 2d --batch-size 32

Results: WORK/profile_training.{json,csv,md} (and WORK/profile_training_operators.* with
--torch-profiler), the driver's per-iteration records in WORK/driver/, logs in WORK/logs/.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="profile_training.py", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=plan_preprocess.HelpFormatter)
    train_throughput.add_data_arguments(parser, "profile_training")
    parser.add_argument("-c", "--configuration", default="3d_fullres", choices=plan_preprocess.CONFIGURATIONS)
    train_throughput.add_training_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="replace the plans' batch size (default: the plans')")
    parser.add_argument("--no-bf16", action="store_true", help="train ours in float32 (default: bf16 autocast on CPU)")
    parser.add_argument("--torch-profiler", action="store_true", help="also list the top operators (torch.profiler)")
    parser.add_argument("--nnunet", action="store_true", help="profile nnU-Net v2's nnUNetTrainer too")
    args = parser.parse_args(argv)
    if args.epochs <= args.warmup_epochs:
        parser.error(f"--epochs {args.epochs} leaves nothing after {args.warmup_epochs} warm-up epoch(s)")
    args.skip_nnunet = not args.nnunet  # what train_throughput.run_metadata reads
    return args


def phase_means(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean seconds per iteration of each phase, ``other`` (rest of the step) and ``total``."""
    count = len(records)
    means = {key: sum(record[key] for record in records) / count for _, key in PHASES}
    step = sum(record["step_s"] for record in records) / count
    means["other_s"] = step - sum(means[key] for _, key in PHASES if key != "wait_s")
    means["total_s"] = step + means["wait_s"]
    return means


def phase_rows(results: dict[str, dict[str, float]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per phase, a seconds-per-iteration and a share column per tool."""
    names = [*PHASES, ("other (zero_grad, to(device), ...)", "other_s"), ("total", "total_s")]
    columns = ["phase"]
    for tool in results:
        columns += [f"{tool} s/it", f"{tool} share %"]
    rows = []
    for label, key in names:
        row: dict[str, Any] = {"phase": label}
        for tool, means in results.items():
            row[f"{tool} s/it"] = means[key]
            row[f"{tool} share %"] = 100.0 * means[key] / means["total_s"] if means["total_s"] else None
        rows.append(row)
    return rows, columns


def operator_rows(tool: str, result: dict[str, Any], total_s: float) -> list[dict[str, Any]]:
    return [{"tool": tool, **operator,
             "share_of_iteration_%": 100.0 * operator["self_cpu_s_per_iteration"] / total_s if total_s else None}
            for operator in result.get("operators", [])[:OPERATOR_ROWS]]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    layout = WorkLayout(args.work)
    cases = train_throughput.prepare_data(args, layout, need_ours=True, need_nnunet=args.nnunet)
    tools = ([NNUNET_TOOL] if args.nnunet else []) + [OURS_FP32_TOOL if args.no_bf16 else OURS_TOOL]
    extra = ["--phases", *(["--torch-profiler-epoch", str(args.warmup_epochs)] if args.torch_profiler else [])]
    means: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {}
    operators: list[dict[str, Any]] = []
    failed = False
    for tool in tools:
        result_path = layout.root / "driver" / f"profile_{args.configuration}_{tool.split()[0].replace('-', '')}.json"
        cmd, env = train_throughput.driver_run(
            tool, layout, args.configuration, args.nnunet_venv, result_path, epochs=args.epochs,
            iterations=args.iterations, val_iterations=args.val_iterations, num_workers=args.num_workers,
            batch_size=args.batch_size, threads=args.threads, extra=extra)
        measurement, result, load_before = train_throughput.measure_driver(tool, cmd, env, layout, result_path)
        records = train_throughput.timed_records(result, args.warmup_epochs)
        if not records:
            failed = True
            continue
        label = f"{tool} ({result.get('precision')})"
        means[label] = phase_means(records)
        operators += operator_rows(label, result, means[label]["total_s"])
        if result.get("operator_table"):
            table_file = layout.root / f"torch_profiler_{tool.split()[0].replace('-', '')}.txt"
            table_file.write_text(result["operator_table"])
        details[label] = {"command": " ".join(cmd), "environment": env, "measurement": measurement.as_dict(),
                          "load_before": load_before, "timed_iterations": len(records),
                          "batch_shapes": result.get("batch_shapes"), "threads": result.get("threads"),
                          "workers": result.get("workers")}
    if not means:
        raise BenchmarkError("no run produced timed iterations; see the logs in " + str(layout.logs))

    rows, columns = phase_rows(means)
    metadata = {**train_throughput.run_metadata(args, cases, "profile_training"), "runs": details}
    paths = common.write_results(layout.root, "profile_training", rows, columns, metadata)
    if operators:
        common.write_results(layout.root, "profile_training_operators", operators, OPERATOR_COLUMNS, metadata)
    shapes = next(iter(details.values()))["batch_shapes"]
    print(f"\ntraining time per iteration by phase, {DATASET_FOLDER} {args.configuration}, batch shape "
          f"{shapes.get('data') if shapes else '?'}, {args.epochs} epochs x {args.iterations} iterations, first "
          f"{args.warmup_epochs} epoch(s) not timed, {args.num_workers} data-augmentation process(es), "
          f"{args.threads} torch thread(s) on {os.cpu_count()} cores\n")
    print(common.markdown_table(rows, columns))
    if operators:
        print(f"\ntop {OPERATOR_ROWS} operators by self CPU time per iteration "
              f"(torch.profiler, epoch {args.warmup_epochs})\n")
        print(common.markdown_table(operators, OPERATOR_COLUMNS))
    print(f"\n1-minute load average after the runs: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"results written to {paths['json'].parent}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchmarkError as error:
        print(f"profile_training.py: error: {error}", file=sys.stderr)
        raise SystemExit(2)
