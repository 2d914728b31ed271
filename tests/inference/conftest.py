"""A network with a known answer: class 1 wherever the normalized intensity is positive."""

from __future__ import annotations

import pytest
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


@pytest.fixture
def threshold_network():
    return ThresholdNetwork()


@pytest.fixture(scope="session")
def trained_syn2d_home(tmp_path_factory):
    """A data home with a 2D two-site synthetic dataset (6 cases per site) and fold ``all`` of the
    Base trainer trained for 2 iterations; its final validation wrote ``ood_reference.json``.
    Shared by the FDA and OOD tests (training once takes a few seconds)."""
    from medseg_auto.cli.main import main
    from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home

    home = synthetic_home(tmp_path_factory.mktemp("syn2d_home"))
    make_synthetic_dataset(home, "Syn2d", dimension=2, cases_per_site=6)
    root = str(home.root)
    assert main(["plan_and_preprocess", "Syn2d", "-np", "1", "--home", root, "--no-progress"]) == 0
    assert main(["train", "Syn2d", "2d", "all", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters-per-epoch",
                 "1", "--num-workers", "0", "--home", root, "--device", "cpu", "--seed", "0", "--no-progress"]) == 0
    return home
