"""``NoDeepSupervision``: the loss on the full-resolution output only (nnU-Net's
``nnUNetTrainerNoDeepSupervision``); the network then has no auxiliary heads."""

from __future__ import annotations

from dataclasses import replace

from medseg_auto.training.hooks import DomainMethod, TrainingSettings
from medseg_auto.training.registry import register_trainer


@register_trainer("NoDeepSupervision")
class NoDeepSupervision(DomainMethod):
    """Base without deep supervision: Dice+CE on the full-resolution output only."""

    def configure(self, settings: TrainingSettings) -> TrainingSettings:
        return replace(settings, deep_supervision=False)
