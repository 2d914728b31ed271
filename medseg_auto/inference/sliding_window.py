"""Sliding-window prediction of one preprocessed case, with mirroring test-time augmentation.

MONAI's ``sliding_window_inference`` does the tiling (step 0.5 of the patch by default),
Gaussian importance weighting (sigma = patch/8, as nnU-Net) and padding of images smaller
than the patch; mirroring is applied per window (all flips of the allowed axes, logits
averaged), which is what nnU-Net does and what MONAI does not provide.

2D configurations of volumes predict every slice: slices become the batch axis, so one call
covers the whole volume.
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

GAUSSIAN_SIGMA_SCALE = 0.125


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``axes`` (7 for three axes, 3 for two)."""
    return [combo for size in range(1, len(axes) + 1) for combo in itertools.combinations(axes, size)]


class MirroredPredictor(nn.Module):
    """Wraps a network ``(B, C, *spatial) -> (B, K, *spatial)``; averages the logits over the
    identity and every flip of ``mirror_axes`` (spatial axis indices, 0-based).

    With ``return_votes`` the forward returns ``(logits, votes)``: ``votes (B, K, *spatial)`` is
    the share of views whose argmax is class ``k`` (one-hot argmax averaged over the views), from
    which :mod:`.uncertainty` measures how much the mirrored predictions disagree. The logits are
    the same either way."""

    def __init__(self, network: nn.Module, mirror_axes: Sequence[int] | None, return_votes: bool = False) -> None:
        super().__init__()
        self.network = network
        self.flips = [tuple(axis + 2 for axis in combo) for combo in mirror_combinations(mirror_axes or ())]
        self.return_votes = return_votes

    def forward(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # All flips go through the network as one batch: one large forward pass uses the CPU
        # cores better than eight small ones (measured 0.85 s vs 1.2 s per window here).
        views = torch.cat([batch, *[torch.flip(batch, dims) for dims in self.flips]])
        outputs = self.network(views).float().chunk(1 + len(self.flips))
        logits = outputs[0].clone()
        votes = _one_hot_argmax(outputs[0]) if self.return_votes else None
        for dims, output in zip(self.flips, outputs[1:]):
            logits += torch.flip(output, dims)
            if votes is not None:
                votes += _one_hot_argmax(torch.flip(output, dims))
        logits = logits / (1 + len(self.flips))
        if votes is None:
            return logits
        return logits, votes / (1 + len(self.flips))


def _one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, *spatial)`` logits -> float one-hot of the argmax class, same shape."""
    return torch.zeros_like(logits).scatter_(1, logits.argmax(dim=1, keepdim=True), 1.0)


def autocast_context(device: torch.device, enabled: bool):
    """fp16 autocast on CUDA, bf16 on CPU (only when ``enabled``), else nothing."""
    if not enabled:
        return nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def predict_logits(
    network: nn.Module,
    data: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    is_2d: bool,
    mirror_axes: Sequence[int] | None,
    step_size: float = 0.5,
    device: torch.device | str = "cpu",
    use_autocast: bool = False,
    windows_per_batch: int | None = None,
    return_votes: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(K, Z, Y, X)`` (float32, on the CPU) for a preprocessed ``data (C, Z, Y, X)``.

    ``patch_size`` has 2 entries for 2D configurations (slices along Z) and 3 otherwise.
    ``windows_per_batch`` windows (times the number of mirrored views) share one forward pass.
    ``return_votes``: also the mirrored views' votes ``(K, Z, Y, X)`` (see :class:`MirroredPredictor`),
    stitched like the logits; returns ``(logits, votes)``.
    """
    device = torch.device(device)
    volume = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data, dtype=torch.float32)
    inputs = volume.permute(1, 0, 2, 3) if is_2d else volume[None]
    predictor = MirroredPredictor(network, mirror_axes, return_votes).to(device).eval()
    if windows_per_batch is None:  # mirrored views already fill the batch in 3D
        windows_per_batch = 4 if is_2d else 1
    with autocast_context(device, use_autocast):
        logits = sliding_window_inference(
            inputs.to(device), roi_size=list(patch_size), sw_batch_size=windows_per_batch, predictor=predictor,
            overlap=1.0 - step_size, mode="gaussian", sigma_scale=GAUSSIAN_SIGMA_SCALE, padding_mode="constant",
            cval=0.0, sw_device=device, device=torch.device("cpu"),
        )
    if return_votes:
        logits, votes = logits
        return _to_volume(logits, is_2d), _to_volume(votes, is_2d)
    return _to_volume(logits, is_2d)


def _to_volume(stitched: torch.Tensor, is_2d: bool) -> torch.Tensor:
    """The stitched ``(Z, K, Y, X)`` (2D) or ``(1, K, Z, Y, X)`` output as float ``(K, Z, Y, X)``."""
    stitched = stitched.float()
    return stitched.permute(1, 0, 2, 3).contiguous() if is_2d else stitched[0]
