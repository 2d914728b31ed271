"""``medseg-auto verify``: check a raw dataset and list every problem."""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict

from medseg_auto.cli.common import (
    HelpFormatter, add_home_argument, add_logging_arguments, add_processes_argument, resolve_home, start_log,
)
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.verify import ERROR, WARNING, Problem, verify_dataset
from medseg_auto.errors import DatasetError
from medseg_auto.utils.atomic import write_json_atomic

REPORT_NAME = "verify_report.json"
WARNING_CASES_SHOWN = 8

DESCRIPTION = """\
Check every case of a raw dataset: files readable, channel count, image/label shape and
geometry (spacing, origin, direction), label values declared in dataset.json, no NaN/inf,
numTraining, labels present. All problems are listed (not just the first) and written to
verify_report.json in preprocessed/DatasetNNN_NAME/ of the data home (the raw dataset is only
read, so a read-only raw tree works). Empty masks are warnings. Exit code 2 on errors.

examples:
  medseg-auto verify Hippocampus
  medseg-auto verify 501 -np 8 --home /data/medseg
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify", help="check a raw dataset and list all problems",
                                   description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("name", metavar="NAME", help="dataset name, id, or DatasetNNN_Name folder name")
    add_processes_argument(parser)
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    home = resolve_home(args)
    folder = home.raw_dataset(args.name)
    # The raw dataset is only read (it may be a read-only nnU-Net raw tree): log and report go
    # to the dataset's folder in preprocessed/, where the data home keeps what it derives.
    output = home.preprocessed_dataset(args.name)
    start_log(output, "verify", args)
    logger = logging.getLogger("medseg_auto.verify")
    try:
        spec = DatasetSpec.load(folder)
        problems = verify_dataset(spec, args.num_processes, show_progress=not args.no_progress)
        num_cases = spec.num_training
    except DatasetError as error:
        problems, num_cases = [Problem(None, str(folder / "dataset.json"), str(error))], 0
    errors = [p for p in problems if p.severity == ERROR]
    warnings = [p for p in problems if p.severity == WARNING]
    for problem in errors:
        logger.error("%s", problem)
    for message, grouped in _group_by_message(warnings).items():
        names = [p.case or p.file for p in grouped]
        shown = ", ".join(str(n) for n in names[:WARNING_CASES_SHOWN])
        more = f" and {len(names) - WARNING_CASES_SHOWN} more" if len(names) > WARNING_CASES_SHOWN else ""
        logger.warning("warning: %d x %s: %s%s", len(grouped), message, shown, more)
    report = output / REPORT_NAME
    write_json_atomic(report, {
        "dataset": folder.name, "num_cases": num_cases, "errors": len(errors), "warnings": len(warnings),
        "problems": [p.to_json() for p in problems],
    })
    verdict = "FAILED" if errors else "OK"
    logger.info("%s: %s, %d error(s), %d warning(s); report: %s", folder.name, verdict, len(errors), len(warnings), report)
    return 2 if errors else 0


def _group_by_message(problems: list[Problem]) -> dict[str, list[Problem]]:
    grouped: dict[str, list[Problem]] = defaultdict(list)
    for problem in problems:
        grouped[problem.message].append(problem)
    return grouped
