"""``medseg-auto export-plans --nnunet``: our plans as an nnU-Net v2 plans file."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg_auto.cli.common import HelpFormatter, add_home_argument, add_logging_arguments, resolve_home, start_log
from medseg_auto.errors import MedsegError
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("cli.export_plans")

DESCRIPTION = """\
Write the plans of a dataset (preprocessed/DatasetNNN_Name/PLANS.json) as an nnU-Net v2 plans
file, for the fields both have: target spacing, patch and batch size, normalization, resampling
orders, transpose, intensity statistics and the U-Net topology (nnU-Net's PlainConvUNet with our
kernels, strides and features). nnU-Net can then preprocess and train the same plan:

  cp OUT/nnUNetPlans_medseg.json $nnUNet_preprocessed/Dataset004_Hippocampus/
  nnUNetv2_preprocess -d 4 -plans_name nnUNetPlans_medseg -c 3d_fullres
  nnUNetv2_train 4 3d_fullres 0 -p nnUNetPlans_medseg

examples:
  medseg-auto export-plans Hippocampus --nnunet
  medseg-auto export-plans 4 -p plans_cpu_small --nnunet --plans-name nnUNetPlans_cpu -o exported/
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export-plans", help="write our plans as an nnU-Net v2 plans file",
                                   description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("dataset", help="dataset name, id or folder name")
    parser.add_argument("-p", "--plans", default="plans", help="our plans name (preprocessed/NAME/PLANS.json)")
    parser.add_argument("--nnunet", action="store_true", help="nnU-Net v2 format (the only format so far)")
    parser.add_argument("--plans-name", default="nnUNetPlans_medseg", help="the plans name nnU-Net will use (-p)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="folder for PLANS_NAME.json (default: preprocessed/DatasetNNN_Name/)")
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.paths import check_safe_name
    from medseg_auto.planning.nnunet_plans import plans_to_nnunet
    from medseg_auto.planning.plans import Plans
    from medseg_auto.utils.atomic import write_json_atomic

    if not args.nnunet:
        raise MedsegError("say which format: --nnunet (nnU-Net v2 plans) is the only one so far")
    check_safe_name(args.plans_name, what="plans name")
    home = resolve_home(args)
    folder = home.preprocessed_dataset(args.dataset)
    output = args.output or folder
    start_log(output, "export_plans", args)
    plans = Plans.load(folder / f"{args.plans}.json")
    target = output / f"{args.plans_name}.json"
    if target.resolve() == (folder / f"{args.plans}.json").resolve():
        raise MedsegError(f"{target}: refusing to write over the plans being exported; choose another --plans-name")
    write_json_atomic(target, plans_to_nnunet(plans, args.plans_name))
    log.info("wrote %s (nnU-Net v2 plans '%s' with configurations %s)", target, args.plans_name,
             ", ".join(plans.configurations))
    return 0
