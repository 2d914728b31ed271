"""``NoMirroring``: no mirror augmentation in training, and therefore no mirroring at test time
(nnU-Net's ``nnUNetTrainerNoMirroring``); for anatomy with a meaningful left and right."""

from __future__ import annotations

from dataclasses import replace

from medseg_auto.training.hooks import DomainMethod, TrainingSettings
from medseg_auto.training.registry import register_trainer


@register_trainer("NoMirroring")
class NoMirroring(DomainMethod):
    """Base without mirror augmentation; test-time mirroring is disabled too."""

    def configure(self, settings: TrainingSettings) -> TrainingSettings:
        return replace(settings, mirror_axes=None)
