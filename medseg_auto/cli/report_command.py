"""``medseg-auto report``: a static HTML page of training curves, cross-validation tables and
overlays, optionally photographed with a headless Chromium."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from medseg_auto.cli.common import HelpFormatter, add_home_argument, add_logging_arguments
from medseg_auto.errors import MedsegError
from medseg_auto.utils.atomic import atomic_path
from medseg_auto.utils.logging_setup import configure_logging, get_logger

log = get_logger("cli.report")

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SCREENSHOT_FILE = "report.png"
WINDOW_SIZE = "1280,2000"
SCREENSHOT_TIMEOUT_S = 120

DESCRIPTION = """\
Write a static HTML report (index.html plus PNG figures, no server or JavaScript needed) of
RESULTS_DIR, either results/DatasetNNN_Name (all experiments, and find_best_configuration's
decision if made) or one TRAINER__PLANS__CONFIG folder in it. Per experiment: training curves
of each fold (from progress.csv), per-fold validation Dice, the cross-validation table per
class (Dice, IoU, HD95, ASD) and per site, and overlays of the worst and best cases (raw image,
reference and prediction contours). The cross-validation is computed into crossval_results/
when missing. With --screenshot, a headless Chromium saves report.png next to index.html.

examples:
  medseg-auto report medseg_auto_data/results/Dataset004_Hippocampus
  medseg-auto report medseg_auto_data/results/Dataset004_Hippocampus/Base__plans__3d_fullres -o /tmp/rep
  medseg-auto report results/Dataset004_Hippocampus --screenshot
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", formatter_class=HelpFormatter, description=DESCRIPTION,
                                   help="static HTML report of training and cross-validation results")
    parser.add_argument("results_dir", metavar="RESULTS_DIR", type=Path,
                        help="results/DatasetNNN_Name or one TRAINER__PLANS__CONFIG folder")
    parser.add_argument("-o", "--output", metavar="OUT", type=Path, default=None,
                        help="report folder (default: RESULTS_DIR/report)")
    parser.add_argument("--screenshot", action="store_true",
                        help=f"also save {SCREENSHOT_FILE} with headless Chromium (must be installed)")
    add_home_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medseg_auto.evaluation.report import build_report
    from medseg_auto.paths import DataHome

    configure_logging(verbose=args.verbose)
    home = DataHome.resolve(args.home) if args.home else None
    index = build_report(args.results_dir, args.output, home)
    print(index)
    if args.screenshot:
        print(take_screenshot(index, index.parent / SCREENSHOT_FILE))
    return 0


def take_screenshot(html_file: Path, png_file: Path, browser: str | None = None) -> Path:
    """Render ``html_file`` with headless Chromium into ``png_file`` (1280 x 2000 px window).

    Raises :class:`MedsegError` when no Chromium is installed or it fails.
    """
    executable = browser or next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if executable is None:
        raise MedsegError(f"--screenshot needs Chromium ({' or '.join(BROWSERS)} on PATH); install it "
                          "(Debian: apt-get install chromium) or open the report in any browser instead")
    with tempfile.TemporaryDirectory(prefix="medseg_chromium_") as profile, \
            atomic_path(png_file, suffix=".png") as temporary:
        command = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                   f"--screenshot={temporary}", f"--window-size={WINDOW_SIZE}", Path(html_file).resolve().as_uri()]
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=SCREENSHOT_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise MedsegError(f"{executable} did not finish the screenshot of {html_file} in "
                              f"{SCREENSHOT_TIMEOUT_S} s") from error
        if completed.returncode != 0 or not temporary.is_file() or temporary.stat().st_size == 0:
            raise MedsegError(f"{executable} failed to screenshot {html_file} (exit {completed.returncode}): "
                              f"{completed.stderr.strip()[-500:]}")
    png_file.chmod(0o644)  # like the report's own files: meant to be shared
    log.info("screenshot: %s", png_file)
    return png_file
