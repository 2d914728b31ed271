"""nnU-Net's segmentation loss: soft Dice (foreground classes) + cross-entropy, deep-supervised.

``DC_and_CE_loss`` (reference notes 2.2): the Dice term is the soft Dice on the softmax over
*all* classes, averaged over the foreground classes only, with ``smooth = 1e-5`` in numerator
and denominator; with ``batch_dice`` the sums run over the batch too (one Dice per class per
batch instead of per sample). CE covers all classes. Both weigh 1. MONAI's ``DiceCELoss``
computes exactly this (its Dice is ``1 - dc`` where nnU-Net's is ``-dc``: a constant offset of
1, so gradients agree); ``test_loss.py`` checks it against the formula.

Deep supervision (:class:`DeepSupervisedLoss`): head ``i`` (``i = 0`` full resolution) weighs
``1 / 2**i``, normalised to sum 1; the target is downsampled to each head's size with
``nearest-exact`` interpolation (nnU-Net's ``DownsampleSegForDSTransform``). We do that here on
the target tensor rather than in the data workers: it is one cheap gather per head.

Under ``torch.autocast`` the logits arrive in half precision; the loss casts them to float32
first (softmax and log of small probabilities are what loses accuracy in bf16/fp16).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

NNUNET_SMOOTH = 1e-5


def dice_ce_loss(batch_dice: bool) -> DiceCELoss:
    """``loss(logits (B, K, *spatial), target (B, 1, *spatial) int) -> scalar`` as in nnU-Net."""
    return DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=batch_dice,
        smooth_nr=NNUNET_SMOOTH,
        smooth_dr=NNUNET_SMOOTH,
        lambda_dice=1.0,
        lambda_ce=1.0,
    )


def deep_supervision_weights(n_heads: int) -> list[float]:
    """``[1, 1/2, 1/4, ...]`` over ``n_heads`` heads, normalised to sum 1."""
    raw = [1.0 / 2**i for i in range(n_heads)]
    total = sum(raw)
    return [w / total for w in raw]


def downsample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-exact resize of an integer label map ``(B, 1, *spatial)`` to ``(B, 1, *size)``."""
    if tuple(target.shape[2:]) == tuple(size):
        return target
    # interpolate needs floats; labels are small integers, exactly representable.
    return F.interpolate(target.float(), size=tuple(size), mode="nearest-exact").to(target.dtype)


class DeepSupervisedLoss(nn.Module):
    """Weighted sum of ``loss`` over the heads of a deep-supervised network.

    ``forward(outputs, target)``: ``outputs`` a tensor ``(B, K, *patch)`` or a list of heads
    ``[(B, K, *patch), (B, K, *patch/2), ...]``; ``target`` ``(B, 1, *patch)`` int labels.
    Returns a float32 scalar.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        heads = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        weights = deep_supervision_weights(len(heads))
        total = torch.zeros((), device=target.device, dtype=torch.float32)
        for weight, head in zip(weights, heads):
            total = total + weight * self.loss(head.float(), downsample_target(target, head.shape[2:]))
        return total


def build_loss(batch_dice: bool) -> DeepSupervisedLoss:
    """The trainer's loss for one configuration (``batch_dice`` from the plans)."""
    return DeepSupervisedLoss(dice_ce_loss(batch_dice))
