"""nnU-Net v2.4.2's data augmentation, built from batchgenerators v1 transforms.

v2.4.2 is the last nnU-Net release whose augmentation is batchgenerators v1 (numpy); later
releases moved to batchgeneratorsv2 with the same parameters. The training pipeline, in order
("p" per sample):

1. spatial: rotation (p 0.2, then every axis) and one isotropic scale factor U(0.7, 1.4)
   (p 0.2); no elastic deformation; cubic data, linear seg, seg border -1; centre crop from the
   enlarged patch to the network patch. Rotation: 3D ±30° per axis; 3D with dummy 2D (patch
   ``max/first > 3``) ±180° in-plane only; 2D ±180°, or ±15° if ``max/min > 1.5``.
2. Gaussian noise, variance U(0, 0.1), p 0.1.
3. Gaussian blur, sigma U(0.5, 1), p 0.2, per channel p 0.5.
4. multiplicative brightness U(0.75, 1.25), p 0.15.
5. contrast (0.75, 1.25) preserving the range, p 0.15.
6. simulated low resolution, zoom U(0.5, 1), p 0.25, per channel p 0.5 (not along z with dummy 2D).
7. gamma (0.7, 1.5) on the inverted image, retaining mean and std, p 0.1; 8. the same, not inverted, p 0.3.
9. mirroring, each allowed axis with p 0.5.
10. zero outside the non-zero mask for channels normalised inside it (``use_mask_for_norm``).
11. ``padding`` = seg < 0 (bool), then seg -1 -> 0, renamed ``target``; 12. to torch
    (``data`` float32, ``target`` int64, ``padding`` bool).

Validation uses steps 11-12 only. Deep-supervision targets are made later, by the trainer.
Every transform draws from numpy's and Python's global random state (batchgenerators' design);
:mod:`.loader` gives each producer its own copy of those states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from batchgenerators.augmentations.utils import rotate_coords_2d, rotate_coords_3d
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import NumpyToTensor, RemoveLabelTransform, RenameTransform

from medseg_auto.training.data.custom_transforms import (
    PaddingMaskTransform,
    Convert2DTo3DTransform,
    Convert3DTo2DTransform,
    MaskOutsideTransform,
)

DUMMY_2D_ANISOTROPY = 3.0  # nnU-Net's ANISO_THRESHOLD
ELONGATED_2D_PATCH = 1.5
SCALE_RANGE = (0.7, 1.4)
INITIAL_PATCH_SCALE_RANGE = (0.85, 1.25)  # what nnU-Net passes to get_patch_size (only the 0.85 matters)


def _degrees(limit: float) -> tuple[float, float]:
    return (-float(np.deg2rad(limit)), float(np.deg2rad(limit)))


@dataclass(frozen=True)
class SpatialAugmentationParams:
    """Rotation ranges (radians), dummy-2D switch, mirror axes and the enlarged crop size.

    ``mirror_axes`` index the spatial axes (``(0, 1, 2)`` in 3D, ``(0, 1)`` in 2D); ``None``
    disables mirroring. Trainers also store it as the axes allowed for test-time mirroring.
    """

    patch_size: tuple[int, ...]
    rotation_x: tuple[float, float]
    rotation_y: tuple[float, float]
    rotation_z: tuple[float, float]
    do_dummy_2d: bool
    mirror_axes: tuple[int, ...] | None
    initial_patch_size: tuple[int, ...]


def configure_spatial_augmentation(
    patch_size: Sequence[int], mirror_axes: Sequence[int] | None | str = "all"
) -> SpatialAugmentationParams:
    """nnU-Net's ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``.

    ``mirror_axes="all"`` mirrors every spatial axis; a sequence restricts it; ``None`` disables it.
    """
    patch = tuple(int(v) for v in patch_size)
    no_rotation = (0.0, 0.0)
    do_dummy_2d = False
    if len(patch) == 2:
        limit = 15.0 if max(patch) / min(patch) > ELONGATED_2D_PATCH else 180.0
        rotation = (_degrees(limit), no_rotation, no_rotation)
    elif len(patch) == 3:
        do_dummy_2d = max(patch) / patch[0] > DUMMY_2D_ANISOTROPY
        rotation = (_degrees(180.0), no_rotation, no_rotation) if do_dummy_2d else (_degrees(30.0),) * 3
    else:
        raise ValueError(f"patch_size must have 2 or 3 entries, got {list(patch)}")
    if isinstance(mirror_axes, str):
        if mirror_axes != "all":
            raise ValueError(f"mirror_axes must be 'all', None or a sequence of axes, got {mirror_axes!r}")
        mirror = tuple(range(len(patch)))
    else:
        mirror = tuple(int(axis) for axis in mirror_axes) if mirror_axes else None
    initial = get_initial_patch_size(patch, *rotation, scale_range=INITIAL_PATCH_SCALE_RANGE)
    if do_dummy_2d:
        initial[0] = patch[0]
    return SpatialAugmentationParams(
        patch_size=patch,
        rotation_x=rotation[0],
        rotation_y=rotation[1],
        rotation_z=rotation[2],
        do_dummy_2d=do_dummy_2d,
        mirror_axes=mirror,
        initial_patch_size=tuple(int(v) for v in initial),
    )


def get_initial_patch_size(
    final_patch_size: Sequence[int],
    rotation_x: tuple[float, float],
    rotation_y: tuple[float, float],
    rotation_z: tuple[float, float],
    scale_range: tuple[float, float] = INITIAL_PATCH_SCALE_RANGE,
) -> np.ndarray:
    """nnU-Net's ``get_patch_size``: the crop that still fills the patch after rotation and zoom-out.

    The patch's corner vector is rotated about each axis alone by the largest angle (capped at
    90°), the element-wise maximum of the absolute results is taken, and divided by the smallest
    scale. Returns an int array with one entry per axis. (batchgenerators 0.25 no longer has it.)
    """
    cap = np.pi / 2
    angle_x, angle_y, angle_z = (min(cap, float(max(np.abs(r)))) for r in (rotation_x, rotation_y, rotation_z))
    corner = np.array(final_patch_size, dtype=float)
    extent = corner.copy()
    if len(corner) == 3:
        for angles in ((angle_x, 0, 0), (0, angle_y, 0), (0, 0, angle_z)):
            extent = np.maximum(extent, np.abs(rotate_coords_3d(corner, *angles)))
    else:
        extent = np.maximum(extent, np.abs(rotate_coords_2d(corner, angle_x)))
    return (extent / min(scale_range)).astype(int)


def build_training_transforms(
    params: SpatialAugmentationParams,
    use_mask_for_norm: Sequence[bool] | None = None,
) -> AbstractTransform:
    """The training pipeline: enlarged batch ``{"data", "seg", ...}`` -> ``{"data", "target", ...}``.

    In: ``data`` float32 ``(B, C, *initial_patch)``, ``seg`` ``(B, 1, *initial_patch)`` with -1
    outside. Out: ``data`` torch.float32 ``(B, C, *patch)``, ``target`` torch.int64
    ``(B, 1, *patch)`` with values >= 0. Other keys pass through.
    """
    transforms: list[AbstractTransform] = []
    spatial_patch = params.patch_size[1:] if params.do_dummy_2d else params.patch_size
    if params.do_dummy_2d:
        transforms.append(Convert3DTo2DTransform())
    transforms.append(
        SpatialTransform(
            spatial_patch,
            patch_center_dist_from_border=None,
            do_elastic_deform=False,
            alpha=(0, 0),
            sigma=(0, 0),
            do_rotation=True,
            angle_x=params.rotation_x,
            angle_y=params.rotation_y,
            angle_z=params.rotation_z,
            p_rot_per_axis=1,
            do_scale=True,
            scale=SCALE_RANGE,
            border_mode_data="constant",
            border_cval_data=0,
            order_data=3,
            border_mode_seg="constant",
            border_cval_seg=-1,
            order_seg=1,
            random_crop=False,
            p_el_per_sample=0,
            p_scale_per_sample=0.2,
            p_rot_per_sample=0.2,
            independent_scale_for_each_axis=False,
        )
    )
    if params.do_dummy_2d:
        transforms.append(Convert2DTo3DTransform())
    transforms += [
        GaussianNoiseTransform(p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(
            zoom_range=(0.5, 1),
            per_channel=True,
            p_per_channel=0.5,
            order_downsample=0,
            order_upsample=3,
            p_per_sample=0.25,
            ignore_axes=(0,) if params.do_dummy_2d else None,
        ),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    if params.mirror_axes:
        transforms.append(MirrorTransform(params.mirror_axes))
    if use_mask_for_norm is not None and any(use_mask_for_norm):
        transforms.append(MaskOutsideTransform([c for c, use in enumerate(use_mask_for_norm) if use]))
    return Compose(transforms + _finalising_transforms())


def build_validation_transforms() -> AbstractTransform:
    """Validation: no augmentation, only the padding mask, seg -1 -> 0 and conversion to tensors."""
    return Compose(_finalising_transforms())


def _finalising_transforms() -> list[AbstractTransform]:
    return [
        PaddingMaskTransform(),
        RemoveLabelTransform(-1, 0),
        RenameTransform("seg", "target", True),
        NumpyToTensor(["data"], "float"),
        NumpyToTensor(["target"], "long"),
        NumpyToTensor(["padding"], "bool"),
    ]
