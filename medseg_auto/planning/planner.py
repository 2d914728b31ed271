"""The experiment planner: fingerprint + preset -> :class:`Plans`.

The arithmetic follows nnU-Net v2's default ``ExperimentPlanner`` (see
``../shared/reference/NOTES_nnunet_monai.md`` section 1.3), so that on the same fingerprint our
plans make the same decisions: target spacing (median, 10th percentile on a strongly
anisotropic axis), transpose (coarsest axis first), normalization per channel, patch size and
topology under a memory proxy, batch size capped at 5% of the dataset, ``3d_lowres`` when the
full-resolution patch covers too little of the median image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.errors import PlansError
from medseg_auto.imaging.normalization import ZSCORE, scheme_for_channel
from medseg_auto.imaging.resampling import compute_new_shape
from medseg_auto.planning.memory_estimate import conv_feature_map_size
from medseg_auto.planning.plans import ConfigurationPlan, NetworkPlan, Plans, ResamplingPlan
from medseg_auto.planning.presets import PlannerPreset
from medseg_auto.planning.topology import Topology, pool_and_conv_props
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("planner")
LOWRES_SPACING_STEP = 1.03


def fullres_target_spacing(spacings: np.ndarray, shapes: np.ndarray, anisotropy_threshold: float) -> np.ndarray:
    """Median spacing; on a strongly anisotropic axis (in spacing *and* voxel count) the 10th
    percentile instead, so the coarse axis is not resampled to needlessly few slices."""
    target = np.percentile(spacings, 50, axis=0)
    target_size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [axis for axis in range(len(target)) if axis != worst]
    anisotropic_spacing = target[worst] > anisotropy_threshold * max(target[others])
    anisotropic_voxels = target_size[worst] * anisotropy_threshold < min(target_size[others])
    if anisotropic_spacing and anisotropic_voxels:
        coarse = np.percentile(spacings[:, worst], 10)
        if coarse < max(target[others]):
            coarse = max(max(target[others]), coarse) + 1e-5
        target[worst] = coarse
    return target


def coarsened_spacing(target: np.ndarray, shapes: np.ndarray, scale: float) -> np.ndarray:
    """``target * scale`` on every axis that has more than one voxel (a 2D image's dummy axis
    keeps its spacing). ``scale > 1`` is what the ``cpu_coarse`` preset uses: fewer voxels per
    case, so experiments with many training runs fit a CPU budget (nnU-Net has no such knob)."""
    if scale == 1.0:
        return target
    if scale <= 0:
        raise PlansError(f"preset spacing_scale must be positive, got {scale}")
    has_extent = np.median(shapes, axis=0) > 1
    return np.where(has_extent, target * scale, target)


def transpose_for(target_spacing: np.ndarray) -> tuple[list[int], list[int]]:
    """Put the coarsest axis first (2D slices are taken along it); return forward and backward."""
    coarsest = int(np.argmax(target_spacing))
    forward = [coarsest] + [axis for axis in range(len(target_spacing)) if axis != coarsest]
    backward = [forward.index(axis) for axis in range(len(target_spacing))]
    return forward, backward


class _ConfigurationPlanner:
    """Patch size, topology and batch size for one spacing (2D or 3D); caches estimates."""

    def __init__(self, preset: PlannerPreset, num_classes: int) -> None:
        self.preset = preset
        self.num_classes = num_classes
        self._estimates: dict[str, int] = {}

    def features(self, n_stages: int, dims: int) -> list[int]:
        limit = self.preset.max_features_2d if dims == 2 else self.preset.max_features_3d
        return [min(limit, self.preset.base_num_features * 2**stage) for stage in range(n_stages)]

    def estimate(self, topology: Topology) -> int:
        key = f"{topology.patch_size}_{topology.strides}"
        if key not in self._estimates:
            n_stages, dims = topology.n_stages, len(topology.patch_size)
            self._estimates[key] = conv_feature_map_size(
                topology.patch_size, topology.strides, self.features(n_stages, dims),
                [self.preset.n_conv_per_stage_encoder] * n_stages,
                [self.preset.n_conv_per_stage_decoder] * (n_stages - 1), self.num_classes,
            )
        return self._estimates[key]

    def plan(self, spacing: list[float], median_shape: list[float], n_voxels_dataset: float) -> dict[str, Any]:
        dims = len(spacing)
        min_edge = self.preset.featuremap_min_edge_length
        inverse = 1 / np.asarray(spacing, dtype=float)
        budget_side = 256**3 if dims == 3 else 2048**2
        initial = [round(v) for v in inverse * (budget_side / np.prod(inverse)) ** (1 / dims)]
        initial = [min(int(i), int(m)) for i, m in zip(initial, median_shape)]
        topology = pool_and_conv_props(spacing, initial, min_edge)
        reference = (self.preset.reference_value_2d if dims == 2 else self.preset.reference_value_3d) * (
            self.preset.gpu_memory_target_gb / self.preset.reference_memory_gb
        )
        reference_batch = self.preset.reference_batch_size_2d if dims == 2 else self.preset.reference_batch_size_3d
        estimate = self.estimate(topology)
        # Shrink until batch size 2 fits: take a divisibility step off the axis that is largest
        # relative to the median shape, recomputing the step first so valid sizes are not skipped.
        while estimate / reference_batch * 2 > reference:
            patch = list(topology.patch_size)
            axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
            trial = list(patch)
            trial[axis] -= topology.divisible_by[axis]
            step = pool_and_conv_props(spacing, trial, min_edge).divisible_by[axis]
            patch[axis] -= step
            topology = pool_and_conv_props(spacing, patch, min_edge)
            estimate = self.estimate(topology)
        batch_size = round(reference / estimate * reference_batch)
        cap = round(n_voxels_dataset * self.preset.max_dataset_covered / np.prod(topology.patch_size, dtype=np.float64))
        batch_size = max(min(batch_size, cap), self.preset.min_batch_size)
        return {"topology": topology, "batch_size": int(batch_size), "estimate": estimate}


def plan_experiment(fingerprint: dict[str, Any], spec: DatasetSpec, preset: PlannerPreset) -> Plans:
    """Derive the plans for every configuration the preset asks for and the data allows."""
    spacings = np.asarray(fingerprint["spacings"], dtype=float)
    shapes = np.asarray(fingerprint["shapes_after_crop"], dtype=float)
    target = fullres_target_spacing(spacings, shapes, preset.anisotropy_threshold)
    target = coarsened_spacing(target, shapes, preset.spacing_scale)
    forward, backward = transpose_for(target)
    new_shapes = np.array([compute_new_shape(s, sp, target) for s, sp in zip(shapes, spacings)])
    median_shape = np.median(new_shapes, axis=0)[forward]
    target_t = target[forward]
    n_voxels = float(np.prod(median_shape, dtype=np.float64) * fingerprint["num_cases"])
    schemes = [scheme_for_channel(spec.channel_name(c)) for c in range(spec.num_channels)]
    use_mask = [s == ZSCORE and fingerprint["median_relative_size_after_cropping"] < 0.75 for s in schemes]
    planner = _ConfigurationPlanner(preset, spec.num_classes)
    common = dict(normalization_schemes=schemes, use_mask_for_norm=use_mask)
    configurations: dict[str, ConfigurationPlan] = {}

    if "3d_fullres" in preset.configurations and median_shape[0] > 1:
        configurations["3d_fullres"] = _configuration(
            "3d_fullres", preset, list(target_t), list(median_shape), planner.plan(list(target_t), list(median_shape), n_voxels), False, common
        )
        lowres = _lowres_configuration(preset, planner, target_t, median_shape, n_voxels, configurations["3d_fullres"], common)
        configurations["3d_fullres"].batch_dice = lowres is not None
        if lowres is not None and "3d_lowres" in preset.configurations:
            configurations["3d_fullres"].previous_stage = "3d_lowres"
            configurations["3d_lowres"] = lowres
            lowres.next_stage = "3d_fullres"
    if "2d" in preset.configurations:
        plan_2d = planner.plan(list(target_t[1:]), list(median_shape[1:]), n_voxels)
        configurations["2d"] = _configuration("2d", preset, list(target_t[1:]), list(median_shape[1:]), plan_2d, True, common)
        configurations["2d"].batch_dice = True
    configurations = {name: configurations[name] for name in ("2d", "3d_fullres", "3d_lowres") if name in configurations}
    return Plans(
        dataset_name=spec.name,
        plans_name=preset.plans_name,
        preset=preset.name,
        transpose_forward=forward,
        transpose_backward=backward,
        original_median_spacing_after_transp=[float(v) for v in np.median(spacings, axis=0)[forward]],
        original_median_shape_after_transp=[float(v) for v in np.median(shapes, axis=0)[forward]],
        foreground_intensity_properties_per_channel=fingerprint["foreground_intensity_properties_per_channel"],
        configurations=configurations,
        num_input_channels=spec.num_channels,
        labels=dict(spec.labels),
        notes=_global_notes(),
    )


def _configuration(name, preset, spacing, median_shape, planned, is_2d, common) -> ConfigurationPlan:
    topology: Topology = planned["topology"]
    n_stages = topology.n_stages
    dims = len(spacing)
    limit = preset.max_features_2d if dims == 2 else preset.max_features_3d
    network = NetworkPlan(
        n_stages=n_stages,
        features_per_stage=[min(limit, preset.base_num_features * 2**s) for s in range(n_stages)],
        kernel_sizes=topology.kernel_sizes,
        strides=topology.strides,
        n_conv_per_stage=[preset.n_conv_per_stage_encoder] * n_stages,
        n_conv_per_stage_decoder=[preset.n_conv_per_stage_decoder] * (n_stages - 1),
    )
    return ConfigurationPlan(
        name=name,
        data_identifier=f"{preset.plans_name}_{name}",
        spacing=[float(v) for v in spacing],
        patch_size=[int(v) for v in topology.patch_size],
        median_image_size_in_voxels=[float(v) for v in median_shape],
        batch_size=planned["batch_size"],
        batch_dice=False,
        resampling_data=ResamplingPlan(order=3, order_z=0),
        resampling_seg=ResamplingPlan(order=1, order_z=0),
        resampling_probabilities=ResamplingPlan(order=1, order_z=0),
        network=network,
        is_2d=is_2d,
        notes=[f"memory proxy {planned['estimate']:.3g} for one sample at this patch"],
        **common,
    )


def _lowres_configuration(preset, planner, target_t, median_shape, n_voxels, fullres, common):
    """nnU-Net's 3d_lowres search: coarsen the spacing by 3% steps until the patch covers at
    least ``lowres_creation_threshold`` of the median image; drop it if it is not at least 2x
    smaller than the full-resolution image."""
    median_voxels = float(np.prod(median_shape, dtype=np.float64))
    patch_voxels = float(np.prod(fullres.patch_size, dtype=np.float64))
    spacing = np.array(target_t, dtype=float)
    lowres = None
    lowres_shape = median_shape
    while patch_voxels / median_voxels < preset.lowres_creation_threshold:
        max_spacing = spacing.max()
        coarse_gap = max_spacing / spacing > 2
        if coarse_gap.any():
            spacing[coarse_gap] *= LOWRES_SPACING_STEP
        else:
            spacing *= LOWRES_SPACING_STEP
        lowres_shape = np.array(target_t) / spacing * median_shape
        median_voxels = float(np.prod(lowres_shape, dtype=np.float64))
        planned = planner.plan(list(spacing), [round(v) for v in lowres_shape], n_voxels)
        patch_voxels = float(np.prod(planned["topology"].patch_size, dtype=np.float64))
        lowres = _configuration("3d_lowres", preset, list(spacing), [round(v) for v in lowres_shape], planned, False, common)
    if lowres is not None and np.prod(median_shape) / np.prod(lowres.median_image_size_in_voxels) < 2:
        log.info("3d_lowres dropped: its median image is less than 2x smaller than 3d_fullres")
        return None
    return lowres


def _global_notes() -> list[str]:
    return [
        "Planner arithmetic follows nnU-Net v2's default ExperimentPlanner (target spacing, transpose, "
        "topology, memory proxy, 5% batch cap); the network is MONAI DynUNet with the same kernels, "
        "strides and features as nnU-Net's PlainConvUNet.",
        "Foreground intensity statistics are weighted statistics with equal weight per case "
        "(the quantity nnU-Net estimates with 1e8 random draws), so values differ from nnU-Net's in "
        "the sampling noise only; they matter only for CT normalization.",
    ]
