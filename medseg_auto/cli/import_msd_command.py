"""``medseg-auto import-msd``: a Decathlon task or plain images/ + labels/ folder -> raw dataset."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from medseg_auto.cli.common import (
    HelpFormatter, add_home_argument, add_logging_arguments, add_processes_argument, resolve_home, start_log,
)
from medseg_auto.dataset.importers import import_msd
from medseg_auto.dataset.importers.output import discard_unfinished_folder
from medseg_auto.utils.logging_setup import configure_logging

DESCRIPTION = """\
Import 3D volumes into the data home as raw/DatasetNNN_NAME (nnU-Net v2 layout).

TASK_DIR is either a Medical Segmentation Decathlon task (dataset.json + imagesTr/ +
labelsTr/; 4D multi-modal images are split into one file per channel) or a plain folder with
images/ and labels/ (no dataset.json: label values are inferred and named label_1, ... unless
--labels names them). Images and labels are paired by file name; unpaired files are skipped
with a warning that lists them. An nnU-Net v2 raw folder (dataset.json with channel_names and
file_ending, imagesTr/CASE_0000.nii.gz) is copied as is ('import-nnunet' is another name for this
command; to read such a folder in place instead, use --raw DIR or $nnUNet_raw with any command).
The log says which layout was recognised. Run 'medseg-auto verify NAME' afterwards.

examples:
  medseg-auto import-msd ../shared/data/hippocampus --name Hippocampus --labels anterior posterior
  medseg-auto import-msd Task04_Hippocampus --name Hippocampus --id 4
  medseg-auto import-msd Task01_BrainTumour --name BrainTumour -np 8 --home /data/medseg
  medseg-auto import-nnunet $nnUNet_raw/Dataset004_Hippocampus --name Hippocampus --id 4
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-msd", aliases=["import-nnunet"], help="import a Decathlon task or images/ + labels/ folder of 3D volumes",
        description=DESCRIPTION, formatter_class=HelpFormatter,
    )
    parser.add_argument("task_dir", metavar="TASK_DIR", help="Decathlon task folder, or a folder with images/ and labels/")
    parser.add_argument("--name", required=True, help="dataset name (letters, digits, '_', '-')")
    parser.add_argument("--id", type=int, default=None, dest="dataset_id",
                        help="dataset id NNN in DatasetNNN_NAME; None: the lowest free id above 500")
    parser.add_argument("--labels", nargs="+", default=None, metavar="NAME",
                        help="names of labels 1..K in order; None: from dataset.json, or label_1, label_2, ...")
    parser.add_argument("--channel-name", default="MRI",
                        help="channel name for plain folders ('CT' selects CT normalisation)")
    add_processes_argument(parser)
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    home = resolve_home(args)
    folder = home.new_dataset_folder(args.name, args.dataset_id)
    log_file = start_log(folder, "import_msd", args)
    started = time.perf_counter()
    try:
        spec = import_msd(
            home, Path(args.task_dir), args.name, num_processes=args.num_processes, dataset_id=args.dataset_id,
            label_names=args.labels, channel_name=args.channel_name, show_progress=not args.no_progress,
        )
    except BaseException:
        configure_logging(None, verbose=args.verbose)  # close the log file so the folder can go
        discard_unfinished_folder(folder)
        raise
    logging.getLogger("medseg_auto.import").info(
        "done in %.1f s: %d case(s) in %s (log: %s)", time.perf_counter() - started, spec.num_training, spec.folder, log_file,
    )
    return 0
