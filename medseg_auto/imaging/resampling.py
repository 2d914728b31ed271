"""Resampling to a target spacing, with nnU-Net's separate handling of the low-resolution axis.

Data: cubic spline (order 3) via scikit-image's ``resize`` (what nnU-Net uses); labels:
batchgenerators' ``resize_segmentation`` (each label interpolated as a mask, order 1, then
thresholded), so thin structures survive. For anisotropic spacing (ratio > 3) the volume is
resampled in-plane slice by slice with ``order`` and along the coarse axis with ``order_z``
(nearest by default), which avoids smearing across thick slices.
"""

from __future__ import annotations

import numpy as np
from batchgenerators.augmentations.utils import resize_segmentation
from skimage.transform import resize

ANISOTROPY_THRESHOLD = 3.0


def compute_new_shape(shape: list[int] | tuple[int, ...], spacing, new_spacing) -> list[int]:
    """Shape after resampling from ``spacing`` to ``new_spacing``."""
    return [int(round(s * o / n)) for s, o, n in zip(shape, spacing, new_spacing)]


def lowres_axis(spacing, new_spacing, threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The axis to resample separately, or None (isotropic enough, or two coarse axes)."""
    for candidate in (np.asarray(spacing, float), np.asarray(new_spacing, float)):
        if candidate.max() / candidate.min() > threshold:
            coarse = np.flatnonzero(candidate == candidate.max())
            return int(coarse[0]) if len(coarse) == 1 else None
    return None


def resample(
    array: np.ndarray, new_shape: list[int], is_seg: bool, order: int, order_z: int, separate_axis: int | None
) -> np.ndarray:
    """Resample ``array (C, Z, Y, X)`` to spatial ``new_shape``; labels keep their values."""
    if tuple(array.shape[1:]) == tuple(new_shape):
        return array
    output = np.empty((array.shape[0], *new_shape), dtype=np.float32 if not is_seg else array.dtype)
    for channel in range(array.shape[0]):
        output[channel] = _resample_channel(array[channel], new_shape, is_seg, order, order_z, separate_axis)
    return output


def _resize(image: np.ndarray, shape, is_seg: bool, order: int) -> np.ndarray:
    if is_seg:
        return resize_segmentation(image, tuple(shape), order=order)
    return resize(image.astype(np.float32, copy=False), tuple(shape), order=order, mode="edge", anti_aliasing=False)


def _resample_channel(image, new_shape, is_seg, order, order_z, separate_axis):
    if separate_axis is None:
        return _resize(image, new_shape, is_seg, order)
    moved = np.moveaxis(image, separate_axis, 0)
    target = list(new_shape)
    coarse_size = target.pop(separate_axis)
    in_plane = np.stack([_resize(moved[i], target, is_seg, order) for i in range(moved.shape[0])])
    if coarse_size != in_plane.shape[0]:
        in_plane = _resize(in_plane, [coarse_size, *target], is_seg, order_z) if order_z > 0 or not is_seg \
            else _nearest_along_first_axis(in_plane, coarse_size)
    return np.moveaxis(in_plane, 0, separate_axis)


def _nearest_along_first_axis(array: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resampling of axis 0 (pixel-centre aligned), exact for labels."""
    positions = (np.arange(size) + 0.5) * array.shape[0] / size - 0.5
    indices = np.clip(np.round(positions).astype(int), 0, array.shape[0] - 1)
    return array[indices]
