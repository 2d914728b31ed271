"""nnU-Net's Dice + CE loss and the deep-supervision weighting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg_auto.training.loss import (
    NNUNET_SMOOTH, build_loss, deep_supervision_weights, dice_ce_loss, downsample_target,
)


def nnunet_dice_ce(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool) -> torch.Tensor:
    """The formula of the reference notes 2.2 (soft Dice without background + CE), offset by 1."""
    probabilities = logits.softmax(1)
    onehot = F.one_hot(target[:, 0], logits.shape[1]).movedim(-1, 1).float()
    axes = [0, *range(2, logits.ndim)] if batch_dice else list(range(2, logits.ndim))
    intersect = (probabilities * onehot).sum(axes)
    denominator = probabilities.sum(axes) + onehot.sum(axes)
    dice = (2 * intersect + NNUNET_SMOOTH) / (denominator + NNUNET_SMOOTH)
    foreground = dice[1:] if batch_dice else dice[:, 1:]
    return 1 - foreground.mean() + F.cross_entropy(logits, target[:, 0])


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_ce_matches_nnunet_formula(batch_dice):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, 5, 7, generator=generator)
    target = torch.randint(0, 4, (3, 1, 6, 5, 7), generator=generator)
    expected = nnunet_dice_ce(logits, target, batch_dice)
    torch.testing.assert_close(dice_ce_loss(batch_dice)(logits, target), expected)


def test_deep_supervision_weights_halve_and_sum_to_one():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_downsample_target_is_nearest_exact():
    target = torch.arange(16).reshape(1, 1, 4, 4)
    assert downsample_target(target, (2, 2)).tolist() == [[[[5, 7], [13, 15]]]]
    assert downsample_target(target, (4, 4)) is target


def test_deep_supervised_loss_is_the_weighted_sum_over_heads():
    generator = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=generator)
    heads = [torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)]
    base = dice_ce_loss(False)
    expected = 2 / 3 * base(heads[0], target) + 1 / 3 * base(heads[1], downsample_target(target, (4, 4)))
    torch.testing.assert_close(build_loss(False)(heads, target), expected)
    torch.testing.assert_close(build_loss(False)(heads[0], target), base(heads[0], target))


def test_half_precision_logits_give_a_float32_loss():
    logits = torch.randn(2, 3, 8, 8).to(torch.bfloat16)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    assert build_loss(False)([logits], target).dtype == torch.float32
