"""``medseg-auto``: the single entry point. Each subcommand lives in its own module that
exposes ``register(subparsers)``; ``COMMAND_MODULES`` lists them in pipeline order."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from medseg_auto import __version__
from medseg_auto.cli.aliases import StrictArgumentParser, add_aliases
from medseg_auto.cli.common import HelpFormatter
from medseg_auto.errors import MedsegError
from medseg_auto.utils.disk import describe_os_error

COMMAND_MODULES = (
    "medseg_auto.cli.import_msd_command",
    "medseg_auto.cli.import_folder_command",
    "medseg_auto.cli.verify_command", "medseg_auto.cli.merge_command",
    "medseg_auto.cli.plan_command", "medseg_auto.cli.export_plans_command",
    "medseg_auto.cli.train_command", "medseg_auto.cli.trainers_command",
    "medseg_auto.cli.predict_command", "medseg_auto.cli.export_command",
    "medseg_auto.cli.evaluate_command", "medseg_auto.cli.compare_command",
    "medseg_auto.cli.feature_discrepancy_command",
    "medseg_auto.cli.find_best_command", "medseg_auto.cli.ensemble_command", "medseg_auto.cli.report_command",
    "medseg_auto.cli.experiment_command",
    "medseg_auto.cli.demo_command",
)

DESCRIPTION = """\
Self-configuring medical image segmentation with domain-adaptation trainers.

Pipeline: import -> plan_and_preprocess -> train -> predict -> evaluate.

examples:
  medseg-auto demo                                     # synthetic data, whole pipeline
  medseg-auto import-msd ../shared/data/hippocampus --name Hippocampus
  medseg-auto plan_and_preprocess Hippocampus -np 2
  medseg-auto verify Hippocampus
"""


def build_parser() -> argparse.ArgumentParser:
    parser = StrictArgumentParser(prog="medseg-auto", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"medseg_auto {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    add_aliases(parser)  # nnU-Net's spellings, and _/- spellings of every command
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        return int(args.handler(args) or 0)
    except MedsegError as error:
        print(f"medseg-auto {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # full disk, read-only or missing folder: the machine's state, not a bug
        if getattr(args, "verbose", False):
            raise
        print(f"medseg-auto {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medseg-auto {args.command}: interrupted; completed work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
