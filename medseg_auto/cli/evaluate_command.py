"""``medseg-auto evaluate``: score a folder of predictions against reference label maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg_auto.cli.common import (
    HelpFormatter, add_home_argument, add_logging_arguments, add_processes_argument, resolve_home, start_log,
)
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("cli.evaluate")

DESCRIPTION = """\
Score predicted label maps against reference label maps, matched by case id (the file name
without its ending, e.g. case_001 for case_001.nii.gz). Per case and foreground class: Dice,
IoU, HD95 and average symmetric surface distance in mm (from the reference's spacing; 2D
images in-plane), TP/FP/FN, and volumes in voxels and mm^3 (mm^2 for 2D).

A class empty in both files has Dice NaN (nnU-Net's convention: it does not count in means);
empty in only one, Dice 0 and distances NaN (flagged in the ref_empty/pred_empty columns).

Writes metrics.csv (one row per case and class), summary.json (means per class and over
classes, with and without cases whose reference lacks the class; worst and best 10% of cases;
per-site means with --sites) and summary.md into OUT, and a log to OUT/logs/.

examples:
  medseg-auto evaluate results/val_pred raw/Dataset004_Hippocampus/labelsTr -d Hippocampus
  medseg-auto evaluate preds/ labels/ -d Hippocampus --sites -o reports/hippo
  medseg-auto evaluate preds/ labels/ --labels 1 2 -np 8    # no dataset.json: labels given
  medseg-auto evaluate preds/ labels/                       # labels: every value seen
  medseg-auto evaluate -ref labels/ -pred preds/            # named roles, in any order

PRED_DIR comes first, the reverse of nnU-Net's evaluate_folder (GT PRED). Given by position, the
folders are checked for a swap (a reference folder holding a predict run's files, a prediction
folder with every reference case and more, or a reference with fewer or other labels) and such
a call stops with an error; -pred/-ref name the roles and skip that check.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="score predictions against reference label maps",
                                   description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("pred_dir", metavar="PRED_DIR", type=Path, nargs="?", help="folder of predicted label maps")
    parser.add_argument("gt_dir", metavar="GT_DIR", type=Path, nargs="?", help="folder of reference label maps")
    parser.add_argument("-pred", "--pred", dest="pred_named", metavar="PRED_DIR", type=Path, default=None,
                        help="predictions, named (instead of the first position; no swap check)")
    parser.add_argument("-ref", "--ref", dest="gt_named", metavar="GT_DIR", type=Path, default=None,
                        help="references, named (instead of the second position; nnU-Net's GT folder)")
    parser.add_argument("-d", "--dataset", metavar="NAME", default=None,
                        help="dataset name, id or folder: labels, names, file ending and sites from its dataset.json")
    parser.add_argument("--predicted-only", action="store_true",
                        help="score only the references that have a prediction (e.g. one fold's validation cases)")
    parser.add_argument("--sites", action="store_true",
                        help="add per-site tables (needs -d and a dataset.json with 'sites')")
    parser.add_argument("-o", "--output", metavar="OUT", type=Path, default=None,
                        help="folder for metrics.csv, summary.json, summary.md and logs (default: PRED_DIR)")
    parser.add_argument("--labels", metavar="LABEL", type=int, nargs="+", default=None,
                        help="foreground labels to score (default: the dataset's, or every non-zero value seen)")
    add_processes_argument(parser)
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.evaluation.evaluate import EvaluationError, evaluate_folders
    from medseg_auto.evaluation.writing import write_evaluation

    from medseg_auto.evaluation import folder_roles

    positional = _resolve_folders(args, EvaluationError)
    spec = DatasetSpec.load(resolve_home(args).raw_dataset(args.dataset)) if args.dataset else None
    sites = _chosen_sites(args, spec, EvaluationError)
    if spec is not None and args.labels:
        unknown = sorted(set(args.labels) - set(spec.foreground_labels))
        if unknown:
            raise EvaluationError(f"{spec.folder / 'dataset.json'}: --labels {unknown} not among the dataset's "
                                  f"foreground labels {spec.foreground_labels}")
    if not args.pred_dir.is_dir():
        raise EvaluationError(f"{args.pred_dir}: prediction folder not found")
    if positional:
        pred_ids, gt_ids = folder_roles.case_ids(args.pred_dir), folder_roles.case_ids(args.gt_dir)
        folder_roles.check_folder_roles(args.pred_dir, args.gt_dir, pred_ids, gt_ids, args.predicted_only)
    output = args.output or args.pred_dir
    log_file = start_log(output, "evaluate", args)
    result = evaluate_folders(args.pred_dir, args.gt_dir, spec=spec, labels=args.labels, sites=sites,
                              num_processes=args.num_processes, show_progress=not args.no_progress,
                              predicted_only=args.predicted_only)
    if positional:
        folder_roles.check_label_roles(result.table, args.pred_dir, args.gt_dir, pred_ids, gt_ids)
    paths = write_evaluation(result, output)
    summary = result.summary
    for label, values in summary["per_class"].items():
        log.info("class %s (%s): Dice %.4f  IoU %.4f  HD95 %.2f mm  ASD %.2f mm  (%d cases, %d empty reference)",
                 label, summary["labels"][label], values["dice"], values["iou"], values["hd95"], values["asd"],
                 values["num_cases"], values["num_empty_reference"])
    for site, block in summary.get("per_site", {}).items():
        log.info("site %s: %d case(s), foreground mean Dice %.4f", site, block["num_cases"],
                 block["foreground_mean"]["dice"])
    log.info("worst: %s", ", ".join(f"{c['case']} ({c['foreground_dice']:.3f})" for c in summary["worst_cases"]))
    log.info("wrote %s; log: %s", ", ".join(str(p) for p in paths.values()), log_file)
    return 0


def _resolve_folders(args: argparse.Namespace, error_type: type) -> bool:
    """Fill ``args.pred_dir``/``args.gt_dir`` from positions or -pred/-ref; True if by position."""
    if args.pred_named is not None or args.gt_named is not None:
        if args.pred_named is None or args.gt_named is None or args.pred_dir is not None:
            raise error_type("give both -pred and -ref, and no folder by position (or both by position: PRED GT)")
        args.pred_dir, args.gt_dir = args.pred_named, args.gt_named
        return False
    if args.pred_dir is None or args.gt_dir is None:
        raise error_type("give PRED_DIR and GT_DIR (or -pred PRED_DIR -ref GT_DIR)")
    return True


def _chosen_sites(args: argparse.Namespace, spec: DatasetSpec | None, error_type: type) -> dict[str, str] | None:
    """The case -> site map when ``--sites`` is given; errors say why it cannot be had."""
    if not args.sites:
        return None
    if spec is None:
        raise error_type("--sites needs -d NAME: sites are read from the dataset's dataset.json")
    if not spec.sites:
        raise error_type(f"{spec.folder / 'dataset.json'}: no 'sites' key, so --sites has nothing to group by "
                         "(add \"sites\": {\"CASE\": \"SITE\", ...} or drop --sites)")
    return spec.sites
