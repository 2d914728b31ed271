"""Refuse truncated and corrupt image files before a reader quietly pads them with zeros.

Why a separate check: SimpleITK (ITK's NIfTI reader) reads a ``.nii.gz`` cut after its first
2,000 bytes, or a ``.nii`` missing most of its voxels, as a full-size volume that is mostly
zeros, without an error (nibabel and Python's gzip do raise). A silently zero-filled scan
trains, verifies and predicts "fine", so every read of an image goes through
:func:`check_image_integrity` first (``image_io.read_image_file`` calls it; importers that copy
files byte for byte call it too).

What is checked:

- gzip files (``.gz`` ending or gzip magic bytes): the whole stream is decompressed; a missing
  end-of-stream marker (truncation) or a CRC/length mismatch (corruption) is an error.
- NIfTI (``.nii``, ``.nii.gz``): the (decompressed) byte count must reach the header's
  ``vox_offset + prod(shape) x bytes per voxel``.

Other formats (MetaImage, NRRD, PNG, ...) already fail loudly in their readers when truncated.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from medseg_auto.errors import ImageReadError, ImageWriteError

GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 20
HEADER_BYTES = 544  # a NIfTI-2 header (540) and the extension flag
ADVICE = "copy or export the file again"


def check_image_integrity(path: str | os.PathLike) -> None:
    """Raise :class:`ImageReadError` naming ``path`` when it is truncated or corrupt.

    Costs one extra decompression pass for gzip files (the header is parsed from the same
    pass, not by opening the file again).
    """
    path = Path(path)
    name = path.name.lower()
    compressed = name.endswith(".gz") or _starts_with_gzip_magic(path)
    if compressed:
        available, head = _decompressed_size_and_head(path)
    else:
        available = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(HEADER_BYTES)
    if name.endswith((".nii", ".nii.gz")):
        expected = _nifti_expected_bytes(head)
        if expected is not None and available < expected:
            raise ImageReadError(
                f"{path}: truncated image: {available} bytes of voxel data and header, the NIfTI header "
                f"needs {expected}; {ADVICE}"
            )


def _starts_with_gzip_magic(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _decompressed_size_and_head(path: Path) -> tuple[int, bytes]:
    """Bytes in the whole gzip stream and its first :data:`HEADER_BYTES`; raises when the
    stream is cut short or fails its CRC."""
    total, head = 0, b""
    try:
        with gzip.open(path, "rb") as handle:
            while True:
                chunk = handle.read(CHUNK_BYTES)
                if not chunk:
                    return total, head
                if len(head) < HEADER_BYTES:
                    head += chunk[: HEADER_BYTES - len(head)]
                total += len(chunk)
    except EOFError as error:
        raise ImageReadError(
            f"{path}: truncated compressed file (the gzip stream ends after {total} bytes without its "
            f"end marker); {ADVICE}"
        ) from error
    except (gzip.BadGzipFile, zlib.error) as error:
        raise ImageReadError(f"{path}: corrupt compressed file ({error}); {ADVICE}") from error


def _nifti_expected_bytes(head: bytes) -> int | None:
    """``vox_offset + voxels x bytes per voxel`` from a NIfTI-1 or -2 header block, or None when
    it does not parse (the image reader then reports the file itself)."""
    from nibabel.nifti1 import Nifti1Header
    from nibabel.nifti2 import Nifti2Header

    for header_class in (Nifti1Header, Nifti2Header):
        size = header_class.template_dtype.itemsize
        if len(head) < size:
            continue
        try:
            header = header_class(binaryblock=head[:size], check=False)
            if int(header["sizeof_hdr"]) != size:
                continue
            shape = header.get_data_shape()
            itemsize = header.get_data_dtype().itemsize
            offset = int(header.get_data_offset())
        except Exception:  # nibabel raises many types for malformed headers
            continue
        return offset + int(np.prod(shape, dtype=np.int64)) * int(itemsize)
    return None


def check_written_image(path: str | os.PathLike) -> None:
    """Raise :class:`ImageWriteError` unless the file just written is non-empty and reads back.

    Why: SimpleITK's writer does not raise on a full disk (ENOSPC); it leaves an empty or cut
    file, which an atomic rename would then publish under its final name, and a resumed run
    would take as done. Called by the writers before their caller renames the file into place.
    """
    path = Path(path)
    size = path.stat().st_size if path.is_file() else 0
    if size == 0:
        raise ImageWriteError(f"{path}: written file is empty (disk full?); nothing was published under this name")
    try:
        check_image_integrity(path)
        if path.name.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")):
            from PIL import Image

            with Image.open(path) as opened:
                opened.load()
        else:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
    except (ImageReadError, OSError, RuntimeError, ValueError) as error:
        raise ImageWriteError(
            f"{path}: written file does not read back (disk full?): {str(error).strip().splitlines()[-1][:200]}"
        ) from error
