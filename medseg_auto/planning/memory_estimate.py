"""nnU-Net's memory proxy for a plain conv U-Net: the summed size of all conv outputs.

Pure arithmetic (no torch), mirroring ``compute_conv_feature_map_size`` of nnU-Net's
``PlainConvUNet`` with deep supervision off: encoder stages contribute
``n_conv * C_s * prod(size_s)``; each decoder level its convs, its transposed conv, and the last
level a segmentation head of ``num_classes`` channels. The planner compares this number with
reference values calibrated by nnU-Net, so it must be computed the same way.
"""

from __future__ import annotations

import numpy as np


def conv_feature_map_size(
    patch_size: list[int],
    strides: list[list[int]],
    features_per_stage: list[int],
    n_conv_encoder: list[int],
    n_conv_decoder: list[int],
    num_classes: int,
) -> int:
    """Sum of channels x voxels over every conv output of the U-Net for one sample."""
    total = 0
    size = list(patch_size)
    stage_sizes = []
    for stage, stride in enumerate(strides):
        size = [s // k for s, k in zip(size, stride)]
        stage_sizes.append(size)
        total += n_conv_encoder[stage] * features_per_stage[stage] * int(np.prod(size, dtype=np.int64))
    n_decoder = len(strides) - 1
    for level in range(n_decoder):
        skip_stage = n_decoder - 1 - level
        voxels = int(np.prod(stage_sizes[skip_stage], dtype=np.int64))
        channels = features_per_stage[skip_stage]
        total += n_conv_decoder[level] * channels * voxels
        total += channels * voxels  # transposed conv
        if level == n_decoder - 1:
            total += num_classes * voxels  # segmentation head
    return total
