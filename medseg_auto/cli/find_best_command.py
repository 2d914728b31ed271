"""``medseg-auto find_best_configuration``: choose the model (or ensemble) and post-processing
for inference from the cross-validation of the trained runs."""

from __future__ import annotations

import argparse

from medseg_auto.cli.common import (
    HelpFormatter, add_home_argument, add_logging_arguments, add_processes_argument, resolve_home, start_log,
)
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("cli.find_best")

DESCRIPTION = """\
Compare every trained TRAINER__PLANS__CONFIG of a dataset by its cross-validation (the
validation predictions of all folds, pooled and scored against labelsTr), and every pairwise
ensemble of them (average of the folds' .npz probabilities: train with --npz), then pick the
highest foreground-mean Dice (a tie goes to the single model) and decide post-processing on
its cross-validation predictions, by nnU-Net's rule: keep the largest connected component of
the foreground union if the mean Dice improves and no class gets worse; then, per label, keep
its largest component if that label's Dice improves.

Writes, under results/DatasetNNN_Name/:
  TRAINER__PLANS__CONFIG/crossval_results/     pooled predictions, summary.json, metrics.csv
  ensembles/ensemble___A___B/                  the same for each ensemble
  postprocessing.json                          next to the winner's folds (predict applies it),
                                               or in the winning ensemble's folder
  inference_information.json                   all candidates, their Dice, the decision
  inference_instructions.txt                   the exact commands to run on new images
  logs/find_best_configuration_*.txt           this run's log

A run missing one of the requested folds is left out (listed with the reason).

examples:
  medseg-auto find_best_configuration Hippocampus
  medseg-auto find_best_configuration Hippocampus -c 2d 3d_fullres -tr Base NoMirroring
  medseg-auto find_best_configuration Hippocampus -c 3d_fullres -f 0 1 --no-ensembles
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("find_best_configuration", formatter_class=HelpFormatter, description=DESCRIPTION,
                                   help="pick the best configuration/ensemble and its post-processing")
    parser.add_argument("dataset", metavar="NAME", help="dataset name, id or folder name")
    parser.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres", "3d_lowres"],
                        help="configurations to compare (untrained ones are skipped)")
    parser.add_argument("-tr", "--trainers", nargs="+", default=["Base"], help="trainers to compare")
    parser.add_argument("-p", "--plans", default="plans", help="plans name")
    parser.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds whose validation forms the cross-validation")
    parser.add_argument("--no-ensembles", action="store_true", help="compare single models only")
    add_processes_argument(parser)
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.evaluation.find_best import find_best_configuration

    home = resolve_home(args)
    log_file = start_log(home.results_dataset(args.dataset), "find_best_configuration", args)
    result = find_best_configuration(
        home, args.dataset, configurations=args.configurations, trainers=args.trainers, plans_name=args.plans,
        folds=args.folds, allow_ensembles=not args.no_ensembles, num_processes=args.num_processes,
    )
    print(result.instructions, end="")
    log.info("wrote %s, %s, %s; log: %s", result.postprocessing_file, result.information_file,
             result.instructions_file, log_file)
    return 0
