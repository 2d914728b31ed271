"""Turning the masks found next to natural images into label maps.

Masks come in three kinds, told apart per file by their values:

- ``binary``: 0/1, or 0 and one value of 128 or more (0/255, 0/65535): that value becomes 1;
- ``labels``: values already 0..K with 2 <= K <= ``MAX_LABEL_VALUE`` (63): kept as they are
  (so a mask holding only 0 and 2 stays 0/2, as it must in a multi-label dataset);
- ``greyscale``: anti-aliased 0..255 masks with in-between values (largest value >= 128):
  thresholded, values above ``THRESHOLD`` (127) become 1.

Anything else (values 64..127 at most, or beyond 255 with more than two values) is refused:
guessing would silently change the segmentation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg_auto.errors import DatasetError

THRESHOLD = 127
MAX_LABEL_VALUE = 63


def mask_to_label_map(mask: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """Convert a ``(C, 1, Y, X)`` mask as read into a ``(1, Y, X)`` uint8 label map and its kind.

    A colour mask with identical channels is read as grey; one with differing channels is
    refused (a colour-coded label map needs an explicit colour table, which we do not guess).
    """
    if mask.shape[0] > 1:
        if not all(np.array_equal(mask[0], mask[c]) for c in range(1, mask.shape[0])):
            raise DatasetError(
                f"{path}: colour mask with differing channels; save it as a greyscale label map "
                "(0 = background, 1..K = labels, or 0/255)"
            )
    plane = mask[0]
    values = np.unique(plane)
    if values.size and values.min() < 0:
        raise DatasetError(f"{path}: mask holds negative values {values[values < 0][:5].tolist()}")
    largest = int(values.max()) if values.size else 0
    if largest <= 1:
        return plane.astype(np.uint8), "binary"
    if largest <= MAX_LABEL_VALUE:
        return plane.astype(np.uint8), "labels"
    if largest >= 128 and np.all((values == 0) | (values == largest)):
        return (plane > 0).astype(np.uint8), "binary"
    if 128 <= largest <= 255:
        return (plane > THRESHOLD).astype(np.uint8), "greyscale"
    raise DatasetError(
        f"{path}: mask values {values[:8].tolist()}{'...' if values.size > 8 else ''} are neither binary, "
        f"labels 0..{MAX_LABEL_VALUE}, nor a 0..255 greyscale mask; convert it to 0/255 or 0..K"
    )


def resize_nearest(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes of ``plane`` to ``shape`` ``(Y, X)``.

    Sampling at pixel centres (as Pillow's NEAREST does) keeps the mask centred, and nearest
    interpolation creates no new values, so the mask kind is unchanged by resizing.
    """
    rows = _nearest_indices(plane.shape[-2], shape[0])
    columns = _nearest_indices(plane.shape[-1], shape[1])
    return plane[..., rows[:, None], columns[None, :]]


def _nearest_indices(source: int, target: int) -> np.ndarray:
    centres = (np.arange(target) + 0.5) * source / target
    return np.minimum(np.floor(centres).astype(np.int64), source - 1)
