"""Pieces every command shares: ``--home``, ``-np``, logging to a file, error handling."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medseg_auto.paths import DataHome
from medseg_auto.utils.logging_setup import configure_logging
from medseg_auto.utils.parallel import default_num_processes


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; show a default only where it says something (not None
    or False) and the help text does not already speak of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def add_home_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home", default=None,
        help="data home holding raw/, preprocessed/, results/ (default: $MEDSEG_AUTO_HOME or ./medseg_auto_data)",
    )
    parser.add_argument(
        "--raw", metavar="DIR", default=None,
        help="also find raw datasets here, read in place and never written to (default: $nnUNet_raw if set)",
    )


def add_processes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes(),
                        help="worker processes for per-case work")


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="debug-level logging")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (for logs and CI)")


def resolve_home(args: argparse.Namespace) -> DataHome:
    return DataHome.resolve(getattr(args, "home", None), getattr(args, "raw", None))


def start_log(folder: Path, command: str, args: argparse.Namespace) -> Path:
    """Log to the console and to ``folder/logs/<command>_<timestamp>.txt``; return the file."""
    log_file = folder / "logs" / f"{command}_{time.strftime('%Y%m%d_%H%M%S')}.txt"
    configure_logging(log_file, verbose=getattr(args, "verbose", False))
    return log_file
