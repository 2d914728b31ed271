"""``medseg-auto plan_and_preprocess``: fingerprint, plans and preprocessed cache of a dataset."""

from __future__ import annotations

import argparse
import time

from medseg_auto.cli.common import (
    HelpFormatter, add_home_argument, add_logging_arguments, add_processes_argument, resolve_home, start_log,
)
from medseg_auto.utils.atomic import write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("cli.plan")

EXAMPLES = """\
examples:
  medseg-auto plan_and_preprocess Hippocampus --verify
  medseg-auto plan_and_preprocess 4 -c 3d_fullres -np 4
  medseg-auto plan_and_preprocess BUSI_STU --preset cpu_small
  medseg-auto plan_and_preprocess Hippocampus --plan-only --overwrite-plans
  medseg-auto plan_and_preprocess -d 4 --splits $nnUNet_preprocessed/Dataset004_Hippocampus/splits_final.json

Writes preprocessed/DATASET/{dataset_fingerprint.json, PLANS.json, PLANS_CONFIG/} and a
machine-readable summary plan_and_preprocess_summary.json. Rerunning resumes: finished cases
are kept, the fingerprint is reused while the raw data is unchanged, and edited plans are kept
unless --overwrite-plans is given.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan_and_preprocess", aliases=["plan-and-preprocess"], formatter_class=HelpFormatter,
        help="fingerprint a dataset, plan configurations, build the preprocessed cache",
        description=__doc__ + "\n\n" + EXAMPLES,
    )
    parser.add_argument("dataset", nargs="?", default=None, help="dataset name (e.g. Hippocampus), id (4) or folder name")
    parser.add_argument("-d", dest="dataset_ids", metavar="DATASET", nargs="+", default=[],
                        help="nnU-Net's spelling: one or more dataset ids or names (-d 4 5)")
    parser.add_argument("-c", "--configurations", nargs="+", default=None,
                        help="configurations to preprocess (default: all planned: 2d 3d_fullres [3d_lowres])")
    parser.add_argument("--preset", default="default", help="planner preset: a name in plans/ or a JSON path")
    parser.add_argument("--overwrite-plans", action="store_true", help="plan again even if plans exist")
    parser.add_argument("--verify", action="store_true",
                        help="check every case first (like 'medseg-auto verify') and stop on any error")
    parser.add_argument("--plan-only", action="store_true", help="write fingerprint and plans, skip preprocessing")
    parser.add_argument("--splits", metavar="FILE", default=None,
                        help="use these cross-validation folds (e.g. nnU-Net's splits_final.json) as splits.json")
    add_home_argument(parser)
    add_processes_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.errors import MedsegError

    datasets = ([args.dataset] if args.dataset else []) + list(args.dataset_ids)
    if not datasets:
        raise MedsegError("name a dataset: medseg-auto plan_and_preprocess NAME (or nnU-Net's -d ID)")
    for dataset in datasets:
        args.dataset = dataset
        _run_one(args)
    return 0


def _run_one(args: argparse.Namespace) -> int:
    from medseg_auto.preprocessing.pipeline import plan_and_preprocess

    home = resolve_home(args)
    output_folder = home.preprocessed_dataset(args.dataset)
    log_file = start_log(output_folder, "plan_and_preprocess", args)
    started = time.perf_counter()
    plans = plan_and_preprocess(
        home, args.dataset, args.configurations, args.preset, args.num_processes,
        show_progress=not args.no_progress, overwrite_plans=args.overwrite_plans, plan_only=args.plan_only,
        verify=args.verify,
    )
    if args.splits:
        from medseg_auto.cli.splits_option import install_splits_for

        log.info("cross-validation folds from %s: %s", args.splits, install_splits_for(home, args.dataset, args.splits))
    elapsed = time.perf_counter() - started
    rows = []
    for name, config in plans.configurations.items():
        rows.append({
            "configuration": name, "spacing": config.spacing, "patch_size": config.patch_size,
            "batch_size": config.batch_size, "n_stages": config.network.n_stages,
            "normalization": config.normalization_schemes,
        })
        log.info("%-11s spacing %-22s patch %-16s batch %4d stages %d", name,
                 [round(v, 3) for v in config.spacing], config.patch_size, config.batch_size, config.network.n_stages)
    summary = {"dataset": plans.dataset_name, "plans": plans.plans_name, "seconds": round(elapsed, 2),
               "transpose_forward": plans.transpose_forward, "configurations": rows, "log": str(log_file)}
    write_json_atomic(output_folder / "plan_and_preprocess_summary.json", summary)
    log.info("done in %.1f s; log: %s", elapsed, log_file)
    return 0
