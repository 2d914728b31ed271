"""Command-line options for where experiment cells run (:mod:`medseg_auto.experiments.executor`),
shared by every ``experiment`` subcommand."""

from __future__ import annotations

import argparse
import json

from medseg_auto.errors import MedsegError

EXECUTOR_HELP = """\
where the cells run:
  --executor local            (default) one after another in this process; -j N: N processes side by side
  --executor slurm            one SLURM job per cell through submitit (a job array of -j at a time)
  --executor submitit-local   submitit on this machine, one process per cell (tests the SLURM path)
examples:
  ... -j 2                                                 # two cells at a time, half the cores each
  ... --executor slurm --slurm-partition gpu --gpus-per-cell 1 --cpus-per-cell 8 --mem-gb 32 -j 20
"""


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("executor", EXECUTOR_HELP)
    group.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                       help="backend for the cells")
    group.add_argument("-j", "--jobs", type=int, default=1,
                       help="cells at a time: local processes (each with cores/j threads) or SLURM array jobs")
    group.add_argument("--slurm-partition", default=None, help="SLURM partition for the cell jobs")
    group.add_argument("--gpus-per-cell", type=int, default=0, help="GPUs per cell job (SLURM)")
    group.add_argument("--cpus-per-cell", type=int, default=None, help="CPU cores per cell job (SLURM)")
    group.add_argument("--mem-gb", type=float, default=None, help="memory per cell job in GB (SLURM)")
    group.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit per cell job in minutes")
    group.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other submitit SLURM parameter without its slurm_ prefix, e.g. account=abc, "
                            "qos=high (repeatable)")


def executor_settings(args: argparse.Namespace):
    """The :class:`ExecutorSettings` the options describe."""
    from medseg_auto.experiments.executor import ExecutorSettings

    extra = {}
    for value in args.slurm_option:
        key, separator, raw = value.partition("=")
        if not separator or not key.strip():
            raise MedsegError(f"--slurm-option {value!r}: expected KEY=VALUE, e.g. --slurm-option account=abc")
        try:
            extra[f"slurm_{key.strip()}"] = json.loads(raw)
        except ValueError:
            extra[f"slurm_{key.strip()}"] = raw
    return ExecutorSettings(
        backend=args.executor, jobs=args.jobs, slurm_partition=args.slurm_partition, gpus_per_cell=args.gpus_per_cell,
        cpus_per_cell=args.cpus_per_cell, mem_gb=args.mem_gb, timeout_min=args.timeout_min, slurm_extra=extra,
    )
