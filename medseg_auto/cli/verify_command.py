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

Duplicates: exact (same pixels) and near-duplicate cases (a 64-bit perceptual hash of the
first channel's middle slice, imagehash's pHash, or a built-in dHash without imagehash; the
report names the one used) are listed as warnings with their clusters in verify_report.json
("duplicates"). Experiment splits ('experiment methods') keep each cluster, and the cases of
one patient (an optional "groups" map in dataset.json), on one side of a split.

examples:
  medseg-auto verify Hippocampus
  medseg-auto verify 501 -np 8 --home /data/medseg
  medseg-auto verify BUSI --duplicate-distance 4     # stricter near-duplicate threshold
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify", help="check a raw dataset and list all problems",
                                   description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("name", metavar="NAME", help="dataset name, id, or DatasetNNN_Name folder name")
    parser.add_argument("--duplicate-distance", type=int, default=None, metavar="BITS",
                        help="near duplicates: perceptual hashes at most BITS of 64 apart (default: 8)")
    parser.add_argument("--no-duplicates", action="store_true", help="skip the duplicate search")
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
        duplicates = None if args.no_duplicates else _duplicates(spec, args, logger)
    except DatasetError as error:
        problems, num_cases, duplicates = [Problem(None, str(folder / "dataset.json"), str(error))], 0, None
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
        **({"duplicates": duplicates.to_json()} if duplicates is not None else {}),
    })
    verdict = "FAILED" if errors else "OK"
    logger.info("%s: %s, %d error(s), %d warning(s); report: %s", folder.name, verdict, len(errors), len(warnings), report)
    return 2 if errors else 0


def _duplicates(spec: DatasetSpec, args: argparse.Namespace, logger: logging.Logger):
    from medseg_auto.dataset.duplicates import DEFAULT_MAX_DISTANCE, find_duplicates

    distance = DEFAULT_MAX_DISTANCE if args.duplicate_distance is None else args.duplicate_distance
    report = find_duplicates(spec, distance, args.num_processes, show_progress=not args.no_progress)
    exact_cases = sum(len(cluster) for cluster in report.exact)
    logger.info("duplicates (%s, near = at most %d bits apart): %d exact-duplicate case(s) in %d cluster(s); "
                "%d case(s) with a near duplicate in %d cluster(s) (%d redundant)", report.method, distance,
                exact_cases, len(report.exact), report.num_duplicate_cases, len(report.near),
                report.num_redundant_cases)
    if report.label_conflicts:
        shown = "; ".join(" vs ".join(c["cases"]) for c in report.label_conflicts[:WARNING_CASES_SHOWN])
        logger.warning("warning: %d duplicate pair(s) with disagreeing label maps (one empty, or foreground Dice < 0.5): %s%s",
                       len(report.label_conflicts), shown,
                       " ..." if len(report.label_conflicts) > WARNING_CASES_SHOWN else "")
    for cluster in report.near[:WARNING_CASES_SHOWN]:
        logger.warning("warning: near-duplicate cases: %s", ", ".join(cluster))
    if len(report.near) > WARNING_CASES_SHOWN:
        logger.warning("warning: %d more near-duplicate cluster(s) in the report", len(report.near) - WARNING_CASES_SHOWN)
    return report


def _group_by_message(problems: list[Problem]) -> dict[str, list[Problem]]:
    grouped: dict[str, list[Problem]] = defaultdict(list)
    for problem in problems:
        grouped[problem.message].append(problem)
    return grouped
