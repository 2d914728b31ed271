"""Atomic file writes: a reader (or a resumed job) sees a file complete or not at all.

Every file is written to a temporary name in the same folder and then renamed with
``os.replace``, which is atomic on POSIX and Windows file systems. A kill at any moment
therefore leaves either the old file, the new file, or a stray ``.tmp-*`` file that
:func:`remove_stale_temporaries` cleans up.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

TEMP_PREFIX = ".tmp-"


@contextmanager
def atomic_path(final_path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; rename it into place on success.

    ``suffix`` keeps the file ending that some writers (SimpleITK, numpy) use to pick a format.
    On an exception the temporary file is removed and ``final_path`` is untouched.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=final_path.parent)
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        # mkstemp creates the file 0600; give the result the permissions a plain open() would.
        os.chmod(temp_path, 0o666 & ~_current_umask())
        os.replace(temp_path, final_path)
    finally:
        if temp_path.exists():
            temp_path.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | os.PathLike, payload: Any, compact: bool = False) -> None:
    """Write ``payload`` as JSON, atomically: indented for files people read (plans, summaries),
    ``compact`` for bulky machine files (per-case properties), which uses the fast C encoder."""
    with atomic_path(path, suffix=".json") as temp:
        with open(temp, "w", encoding="utf-8") as handle:
            if compact:  # json.dumps (not dump) so the C encoder does the work
                handle.write(json.dumps(payload, separators=(",", ":"), default=_json_default))
            else:
                json.dump(payload, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path, suffix=".txt") as temp:
        Path(temp).write_text(text, encoding="utf-8")


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array as ``.npy`` atomically (``.npy`` so that training can memory-map it)."""
    with atomic_path(path, suffix=".npy") as temp:
        np.save(temp, np.ascontiguousarray(array), allow_pickle=False)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (JSON only: nothing from a dataset or plans file is ever unpickled)."""
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete ``.tmp-*`` files left in ``folder`` by a killed writer; return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for stale in folder.glob(TEMP_PREFIX + "*"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed


def _json_default(value: Any) -> Any:
    """Let numpy scalars and arrays, and paths, serialise as plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
