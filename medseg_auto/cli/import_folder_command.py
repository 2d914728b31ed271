"""``medseg-auto import-folder``: 2D natural images and masks -> raw dataset."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from medseg_auto.cli.common import (
    HelpFormatter, add_home_argument, add_logging_arguments, add_processes_argument, resolve_home, start_log,
)
from medseg_auto.dataset.importers import import_folder
from medseg_auto.dataset.importers.output import discard_unfinished_folder
from medseg_auto.dataset.importers.pairing import DEFAULT_MASK_PATTERNS
from medseg_auto.utils.logging_setup import configure_logging

DESCRIPTION = """\
Import 2D images (PNG, JPEG, BMP, TIFF) and their masks as raw/DatasetNNN_NAME with .png files.

Images are written greyscale, or RGB (channels R, G, B) if any image is truly colour (--grey:
always greyscale, colour images as luminance). Masks:
0/255 becomes 0/1, label maps 0..K are kept, anti-aliased 0..255 masks are thresholded at 127.
Case ids are the image names with spaces and brackets replaced by '_', prefixed by --site.

Layouts: --images holds the images and --masks the masks (default: the sibling masks/ of an
images/ folder); or --images holds images/ and masks/; or --images holds sub-folders that each
hold images/ and masks/ (all are imported).

Mask patterns: a mask file name template, tried in order, with {stem} = the image name
without its ending and {n} = the number that name ends with (as written). Without an ending
the pattern matches any image ending. Default: '{stem}' then '{stem}_mask'.
  'mask_{n}'      Test_Image_7.png -> mask_7.png
  '{stem}_mask'   benign (1).png   -> benign (1)_mask.png

examples:
  medseg-auto import-folder --images ../shared/data/busi_half --name BUSI --site busi
  medseg-auto import-folder --images ../shared/data/stu_bus/images --masks ../shared/data/stu_bus/masks \\
      --name BUSI --site stu --append --resize-masks --mask-pattern 'mask_{n}'
  medseg-auto import-folder --images photos/ --masks labels/ --name Polyps --mask-pattern '{stem}_seg'
  medseg-auto import-folder --images hospital3/ --name Hospital3 --site h3 --grey   # RGB exports stored grey
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-folder", help="import 2D images and masks from folders",
        description=DESCRIPTION, formatter_class=HelpFormatter,
    )
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of images (or of images/ + masks/ sub-folders)")
    parser.add_argument("--masks", default=None, metavar="DIR", help="folder of masks; None: the sibling masks/ folder")
    parser.add_argument("--name", required=True, help="dataset name (letters, digits, '_', '-')")
    parser.add_argument("--id", type=int, default=None, dest="dataset_id",
                        help="dataset id NNN in DatasetNNN_NAME; None: the lowest free id above 500")
    parser.add_argument("--site", default=None,
                        help="hospital/scanner name: prefixes case ids, recorded in dataset.json 'sites'; None: no site")
    parser.add_argument("--mask-pattern", action="append", default=None, metavar="P",
                        help="mask file name template with {stem} and {n}, repeatable; None: "
                        + " then ".join(DEFAULT_MASK_PATTERNS))
    parser.add_argument("--resize-masks", action="store_true",
                        help="resize masks of another size than their image (nearest), then threshold at 127")
    parser.add_argument("--append", action="store_true", help="add the cases to the existing dataset NAME")
    parser.add_argument("--channel-name", default="image", help="name of the channel of greyscale images")
    parser.add_argument("--grey", action="store_true",
                        help="store every image greyscale (colour images as luminance 0.299 R + 0.587 G + 0.114 B)")
    add_processes_argument(parser)
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    home = resolve_home(args)
    folder = home.new_dataset_folder(args.name, args.dataset_id)
    log_file = start_log(folder, "import_folder", args)
    started = time.perf_counter()
    try:
        spec = import_folder(
            home, Path(args.images), Path(args.masks) if args.masks else None, args.name, site=args.site,
            mask_pattern=args.mask_pattern, resize_masks=args.resize_masks, append=args.append,
            num_processes=args.num_processes, dataset_id=args.dataset_id, channel_name=args.channel_name,
            show_progress=not args.no_progress, grey=args.grey,
        )
    except BaseException:
        configure_logging(None, verbose=args.verbose)  # close the log file so the folder can go
        discard_unfinished_folder(folder)
        raise
    logging.getLogger("medseg_auto.import").info(
        "done in %.1f s: %s now holds %d case(s) (log: %s)", time.perf_counter() - started, spec.folder,
        spec.num_training, log_file,
    )
    return 0
