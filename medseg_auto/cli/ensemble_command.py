"""``medseg-auto ensemble``: average the probabilities of several prediction folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg_auto.cli.common import HelpFormatter, add_logging_arguments, start_log
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("cli.ensemble")

DESCRIPTION = """\
Ensemble the predictions of several models: for every case with CASE.npz in each input folder
(written by 'predict --save-probabilities'), average the class probabilities, take the argmax,
and write CASE.<ext> with the geometry and format of the first folder's label file of that
case. Optionally apply a postprocessing.json (as find_best_configuration writes for an
ensemble). Log: OUT/logs/.

examples:
  medseg-auto predict -i scans/ -o pred_2d -d Hippocampus -c 2d --save-probabilities
  medseg-auto predict -i scans/ -o pred_3d -d Hippocampus -c 3d_fullres --save-probabilities
  medseg-auto ensemble -i pred_2d pred_3d -o pred_ensemble
  medseg-auto ensemble -i pred_2d pred_3d -o pred_ensemble \\
      --postprocessing results/Dataset004_Hippocampus/ensembles/ensemble___A___B/postprocessing.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ensemble", formatter_class=HelpFormatter, description=DESCRIPTION,
                                   help="average .npz probabilities of several prediction folders")
    parser.add_argument("-i", "--inputs", nargs="+", required=True, type=Path, metavar="DIR",
                        help="prediction folders with CASE.npz (at least two)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="output folder")
    parser.add_argument("--postprocessing", type=Path, default=None, metavar="JSON",
                        help="postprocessing.json to apply to the ensembled label maps")
    parser.add_argument("--save-probabilities", action="store_true", help="also write the averaged CASE.npz")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes")
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.inference.ensemble_folders import EnsembleError, ensemble_folders
    from medseg_auto.inference.postprocessing import PostprocessingPlan
    from medseg_auto.utils.atomic import read_json

    log_file = start_log(args.output, "ensemble", args)
    postprocess = None
    if args.postprocessing is not None:
        if not args.postprocessing.is_file():
            raise EnsembleError(f"{args.postprocessing}: postprocessing file not found")
        try:
            postprocess = PostprocessingPlan.from_json(read_json(args.postprocessing))
        except (ValueError, TypeError, AttributeError) as error:
            raise EnsembleError(f"{args.postprocessing}: not a postprocessing.json ({error})") from error
        log.info("post-processing from %s: %s", args.postprocessing, postprocess.to_json())
    cases = ensemble_folders(args.inputs, args.output, postprocess, args.save_probabilities, args.num_processes,
                             show_progress=not args.no_progress)
    log.info("%d case(s) -> %s; log: %s", len(cases), args.output, log_file)
    return 0
