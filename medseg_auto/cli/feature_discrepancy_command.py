"""``medseg-auto feature-discrepancy``: per-case L_fd of a trained fold on the cases of an evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg_auto.cli.common import HelpFormatter, add_home_argument, add_logging_arguments, resolve_home, start_log
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("cli.feature_discrepancy")

DESCRIPTION = """\
Measure each case's feature discrepancy L_fd (Roy et al. eq. 1: -log of the distance between
the foreground and background feature means, on every encoder, bottleneck and decoder stage,
with the ground-truth mask) for the trained fold --model, on the cases of EVAL_FOLDER (the
folder 'medseg-auto evaluate' wrote, or an experiment cell's test_* folder). Writes
EVAL_FOLDER/per_case_l_fd.csv (case, l_fd = mean over layers, l_fd/<layer>), which
'medseg-auto compare' turns into a scatter plot of L_fd against Dice with Spearman's rho.
The data-addition and leave-one-site-out experiments write it for every new cell themselves.

Input per case: one patch (the configuration's patch size) from the preprocessed cache, centred
on the foreground; cases without foreground get no L_fd.

examples:
  medseg-auto feature-discrepancy results/Dataset501_BreastUS/Base__plans__2d/fold_0/validation \\
      --model results/Dataset501_BreastUS/Base__plans__2d/fold_0
  medseg-auto feature-discrepancy EXP/cells/Base/f1_r0/test_base_test \\
      --model results/Dataset501_BreastUS/Base__plans__2d/fold_da-70209349-f1_r0 --checkpoint best
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("feature-discrepancy", help="per-case L_fd of a trained fold (for compare's scatter plot)",
                                   description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("eval_folder", metavar="EVAL_FOLDER", type=Path,
                        help="evaluation folder whose metrics.csv lists the cases (the CSV is written here)")
    parser.add_argument("--model", type=Path, required=True, metavar="FOLD_FOLDER",
                        help="the trained fold: results/DATASET/TRAINER__PLANS__CONFIG/fold_F")
    parser.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final", help="which checkpoint")
    parser.add_argument("--normalization", choices=("variance", "none"), default="variance",
                        help="divide each channel's squared difference by the case's channel variance, or not")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the network runs")
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from medseg_auto.errors import MedsegError
    from medseg_auto.evaluation.case_feature_discrepancy import (
        PER_CASE_LFD_FILE, per_case_feature_discrepancy, write_per_case_feature_discrepancy,
    )
    from medseg_auto.evaluation.writing import METRICS_CSV
    from medseg_auto.inference.model_loading import CHECKPOINT_FILES, load_fold
    from medseg_auto.inference.predict import resolve_device
    from medseg_auto.preprocessing.cache import PreprocessedCache

    start_log(args.eval_folder, "feature_discrepancy", args)
    metrics = args.eval_folder / METRICS_CSV
    if not metrics.is_file():
        raise MedsegError(f"{metrics}: not found; EVAL_FOLDER must be a folder 'medseg-auto evaluate' wrote")
    case_ids = sorted(pd.read_csv(metrics)["case"].astype(str).unique())
    fold_folder = args.model.resolve()
    if not fold_folder.name.startswith("fold_") or not (fold_folder / CHECKPOINT_FILES[args.checkpoint]).is_file():
        raise MedsegError(f"{fold_folder}: not a trained fold folder with {CHECKPOINT_FILES[args.checkpoint]}")
    model = load_fold(fold_folder.parent, fold_folder.name[len("fold_"):], args.checkpoint)
    home = resolve_home(args)
    dataset = home.find_dataset(model.plans.dataset_name)
    cache = PreprocessedCache(home.preprocessed_dataset(dataset) / model.config.data_identifier)
    device = resolve_device(args.device)
    frame = per_case_feature_discrepancy(model.network.to(device), model.config, model.plans.num_classes, cache,
                                         case_ids, device, args.normalization, show_progress=not args.no_progress)
    write_per_case_feature_discrepancy(frame, args.eval_folder / PER_CASE_LFD_FILE)
    return 0
