"""Case ids from file names, and short listings of offending files for error messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from medseg_auto.dataset.image_io import file_ending_of
from medseg_auto.errors import UnsafePathError
from medseg_auto.paths import check_safe_name

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
LISTING_LIMIT = 5


def file_stem(path: Path) -> str:
    """The file name without its format ending (``a.nii.gz`` -> ``a``)."""
    return path.name[: len(path.name) - len(file_ending_of(path))]


def case_id_from_stem(stem: str, source: Path, site: str | None = None) -> str:
    """A safe case id for the file ``source`` whose stem is ``stem``.

    Spaces, brackets and other punctuation become ``_`` (``benign (12)`` -> ``benign_12``), so
    ids survive shells and the ``CASE_XXXX`` channel suffix; ``site`` is prefixed when given
    so that two sites with the same file names never clash. Names that would still be unsafe
    (``..``) raise :class:`UnsafePathError` naming ``source``.
    """
    cleaned = _UNSAFE_CHARACTERS.sub("_", stem).strip("_")
    case_id = f"{site}_{cleaned}" if site else cleaned
    try:
        return check_safe_name(case_id)
    except UnsafePathError as error:
        raise UnsafePathError(f"{source}: {error} Rename the file.") from error


def list_some(items: Sequence[object], limit: int = LISTING_LIMIT) -> str:
    """``a, b, c (and 12 more)``: enough to find the files without flooding the terminal."""
    shown = ", ".join(str(item) for item in items[:limit])
    hidden = len(items) - limit
    return f"{shown} (and {hidden} more)" if hidden > 0 else shown
