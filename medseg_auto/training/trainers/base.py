"""``Base``: nnU-Net v2's recipe with no change (the reference every other trainer is compared to)."""

from __future__ import annotations

from medseg_auto.training.hooks import DomainMethod
from medseg_auto.training.registry import register_trainer


@register_trainer("Base")
class Base(DomainMethod):
    """nnU-Net v2 default: SGD 0.01 poly, 1000 x 250 iterations, Dice+CE, deep supervision, mirroring."""
