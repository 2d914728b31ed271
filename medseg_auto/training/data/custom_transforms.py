"""The three small batch transforms nnU-Net v2.4.2 adds to batchgenerators v1.

Each is a callable on the batch dict, like every batchgenerators transform:
``data`` float32 ``(B, C, *spatial)`` and ``seg`` ``(B, 1, *spatial)``.
"""

from __future__ import annotations

from typing import Any, Sequence

from batchgenerators.transforms.abstract_transforms import AbstractTransform


class Convert3DTo2DTransform(AbstractTransform):
    """Fold z into the channels, ``(B, C, Z, Y, X) -> (B, C*Z, Y, X)``, for "dummy 2D" augmentation.

    Strongly anisotropic 3D patches are rotated and scaled in-plane only, slice by slice with
    the same parameters; the original shape is kept under ``orig_shape_<key>`` for the way back.
    """

    def __init__(self, keys: Sequence[str] = ("data", "seg")) -> None:
        self.keys = tuple(keys)

    def __call__(self, **batch: Any) -> dict[str, Any]:
        for key in self.keys:
            shape = batch[key].shape
            if len(shape) != 5:
                raise ValueError(f"Convert3DTo2DTransform expects (B, C, Z, Y, X) for '{key}', got {shape}")
            batch[key] = batch[key].reshape(shape[0], shape[1] * shape[2], shape[3], shape[4])
            batch[f"orig_shape_{key}"] = shape
        return batch


class Convert2DTo3DTransform(AbstractTransform):
    """Undo :class:`Convert3DTo2DTransform`: ``(B, C*Z, Y', X') -> (B, C, Z, Y', X')``."""

    def __init__(self, keys: Sequence[str] = ("data", "seg")) -> None:
        self.keys = tuple(keys)

    def __call__(self, **batch: Any) -> dict[str, Any]:
        for key in self.keys:
            original = batch.pop(f"orig_shape_{key}")
            current = batch[key].shape
            batch[key] = batch[key].reshape(original[0], original[1], original[2], current[-2], current[-1])
        return batch


class MaskOutsideTransform(AbstractTransform):
    """Set ``data[:, c]`` to 0 where ``seg[:, 0] < 0`` for the given channels (nnU-Net's ``MaskTransform``).

    Channels normalised inside the non-zero mask only (``use_mask_for_norm``) must stay 0
    outside it, as at inference; intensity augmentation would otherwise have changed them.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        self.channels = tuple(channels)

    def __call__(self, **batch: Any) -> dict[str, Any]:
        outside = batch["seg"][:, 0] < 0
        for channel in self.channels:
            batch["data"][:, channel][outside] = 0
        return batch


class PaddingMaskTransform(AbstractTransform):
    """``batch["padding"] = seg < 0``, bool ``(B, 1, *patch)``: where the patch lies outside the
    image (padding, rotation borders) or outside its non-zero region. Taken before ``seg -1 -> 0``
    turns those voxels into background, for losses that must not count them as background
    (FeatureDiscrepancy's masks)."""

    def __call__(self, **batch: Any) -> dict[str, Any]:
        batch["padding"] = batch["seg"] < 0
        return batch
