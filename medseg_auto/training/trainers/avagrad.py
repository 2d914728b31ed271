"""``AvaGrad``: the AvaGrad optimizer for 50 epochs in place of SGD for 1000 (across-scanner generalization).

Paper: Sheikh, Klasen, Schultz, "Adaptive Optimization with Fewer Epochs Improves
Across-Scanner Generalization of U-Net Based Medical Image Segmentation", DART 2022 (reading
notes ``NOTES_dart2022.md`` 2.4); optimizer from Savarese et al., "Domain-independent Dominance
of Adaptive Methods" (CVPR 2021). nnU-Net 2D with its augmentation, only the optimizer and the
epoch count change: lr ``alpha = 10``, ``eps = 0.1`` (tuned on M&Ms domain B, used unchanged on
CC-359), 50 epochs ("AG-50", their proposed default). Printed update::

    m_t = beta1 m_{t-1} + (1 - beta1) g_t          eta_t = 1 / (sqrt(v_{t-1}) + eps)
    w_{t+1} = w_t - alpha (eta_t / ||eta_t / sqrt(d)||_2) * m_t
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2        (d: size of eta, all parameters together)

The optimizer is ``pytorch_optimizer.AvaGrad`` (a maintained collection; the same algorithm as
the authors' reference code): ``beta_{1,t}, beta_{2,t}`` are realised as Adam-style bias
correction, step 1 only fills the moments (``v_0`` carries no information), and the normaliser
``||eta / sqrt(d)||`` is the one computed at the previous step (one pass over the parameters);
``tests/training/test_dart_fine_tuning_methods.py`` checks the update against a hand computation.
Unclear in the paper, our choices: betas (0.9, 0.999) (the reference defaults), no weight decay
(the reference default; nnU-Net's 3e-5 decoupled at lr 10 would shrink every weight by 3e-4 per
step), nnU-Net's poly decay over the 50 epochs and its iterations per epoch (250), gradient
clipping at 12 as in the recipe. ``--epochs`` overrides the 50 (AG-25: ``--epochs 25``).

Measured (README, "Measured on BUSI + STU"): on BUSI 2D with the ``cpu_coarse`` plans and a
short budget of 15 x 16 iterations, lr 10 learned no foreground at all (Dice 0), while
``--avagrad-lr 1`` learned faster than SGD (BUSI 0.478 vs 0.459). The paper's 10 was tuned for
50 x 250 iterations on cardiac MRI; try a smaller lr for short runs.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from pytorch_optimizer import AvaGrad as AvaGradOptimizer
from torch import nn

from medseg_auto.training.hooks import DomainMethod, OptimizerSetup, TrainingSettings
from medseg_auto.training.registry import register_trainer

AVAGRAD_EPOCHS = 50
AVAGRAD_LR = 10.0
AVAGRAD_EPS = 0.1
AVAGRAD_BETAS = (0.9, 0.999)


@register_trainer("AvaGrad")
class AvaGrad(DomainMethod):
    """AvaGrad (DART 2022): lr 10, eps 0.1, 50 epochs with poly decay, instead of SGD for 1000."""

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--avagrad-lr", type=float, default=AVAGRAD_LR,
                            help="learning rate alpha (paper: 10; for short runs try 1, see the README)")
        parser.add_argument("--avagrad-eps", type=float, default=AVAGRAD_EPS, help="adaptability epsilon (paper: 0.1)")
        parser.add_argument("--avagrad-weight-decay", type=float, default=0.0,
                            help="decoupled weight decay (the paper does not say; default none)")

    def configure(self, settings: TrainingSettings) -> TrainingSettings:
        return replace(settings, num_epochs=AVAGRAD_EPOCHS, initial_lr=float(self.options["avagrad_lr"]))

    def make_optimizer(self, params: list[nn.Parameter]) -> OptimizerSetup:
        optimizer = AvaGradOptimizer(params, lr=float(self.options["avagrad_lr"]), betas=AVAGRAD_BETAS,
                                     eps=float(self.options["avagrad_eps"]),
                                     weight_decay=float(self.options["avagrad_weight_decay"]), weight_decouple=True)
        return OptimizerSetup(optimizer)  # no scheduler factory: nnU-Net's poly decay over the epochs
