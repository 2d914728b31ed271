"""Case ids from file names, and short listings of offending files for error messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from medseg_auto.dataset.image_io import file_ending_of
from medseg_auto.errors import DatasetError, UnsafePathError
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


def check_encodable_names(paths: Sequence[Path]) -> None:
    """Refuse file names that are not valid UTF-8 (bytes Python keeps as surrogates).

    Why: SimpleITK receives such a name as a broken UTF-8 string and aborts the whole process
    in C++ (no exception to catch), leaving a half-made dataset behind.
    """
    for path in paths:
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            shown = str(path).encode("utf-8", "backslashreplace").decode("ascii", "replace")
            raise DatasetError(f"{shown}: file name is not valid UTF-8; rename the file") from None


def unique_case_ids(pairs_by_stem: dict[str, tuple[Path, Path]]) -> dict[str, tuple[Path, Path]]:
    """``{case_id: (image, label)}`` from ``{file stem: (image, label)}``; two files that clean
    up to the same id (``fall_ü``, ``fall_日本`` and ``fall`` all become ``fall``) are refused
    rather than one silently replacing the others."""
    cases: dict[str, tuple[Path, Path]] = {}
    for stem, pair in pairs_by_stem.items():
        case_id = case_id_from_stem(stem, pair[0])
        if case_id in cases:
            raise DatasetError(
                f"{pair[0]} and {cases[case_id][0]} both become case '{case_id}'; rename one of them"
            )
        cases[case_id] = pair
    return cases
