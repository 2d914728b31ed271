"""Completion records of cached cases: the size and CRC-32 of each array file, written into the
case's properties JSON (key ``files``) when the case is complete, and checked on resume.

Why: the JSON-written-last rule protects against a kill, not against a file damaged afterwards
(a disk error, a copy cut short, a stray edit): such a case used to count as done on a rerun of
``plan_and_preprocess`` and fail (or train on garbage) later. CRC-32 rather than a cryptographic
hash because it is fast (GB/s) and the threat is damage, not an attacker.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

RECORD_KEY = "files"
CHUNK_BYTES = 1 << 22


def file_record(path: Path) -> dict[str, int]:
    """``{"size": bytes, "crc32": checksum}`` of one file."""
    checksum = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            checksum = zlib.crc32(block, checksum)
    return {"size": path.stat().st_size, "crc32": checksum}


def damaged_files(folder: Path, records: dict[str, dict[str, int]] | None, files: list[Path]) -> list[str]:
    """Names of ``files`` that no longer match their record. Without records (a cache written
    before they existed) each ``.npy`` must at least open with the size its header promises."""
    damaged = []
    for path in files:
        if not path.is_file():
            damaged.append(path.name)
            continue
        if records is not None:
            if path.name not in records or file_record(path) != records[path.name]:
                damaged.append(path.name)
            continue
        try:
            np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError):
            damaged.append(path.name)
    return damaged
