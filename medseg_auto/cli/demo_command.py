"""``medseg-auto demo``: synthetic two-site data through every stage built so far.

The work is in :mod:`medseg_auto.demo`; this module only parses arguments and logs.
"""

from __future__ import annotations

import argparse
import os

from medseg_auto.cli.common import HelpFormatter, add_logging_arguments, add_processes_argument, start_log
from medseg_auto.demo import DATASET_NAMES, DEMO_HOME, SUMMARY_FILE_NAME, format_summary, run_demo
from medseg_auto.paths import HOME_ENV, DataHome

DESCRIPTION = f"""\
Write two small synthetic two-site datasets ({DATASET_NAMES[2]}, {DATASET_NAMES[3]}) and run
every pipeline stage on them, in order: verify, plan_and_preprocess, baseline (the untrained
network scored on held-out cases), train, predict and evaluate (the trained model on the same
held-out cases). The summary prints the Dice before and after training. Datasets already in
the home are reused. The demo uses its own home, ./{DEMO_HOME},
unless --home or ${HOME_ENV} is given, so it stays apart from real data. A summary is
printed and written to {SUMMARY_FILE_NAME} in the home.

examples:
  medseg-auto demo                                   # both datasets, 6 cases per site
  medseg-auto demo --dimension 2 --cases-per-site 3 -np 2
  medseg-auto demo --home /tmp/demo --keep           # reuse earlier preprocessed output
  medseg-auto demo --dimension 3 --epochs 20         # train the 3D model longer
"""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the pipeline on synthetic two-site data", description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--home", default=None,
                        help=f"data home for the demo (default: ${HOME_ENV} or ./{DEMO_HOME})")
    parser.add_argument("--dimension", type=int, nargs="+", choices=sorted(DATASET_NAMES), default=[2, 3],
                        help="which synthetic datasets to run: 2 (PNG), 3 (NIfTI), or both")
    parser.add_argument("--cases-per-site", type=positive_int, default=6,
                        help="cases per site when writing a dataset (two sites; ignored when reusing one)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="training epochs for every dataset (default: each dimension's demo budget)")
    parser.add_argument("--iterations", type=positive_int, default=None, help="training iterations per epoch")
    add_processes_argument(parser)
    parser.add_argument("--keep", action="store_true",
                        help="keep the demo datasets' earlier preprocessed/ and results/ folders "
                             "(default: delete them so every stage runs again)")
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    home = DataHome.resolve(args.home or os.environ.get(HOME_ENV) or DEMO_HOME)
    log_file = start_log(home.root, "demo", args)
    summary = run_demo(
        home, dimensions=args.dimension, cases_per_site=args.cases_per_site,
        num_processes=args.num_processes, show_progress=not args.no_progress,
        keep_outputs=args.keep, log_file=log_file, epochs=args.epochs, iterations=args.iterations,
    )
    print(format_summary(summary))
    return 0 if summary["ok"] else 1
