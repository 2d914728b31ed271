"""Per-case, per-class segmentation metrics: overlap, surface distances, volumes.

This is the one place that turns a predicted and a reference label map into numbers; the
folder evaluation (``evaluate.py``) and the training's final validation (arrays in memory)
both call :func:`evaluate_arrays`, so the two can never disagree.

Conventions (nnU-Net v2's for overlap, ``evaluation/evaluate_predictions.py``):

- ``dice = 2TP / (2TP + FP + FN)``, ``iou = TP / (TP + FP + FN)``.
- **Both empty** (class absent from reference and prediction): dice and iou are NaN (there is
  nothing to get right or wrong, so the case must not pull a mean up or down); hd95 and asd NaN.
- **One empty** (a missed structure, or a false-positive one): dice and iou are 0 (the formula
  gives it); hd95 and asd are **NaN**, not inf, with ``ref_empty`` / ``pred_empty`` saying why,
  so that a nan-mean over cases stays finite. Such cases are counted in the summary
  (``num_distance_undefined``) so they are not silently forgotten.
- hd95 and asd are in physical units (mm) using the image spacing, computed with MONAI's
  ``compute_hausdorff_distance(percentile=95)`` (the larger of the two directed 95th
  percentiles) and ``compute_average_surface_distance(symmetric=True)`` (mean over the
  surface voxels of both masks).
- 2D images (``is_2d``; arrays with Z = 1 and the dummy spacing 999 on axis 0) are measured in
  the (y, x) plane only; their volumes are areas in mm^2 (the ``vol_*_mm`` columns hold mm^3
  for 3D cases, mm^2 for 2D ones).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

HD_PERCENTILE = 95.0

#: Keys of every per-class row, in the order tables show them.
CLASS_ROW_KEYS = (
    "class", "dice", "iou", "hd95", "asd", "tp", "fp", "fn", "n_ref", "n_pred",
    "vol_ref_mm", "vol_pred_mm", "ref_empty", "pred_empty",
)


def evaluate_arrays(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    labels: Sequence[int],
    is_2d: bool,
) -> list[dict]:
    """Metrics of one case for each foreground label in ``labels``.

    Args:
        prediction: predicted label map, ``(Z, Y, X)`` integers (Z = 1 for 2D).
        reference: reference label map, same shape.
        spacing: voxel spacing in (z, y, x) order, mm; for 2D the z entry is ignored.
        labels: foreground label values to score (0 is skipped if present).
        is_2d: measure distances and areas in the (y, x) plane of the single slice.

    Returns:
        One dict per label with the keys of :data:`CLASS_ROW_KEYS` (see the module docstring
        for the empty-mask conventions).
    """
    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    if prediction.ndim != 3 or len(spacing) != 3:
        raise ValueError(f"expected (Z, Y, X) arrays and (z, y, x) spacing, got {prediction.shape} and {tuple(spacing)}")
    if is_2d:
        if prediction.shape[0] != 1:
            raise ValueError(f"a 2D case must have Z = 1, got shape {prediction.shape}")
        prediction, reference = prediction[0], reference[0]
        spacing = spacing[1:]
    physical_spacing = tuple(float(v) for v in spacing)
    voxel_size = float(np.prod(physical_spacing))
    return [
        _class_row(prediction == label, reference == label, int(label), physical_spacing, voxel_size)
        for label in labels
        if int(label) != 0
    ]


def both_empty_row(label: int) -> dict:
    """The row :func:`evaluate_arrays` gives a label absent from reference and prediction.

    Used when labels are inferred per case, to fill in the classes a case does not contain.
    """
    return {
        "class": int(label), "dice": math.nan, "iou": math.nan, "hd95": math.nan, "asd": math.nan,
        "tp": 0, "fp": 0, "fn": 0, "n_ref": 0, "n_pred": 0, "vol_ref_mm": 0.0, "vol_pred_mm": 0.0,
        "ref_empty": True, "pred_empty": True,
    }


def _class_row(
    predicted: np.ndarray, expected: np.ndarray, label: int, spacing: tuple[float, ...], voxel_size: float
) -> dict:
    """Row for one binary pair ``(Y, X)`` or ``(Z, Y, X)``; ``spacing`` matches their axes."""
    n_pred = int(np.count_nonzero(predicted))
    n_ref = int(np.count_nonzero(expected))
    if n_pred == 0 and n_ref == 0:
        return both_empty_row(label)
    tp = int(np.count_nonzero(predicted & expected))
    fp, fn = n_pred - tp, n_ref - tp
    hd95, asd = math.nan, math.nan
    if n_pred and n_ref:
        hd95, asd = surface_distances(predicted, expected, spacing)
    return {
        "class": label,
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
        "hd95": hd95,
        "asd": asd,
        "tp": tp, "fp": fp, "fn": fn, "n_ref": n_ref, "n_pred": n_pred,
        "vol_ref_mm": n_ref * voxel_size,
        "vol_pred_mm": n_pred * voxel_size,
        "ref_empty": n_ref == 0,
        "pred_empty": n_pred == 0,
    }


def surface_distances(predicted: np.ndarray, expected: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """(HD95, average symmetric surface distance) in mm of two non-empty binary masks.

    ``predicted``/``expected``: boolean ``(Y, X)`` or ``(Z, Y, X)``; ``spacing`` per axis.
    Both masks are first cropped to their joint bounding box plus one background voxel (clipped
    at the image border), which leaves every surface voxel and distance unchanged but spares
    MONAI a float copy of the whole volume.
    """
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    predicted, expected = _crop_to_union(predicted, expected)
    y_pred = predicted[None, None]  # (B=1, C=1, *spatial), the one-hot layout MONAI expects
    y = expected[None, None]
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes its own deprecated ``always_return_as_numpy`` argument internally.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd95 = compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=HD_PERCENTILE, spacing=list(spacing)
        )
        asd = compute_average_surface_distance(
            y_pred, y, include_background=True, symmetric=True, spacing=list(spacing)
        )
    return float(hd95.reshape(-1)[0]), float(asd.reshape(-1)[0])


def _crop_to_union(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of ``first | second`` grown by one voxel."""
    union = first | second
    slices = []
    for axis in range(union.ndim):
        other_axes = tuple(a for a in range(union.ndim) if a != axis)
        present = np.flatnonzero(union.any(axis=other_axes))
        start = max(int(present[0]) - 1, 0)
        stop = min(int(present[-1]) + 2, union.shape[axis])
        slices.append(slice(start, stop))
    window = tuple(slices)
    return np.ascontiguousarray(first[window]), np.ascontiguousarray(second[window])
