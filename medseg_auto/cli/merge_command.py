"""``medseg-auto merge``: pool raw datasets into one multi-site raw dataset."""

from __future__ import annotations

import argparse
import time

from medseg_auto.cli.common import HelpFormatter, add_home_argument, add_logging_arguments, resolve_home, start_log
from medseg_auto.errors import MedsegError
from medseg_auto.utils.logging_setup import configure_logging, get_logger

log = get_logger("cli.merge")

DESCRIPTION = """\
Merge two or more raw datasets into raw/DatasetNNN_NAME (nnU-Net v2 layout), recording the site
of every case in dataset.json "sites".

The sources must have the same labels, channel_names and file_ending (refused otherwise, naming
both datasets). Sites: --site SOURCE=SITE sets the site of all cases of SOURCE; otherwise each
case keeps the site its source recorded, else gets the source's dataset name. A case id found in
several sources is prefixed with its source's dataset name (BUSI_case_1). Files are copied;
dataset.json is written last, so an interrupted merge leaves no half dataset. merge_log.json
lists sources, site counts and renamed cases; the log goes to the new dataset's logs/.

examples:
  medseg-auto merge BUSI STU --name BreastUS
  medseg-auto merge BUSI STU --name BreastUS --site BUSI=busi --site STU=stu
  medseg-auto merge 501 502 503 --name Pooled --id 600
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("merge", help="merge raw datasets into one multi-site dataset",
                                   description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="DATASET", help="datasets to merge (name, id or folder), two or more")
    parser.add_argument("--name", required=True, help="name of the merged dataset")
    parser.add_argument("--id", type=int, default=None, dest="dataset_id",
                        help="dataset id NNN in DatasetNNN_NAME; None: the lowest free id above 500")
    parser.add_argument("--site", action="append", default=[], metavar="SOURCE=SITE",
                        help="site of every case of SOURCE (repeatable); default: the source's own sites, else its name")
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def parse_site_overrides(values: list[str]) -> dict[str, str]:
    """``["BUSI=busi", ...]`` -> ``{"BUSI": "busi"}``; a malformed entry is a clear error."""
    overrides: dict[str, str] = {}
    for value in values:
        source, separator, site = value.partition("=")
        if not separator or not source.strip() or not site.strip():
            raise MedsegError(f"--site {value!r}: expected SOURCE=SITE, e.g. --site BUSI=busi")
        overrides[source.strip()] = site.strip()
    return overrides


def run(args: argparse.Namespace) -> int:
    from medseg_auto.dataset.importers.output import discard_unfinished_folder
    from medseg_auto.dataset.merge import merge_datasets

    overrides = parse_site_overrides(args.site)
    home = resolve_home(args)
    for source in args.sources:
        home.find_dataset(source)  # fail on a typo before a folder is created for the log
    folder = home.new_dataset_folder(args.name, args.dataset_id)
    log_file = start_log(folder, "merge", args)
    started = time.perf_counter()
    try:
        spec = merge_datasets(home, args.sources, args.name, overrides, args.dataset_id,
                              show_progress=not args.no_progress)
    except BaseException:
        configure_logging(None, verbose=args.verbose)  # close the log file so the folder can go
        discard_unfinished_folder(folder)
        raise
    log.info("done in %.1f s: %s holds %d case(s) (dataset.json, merge_log.json; log: %s)",
             time.perf_counter() - started, spec.folder, spec.num_training, log_file)
    return 0
