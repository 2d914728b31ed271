"""A network with a known answer and plans to go with it, for prediction tests."""

from __future__ import annotations

import torch
from torch import nn

from medseg_auto.planning.plans import ConfigurationPlan, NetworkPlan, Plans, ResamplingPlan


class ThresholdNetwork(nn.Module):
    """``(B, C, *spatial) -> (B, 2, *spatial)`` logits favouring class 1 where channel 0 > 0."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        signal = batch[:, :1] * 10.0
        return torch.cat([-signal, signal], dim=1)


def make_plans(spacing, is_2d=False, patch=None, transpose=(0, 1, 2), channels=1, scheme="ZScoreNormalization") -> Plans:
    dims = 2 if is_2d else 3
    patch = patch or [16] * dims
    network = NetworkPlan(3, [4, 8, 16], [[3] * dims] * 3, [[1] * dims, [2] * dims, [2] * dims], [2] * 3, [2] * 2)
    name = "2d" if is_2d else "3d_fullres"
    config = ConfigurationPlan(
        name=name, data_identifier=f"plans_{name}", spacing=list(spacing), patch_size=list(patch),
        median_image_size_in_voxels=[16.0] * dims, batch_size=2, batch_dice=False,
        normalization_schemes=[scheme] * channels, use_mask_for_norm=[False] * channels,
        resampling_data=ResamplingPlan(3, 0), resampling_seg=ResamplingPlan(1, 0),
        resampling_probabilities=ResamplingPlan(1, 0), network=network, is_2d=is_2d,
    )
    backward = [list(transpose).index(axis) for axis in range(3)]
    return Plans("DatasetTest", "plans", "default", list(transpose), backward, [1.0] * 3, [16.0] * 3,
                 {str(c): {"mean": 0.0, "std": 1.0} for c in range(channels)}, {name: config}, channels,
                 {"background": 0, "lesion": 1})
