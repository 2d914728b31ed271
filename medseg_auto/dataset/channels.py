"""Fit an image's channel count to a model's: external sites send RGB PNGs to grey models.

Why not refuse: a new hospital's 2D exports are often RGB even when grey at heart (three equal
channels), or grey where the model was trained on RGB; refusing makes a benchmark on unseen
data impossible without hand conversion. Conversions (always with a logged warning):

- 3 (or 4, alpha dropped) channels -> 1: ITU-R BT.601 luminance ``0.299 R + 0.587 G + 0.114 B``
  (PIL's ``convert("L")``; exact for grey-at-heart RGB, whose channels are equal);
- 1 -> N: the grey channel repeated N times;
- anything else (e.g. 2 -> 3) is still refused, naming the file.
"""

from __future__ import annotations

import numpy as np

from medseg_auto.errors import DatasetError
from medseg_auto.utils.logging_setup import get_logger

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
log = get_logger("dataset.channels")


def luminance(image: np.ndarray) -> np.ndarray:
    """``(1, Z, Y, X)`` float32 luminance of an RGB(A) ``(3|4, Z, Y, X)`` image (alpha ignored)."""
    weights = np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32).reshape(3, 1, 1, 1)
    return (image[:3].astype(np.float32, copy=False) * weights).sum(axis=0, keepdims=True)


def fit_channels(data: np.ndarray, num_channels: int, source: str) -> np.ndarray:
    """``data (C, Z, Y, X)`` with ``num_channels`` channels; ``source`` (a file) names the case in
    the warning or error."""
    have = data.shape[0]
    if have == num_channels:
        return data
    if num_channels == 1 and have in (3, 4):
        rgb = data[:3].astype(np.float32, copy=False)
        grey_at_heart = bool(np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[0], rgb[2]))
        log.warning("%s: %d channels, the model expects 1: converted to luminance (0.299 R + 0.587 G + 0.114 B%s%s)",
                    source, have, ", alpha dropped" if have == 4 else "",
                    "; the channels were equal, so nothing is lost" if grey_at_heart else "")
        return luminance(rgb)
    if have == 1:
        log.warning("%s: 1 channel, the model expects %d: the grey channel is repeated", source, num_channels)
        return np.repeat(data, num_channels, axis=0)
    raise DatasetError(f"{source}: {have} channel(s), the model expects {num_channels}; convert the image "
                       f"(only RGB/RGBA -> grey and grey -> N channels are converted automatically)")
