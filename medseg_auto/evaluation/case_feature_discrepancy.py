"""Per-case feature discrepancy ``L_fd`` of a trained network, for ``compare``'s scatter plot.

Roy et al. relate each test sample's ``L_fd`` (eq. 1: ``-log`` of the distance between its
foreground and background feature means, per layer) to its Dice: samples whose features keep
foreground and background apart should segment better. Training logs ``L_fd`` per batch only, so
this module measures it per case after training, with the ground-truth mask, for any trained
network with DynUNet feature taps (Base as well as FeatureDiscrepancy runs).

What is measured, and why so:
- Input: one patch of the configuration's patch size from the preprocessed cache, centred on the
  foreground's centre of mass (padded with 0 where the image is smaller), the same kind of input
  the network and the loss saw in training; a whole 3D image could need far more memory than a
  patch. For a 2D configuration of a volume, the slice with the most foreground.
- Per layer: :func:`~medseg_auto.training.losses.feature_discrepancy.discrepancy_loss` on every
  encoder, bottleneck and decoder tap, with the channel variance of this one case as the scale
  (the ``variance`` normalisation at batch size 1; ``none`` for the raw distance).
- ``l_fd``: the unweighted mean over layers (learnt layer weights exist only for FeatureDiscrepancy
  runs, and a comparison between runs needs one definition). Per-layer values are kept as
  ``l_fd/TAP`` columns. A case without foreground has no ``L_fd`` (empty cells).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from medseg_auto.errors import MedsegError
from medseg_auto.evaluation.compare import LFD_COLUMN, PER_CASE_LFD_FILE  # noqa: F401 (re-exported: the file compare reads)
from medseg_auto.planning.plans import ConfigurationPlan
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.losses.feature_discrepancy import (
    NORMALIZATIONS, MaskPyramid, discrepancy_loss, layer_statistics,
)
from medseg_auto.training.network import FeatureTaps, tap_channels
from medseg_auto.utils.atomic import atomic_path
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("evaluation.case_feature_discrepancy")


def foreground_patch(data: np.ndarray, seg: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """``data`` ``(C, *stored)``, ``seg`` ``(1, *stored)`` -> a ``(C, *patch)``, ``(1, *patch)`` crop
    centred on the foreground's centre of mass, or None when the case has no foreground.

    ``seg`` values below 0 (outside the non-zero region) count as background.
    """
    labels = np.asarray(seg[0])
    if not (labels > 0).any():
        return None
    data = np.asarray(data)
    if len(patch_size) == 2 and labels.ndim == 3:  # 2D configuration: the slice with most foreground
        slice_index = int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(1)))
        labels, data = labels[slice_index], data[:, slice_index]
    if labels.ndim != len(patch_size):
        raise MedsegError(f"case of shape {labels.shape} does not fit a {len(patch_size)}D patch {list(patch_size)}")
    centre = np.round(np.argwhere(labels > 0).mean(0)).astype(int)
    patch = np.asarray(patch_size, dtype=int)
    start = centre - patch // 2
    shape = np.asarray(labels.shape)
    start = np.clip(start, np.minimum(0, shape - patch), np.maximum(0, shape - patch))
    return _crop(data, start, patch, 0.0, np.float32), _crop(labels[None], start, patch, 0, np.int64)


def _crop(array: np.ndarray, start: np.ndarray, size: np.ndarray, fill: float, dtype) -> np.ndarray:
    """``array[:, start:start+size]`` with out-of-range parts filled with ``fill``."""
    out = np.full((array.shape[0], *size), fill, dtype=dtype)
    source = tuple(slice(max(0, s), min(edge, s + n)) for s, n, edge in zip(start, size, array.shape[1:]))
    target = tuple(slice(src.start - s, src.stop - s) for src, s in zip(source, start))
    out[(slice(None), *target)] = array[(slice(None), *source)]
    return out


@torch.no_grad()
def case_feature_discrepancy(network: nn.Module, data: np.ndarray, seg: np.ndarray, num_classes: int,
                             device: torch.device, normalization: str = "variance") -> dict[str, float]:
    """``{TAP: L_fd}`` of one ``(C, *patch)`` image and its ``(1, *patch)`` labels (layers without
    a foreground-background pair are left out)."""
    if normalization not in NORMALIZATIONS:
        raise MedsegError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    taps = list(tap_channels(network))
    if not taps:
        raise MedsegError(f"per-case L_fd needs a DynUNet-based network with feature taps; {type(network).__name__} has none")
    recorder = FeatureTaps(network, taps)
    try:
        network(torch.from_numpy(data)[None].to(device))
        masks = MaskPyramid(torch.from_numpy(seg)[None].to(device), num_classes)
        values = {}
        for tap in taps:
            feature = recorder.features[tap].float()
            value, count = discrepancy_loss(layer_statistics(feature, masks.at(feature.shape[2:]), normalization))
            if int(count) > 0:
                values[tap] = float(value)
        return values
    finally:
        recorder.remove()


def per_case_feature_discrepancy(network: nn.Module, config: ConfigurationPlan, num_classes: int,
                                 cache: PreprocessedCache, case_ids: Sequence[str], device: torch.device,
                                 normalization: str = "variance", show_progress: bool = False) -> pd.DataFrame:
    """One row per case: ``case``, ``l_fd`` (mean over layers) and ``l_fd/TAP`` per layer."""
    was_training = network.training
    network.eval()
    rows = []
    try:
        for case_id in tqdm(case_ids, desc="per-case L_fd", unit="case", disable=not show_progress):
            data, seg, _ = cache.load_case(case_id)
            patch = foreground_patch(data, seg, config.patch_size)
            row: dict[str, object] = {"case": case_id}
            if patch is not None:
                layers = case_feature_discrepancy(network, *patch, num_classes, device, normalization)
                row[LFD_COLUMN] = float(np.mean(list(layers.values()))) if layers else math.nan
                row.update({f"{LFD_COLUMN}/{tap}": value for tap, value in layers.items()})
            rows.append(row)
    finally:
        network.train(was_training)
    frame = pd.DataFrame(rows)
    if LFD_COLUMN not in frame:
        frame[LFD_COLUMN] = math.nan
    return frame


def write_per_case_feature_discrepancy(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` (CSV) atomically; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".csv") as temporary:
        frame.to_csv(temporary, index=False)
    defined = frame[LFD_COLUMN].notna()
    log.info("per-case L_fd of %d case(s) (%d without foreground) -> %s", int(defined.sum()),
             int((~defined).sum()), path)
    return path
