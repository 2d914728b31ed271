"""The one case pipeline: transpose -> crop to non-zero -> normalize -> resample.

Used to build the training cache and, unchanged, by prediction (``seg=None``); the returned
:class:`CaseProperties` hold what :mod:`medseg_auto.preprocessing.restore` needs to bring a
prediction back to the original geometry. Normalization comes before resampling, as in
nnU-Net, so the non-zero mask still matches the image it was computed on.
"""

from __future__ import annotations

import math

import numpy as np

from medseg_auto.dataset.image_io import ImageGeometry
from medseg_auto.imaging.cropping import crop_to_nonzero
from medseg_auto.imaging.normalization import normalize_channel
from medseg_auto.imaging.resampling import ANISOTROPY_THRESHOLD, compute_new_shape, lowres_axis, resample
from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.preprocessing.cache import CaseProperties

MAX_LOCATIONS_PER_CLASS = 10_000
MIN_LOCATION_COVERAGE = 0.01
LOCATION_SEED = 1234


def target_spacing_for(config: ConfigurationPlan, spacing_transposed: list[float]) -> list[float]:
    """The configuration's spacing; 2D configurations keep the slice axis as it is."""
    if config.is_2d:
        return [float(spacing_transposed[0]), *config.spacing]
    return list(config.spacing)


def preprocess_case(
    data: np.ndarray,
    seg: np.ndarray | None,
    geometry: ImageGeometry,
    plans: Plans,
    config: ConfigurationPlan,
    case_id: str,
    site: str | None = None,
    sample_locations: bool = True,
) -> tuple[np.ndarray, np.ndarray, CaseProperties]:
    """Preprocess ``data (C, Z, Y, X)`` and optional ``seg (1, Z, Y, X)``.

    Returns ``(data, seg, properties)`` in the plans' axis order and target spacing; ``seg`` has
    -1 outside the non-zero region (or is only that mask when no labels were given).
    """
    axes = [0] + [axis + 1 for axis in plans.transpose_forward]
    original_shape = list(data.shape[1:])
    data = data.transpose(axes)
    if seg is not None:
        seg = seg.transpose(axes)
    spacing_t = [float(geometry.spacing[axis]) for axis in plans.transpose_forward]
    shape_before_cropping = list(data.shape[1:])
    data, seg, bbox = crop_to_nonzero(data, seg)
    shape_after_cropping = list(data.shape[1:])

    inside = seg[0] >= 0
    intensity = plans.foreground_intensity_properties_per_channel
    data = np.stack([
        normalize_channel(data[c], config.normalization_schemes[c], config.use_mask_for_norm[c], inside,
                          intensity.get(str(c)))
        for c in range(data.shape[0])
    ])

    target = target_spacing_for(config, spacing_t)
    new_shape = compute_new_shape(shape_after_cropping, spacing_t, target)
    separate = lowres_axis(spacing_t, target, ANISOTROPY_THRESHOLD)
    data = resample(data, new_shape, False, config.resampling_data.order, config.resampling_data.order_z, separate)
    seg = resample(seg, new_shape, True, config.resampling_seg.order, config.resampling_seg.order_z, separate)

    properties = CaseProperties(
        case_id=case_id,
        geometry=geometry.to_json(),
        original_shape=original_shape,
        original_spacing=[float(v) for v in geometry.spacing],
        shape_before_cropping=shape_before_cropping,
        bbox_used_for_cropping=bbox,
        shape_after_cropping_before_resampling=shape_after_cropping,
        spacing_after_resampling=target,
        site=site,
        class_locations=sample_class_locations(seg, plans) if sample_locations else {},
    )
    return data.astype(np.float32, copy=False), seg.astype(np.int16, copy=False), properties


def sample_class_locations(seg: np.ndarray, plans: Plans) -> dict[str, list[list[int]]]:
    """Per foreground label, up to 10,000 voxel coordinates ``[c, z, y, x]`` (at least 1% of
    its voxels), drawn without replacement with a fixed seed, for foreground oversampling."""
    rng = np.random.default_rng(LOCATION_SEED)
    locations: dict[str, list[list[int]]] = {}
    for label in sorted(set(plans.labels.values()) - {0}):
        coordinates = np.argwhere(seg == label)
        if len(coordinates) == 0:
            locations[str(label)] = []
            continue
        count = min(MAX_LOCATIONS_PER_CLASS, len(coordinates))
        count = max(count, int(math.ceil(len(coordinates) * MIN_LOCATION_COVERAGE)))
        chosen = rng.choice(len(coordinates), count, replace=False)
        locations[str(label)] = coordinates[np.sort(chosen)].tolist()
    return locations
