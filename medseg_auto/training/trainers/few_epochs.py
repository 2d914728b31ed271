"""``FewEpochs``: a short preset for CPUs and smoke tests (nnU-Net ships ``nnUNetTrainer_Xepochs``).

10 epochs x 50 iterations (10 validation batches each), the poly decay compressed into them.
500 iterations is 1/500 of nnU-Net's schedule: enough to see the curves move and to check a
pipeline end to end on a laptop (Hippocampus 3d_fullres: about half an hour on 2 idle cores
in bf16, at ~2.6 s per training step), not to reach published accuracy. ``--epochs`` / ``--iters-per-epoch`` still override it.
"""

from __future__ import annotations

from dataclasses import replace

from medseg_auto.training.hooks import DomainMethod, TrainingSettings
from medseg_auto.training.registry import register_trainer

FEW_EPOCHS = 10
FEW_ITERATIONS = 50


@register_trainer("FewEpochs")
class FewEpochs(DomainMethod):
    """Short CPU preset: 10 epochs x 50 iterations, otherwise Base."""

    def configure(self, settings: TrainingSettings) -> TrainingSettings:
        return replace(settings, num_epochs=FEW_EPOCHS, iterations_per_epoch=FEW_ITERATIONS)
