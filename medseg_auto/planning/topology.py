"""U-Net topology from spacing and patch size: nnU-Net v2's ``get_pool_and_conv_props`` rules,
reimplemented from their published description so our plans match nnU-Net's decisions.

Pool an axis while its feature map stays >= 2 * ``min_feature_map_size`` and its spacing is
within a factor 2 of the finest candidate axis (a lone remaining axis needs 3x); kernels
become 3 on an axis once its spacing is within a factor 2 of the finest; the bottleneck kernel
is always 3; the patch is padded to a multiple of ``2 ** pools`` per axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Topology:
    """Pooling and kernels per stage, and the patch size made divisible by the pooling."""

    num_pool_per_axis: list[int]
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    patch_size: list[int]
    divisible_by: list[int]

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def pool_and_conv_props(
    spacing: list[float], patch_size: list[int], min_feature_map_size: int = 4, max_numpool: int = 999999
) -> Topology:
    """Topology for ``patch_size`` at ``spacing`` (both in the plans' transposed axis order)."""
    dims = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [int(s) for s in patch_size]
    strides: list[list[int]] = [[1] * dims]
    kernel_sizes: list[list[int]] = []
    num_pool = [0] * dims
    kernel = [1] * dims
    while True:
        candidates = [axis for axis in range(dims) if current_size[axis] >= 2 * min_feature_map_size]
        if not candidates:
            break
        finest = min(current_spacing[axis] for axis in candidates)
        candidates = [axis for axis in candidates if current_spacing[axis] / finest < 2]
        candidates = [axis for axis in candidates if num_pool[axis] < max_numpool]
        if len(candidates) == 1 and current_size[candidates[0]] < 3 * min_feature_map_size:
            break
        if not candidates:
            break
        smallest_spacing = min(current_spacing)
        for axis in range(dims):
            if kernel[axis] != 3 and current_spacing[axis] / smallest_spacing < 2:
                kernel[axis] = 3
        stride = [1] * dims
        for axis in candidates:
            stride[axis] = 2
            num_pool[axis] += 1
            current_spacing[axis] *= 2
            current_size[axis] = math.ceil(current_size[axis] / 2)
        strides.append(stride)
        kernel_sizes.append(list(kernel))
    kernel_sizes.append([3] * dims)
    divisible_by = [2**n for n in num_pool]
    padded = [int(math.ceil(size / divisor) * divisor) for size, divisor in zip(patch_size, divisible_by)]
    return Topology(num_pool, strides, kernel_sizes, padded, divisible_by)
