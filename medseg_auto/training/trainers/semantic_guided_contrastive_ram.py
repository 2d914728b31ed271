"""``SemanticGuidedContrastiveRAM``: SGCG on top of its baseline RAM, as in the SgCG paper's tables
(``L = L_ram + lambda L_feat``, Eq. 13). No code of its own: the trainer runs the two method
classes together (RAM's ``transform_batch`` mixes the batch, then SGCG's ``extra_loss`` sees the
mixed images); every option of both applies (``medseg-auto train -tr SemanticGuidedContrastiveRAM -h``).
"""

from __future__ import annotations

from medseg_auto.training.registry import register_combined_trainer
from medseg_auto.training.trainers.random_amplitude_mixup import RandomAmplitudeMixup
from medseg_auto.training.trainers.semantic_guided_contrastive import SemanticGuidedContrastive

register_combined_trainer(
    "SemanticGuidedContrastiveRAM", (RandomAmplitudeMixup, SemanticGuidedContrastive),
    "SGCG pixel contrast + RAM amplitude mixup (the SgCG paper's full method, without DSIR)",
)
