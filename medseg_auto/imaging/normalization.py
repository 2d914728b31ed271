"""Per-channel intensity normalization, chosen from the channel name in dataset.json (nnU-Net's
mapping: ``CT`` -> CT scheme, ``noNorm``, ``zscore``, ``rescale_to_0_1``, ``rgb_to_0_1``;
anything else, e.g. ``T1`` or ``MRI``, -> per-image z-score)."""

from __future__ import annotations

import numpy as np

ZSCORE = "ZScoreNormalization"
CT = "CTNormalization"
NO_NORM = "NoNormalization"
RESCALE_01 = "RescaleTo01Normalization"
RGB_01 = "RGBTo01Normalization"

_NAME_TO_SCHEME = {"ct": CT, "nonorm": NO_NORM, "zscore": ZSCORE, "rescale_to_0_1": RESCALE_01, "rgb_to_0_1": RGB_01}
EPSILON = 1e-8


def scheme_for_channel(channel_name: str) -> str:
    """The normalization scheme for a dataset.json channel name (case-insensitive)."""
    return _NAME_TO_SCHEME.get(channel_name.casefold(), ZSCORE)


def normalize_channel(
    image: np.ndarray,
    scheme: str,
    use_mask: bool,
    nonzero_mask: np.ndarray | None,
    intensity_properties: dict[str, float] | None,
) -> np.ndarray:
    """Normalize one channel ``(Z, Y, X)`` float32 and return it.

    ``use_mask`` (z-score only): statistics from, and normalization of, the non-zero region;
    outside stays 0. CT uses the dataset's foreground statistics from the fingerprint: clip to
    its 0.5/99.5 percentiles, then subtract its mean and divide by its std.
    """
    image = image.astype(np.float32, copy=True)
    if scheme == ZSCORE:
        if use_mask and nonzero_mask is not None and nonzero_mask.any():
            values = image[nonzero_mask]
            image[nonzero_mask] = (values - values.mean()) / max(float(values.std()), EPSILON)
            image[~nonzero_mask] = 0
            return image
        return (image - image.mean()) / max(float(image.std()), EPSILON)
    if scheme == CT:
        if intensity_properties is None:
            raise ValueError("CT normalization needs the dataset's foreground intensity statistics")
        np.clip(image, intensity_properties["percentile_00_5"], intensity_properties["percentile_99_5"], out=image)
        return (image - intensity_properties["mean"]) / max(float(intensity_properties["std"]), EPSILON)
    if scheme == NO_NORM:
        return image
    if scheme == RESCALE_01:
        low, high = float(image.min()), float(image.max())
        return (image - low) / max(high - low, EPSILON)
    if scheme == RGB_01:
        return image / 255.0
    raise ValueError(f"unknown normalization scheme {scheme!r}")
