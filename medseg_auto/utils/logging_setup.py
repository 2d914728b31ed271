"""Logging to the console and to a file at once, the same for every command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOGGER_NAME = "medseg_auto"


def get_logger(name: str | None = None) -> logging.Logger:
    """A child of the package logger (``medseg_auto.<name>``)."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def configure_logging(log_file: Path | None = None, verbose: bool = False) -> Path | None:
    """Send package log records to stderr and, if given, append them to ``log_file``.

    Calling it again replaces the handlers, so tests and repeated CLI calls in one process
    do not duplicate lines.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(file_handler)
    return log_file
