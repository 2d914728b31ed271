"""The inverse of the case pipeline, for exporting predictions in the input's own geometry:
resample class probabilities back to the cropped shape (order 1, separate coarse axis), take
the argmax, put the crop back into the full image, and undo the transpose."""

from __future__ import annotations

import numpy as np

from medseg_auto.imaging.resampling import ANISOTROPY_THRESHOLD, lowres_axis, resample
from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.preprocessing.cache import CaseProperties


def probabilities_to_original_grid(
    probabilities: np.ndarray, properties: CaseProperties, plans: Plans, config: ConfigurationPlan
) -> np.ndarray:
    """``(K, z, y, x)`` probabilities in preprocessed space -> ``(K, Z, Y, X)`` in the file's
    array order, with background probability 1 outside the cropped region."""
    target_shape = properties.shape_after_cropping_before_resampling
    spacing_t = [properties.original_spacing[axis] for axis in plans.transpose_forward]
    separate = lowres_axis(properties.spacing_after_resampling, spacing_t, ANISOTROPY_THRESHOLD)
    order = config.resampling_probabilities
    resampled = resample(probabilities.astype(np.float32, copy=False), target_shape, False, order.order, order.order_z, separate)
    full = np.zeros((resampled.shape[0], *properties.shape_before_cropping), dtype=np.float32)
    full[0] = 1.0
    box = tuple(slice(start, stop) for start, stop in properties.bbox_used_for_cropping)
    full[(slice(None),) + box] = resampled
    return full.transpose([0] + [axis + 1 for axis in plans.transpose_backward])


def probabilities_to_segmentation(probabilities: np.ndarray) -> np.ndarray:
    """Argmax over classes: ``(K, Z, Y, X)`` -> ``(Z, Y, X)`` uint8/int16 labels."""
    labels = np.argmax(probabilities, axis=0)
    return labels.astype(np.uint8 if probabilities.shape[0] < 256 else np.int16)
