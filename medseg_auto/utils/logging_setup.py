"""Logging to the console and to a file at once, the same for every command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOGGER_NAME = "medseg_auto"


class CurrentStreamHandler(logging.StreamHandler):
    """A console handler that writes to whatever ``sys.stderr``/``sys.stdout`` is when a record
    arrives, not the stream of the moment it was made: a notebook, pytest's capture or a caller
    that redirects the console would otherwise leave it writing to a closed stream."""

    def __init__(self, stream_name: str = "stderr") -> None:
        self._stream_name = stream_name
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one; the live one wins
        pass


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
    console = CurrentStreamHandler("stderr")
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(file_handler)
    return log_file


def ensure_console_logging(level: int = logging.INFO) -> bool:
    """Show the package's records on stdout when nobody configured logging (a notebook).

    The CLI configures a console handler itself, and an application that set up the root
    logger keeps full control: in both cases nothing is added. Otherwise (Jupyter's default)
    records would reach no console at all, so one plain handler is added. Returns True when
    it added one.
    """
    logger = logging.getLogger(LOGGER_NAME)
    has_console = any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                      for h in logger.handlers)
    if has_console or (logger.propagate and logging.getLogger().handlers):
        return False
    console = CurrentStreamHandler("stdout")
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return True
