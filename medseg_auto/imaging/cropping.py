"""Cropping to the non-zero region (nnU-Net's ``crop_to_nonzero``), used by the fingerprint and
by the case pipeline, so both see exactly the same crop."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes

OUTSIDE_NONZERO_LABEL = -1


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """``(Z, Y, X)`` bool: voxels where any channel of ``data (C, Z, Y, X)`` is non-zero, holes filled.

    Holes are filled so that dark structures inside the body (air in the bowel, ventricles)
    are not treated as outside the image.
    """
    mask = np.any(data != 0, axis=0)
    return binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """``[[start, stop), ...]`` per axis of the True region; the whole array if none is True."""
    if not mask.any():
        return [[0, size] for size in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        box.append([int(present[0]), int(present[-1]) + 1])
    return box


def crop_to_bbox(array: np.ndarray, box: list[list[int]]) -> np.ndarray:
    """Crop the last ``len(box)`` axes of ``array`` to ``box``."""
    leading = (slice(None),) * (array.ndim - len(box))
    return array[leading + tuple(slice(start, stop) for start, stop in box)]


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Crop ``data (C, Z, Y, X)`` and ``seg (1, Z, Y, X)`` to the non-zero region.

    Returns ``(data, seg, bbox)``. In the cropped ``seg``, background voxels outside the
    non-zero mask are set to -1 so that normalization with ``use_mask_for_norm`` and patch
    sampling can tell "outside the body" from "background tissue". Without ``seg``, the
    returned seg carries only that -1/0 mask.
    """
    mask = nonzero_mask(data)
    box = bounding_box(mask)
    data = crop_to_bbox(data, box)
    mask = crop_to_bbox(mask, box)[None]
    if seg is None:
        seg = np.where(mask, 0, OUTSIDE_NONZERO_LABEL).astype(np.int16)
    else:
        seg = crop_to_bbox(seg, box).astype(np.int16, copy=True)
        seg[(seg == 0) & ~mask] = OUTSIDE_NONZERO_LABEL
    return data, seg, box
