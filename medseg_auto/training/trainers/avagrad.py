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

Departure from the paper: a linear warm-up of the step size (issue 13), ``--avagrad-warmup``
steps, by default ``2 / (1 - beta2)`` = 2000 (Ma and Yarats' "untuned warm-up" for Adam-type
optimizers, whose second-moment estimate is noisy for about that long) capped at a quarter of
the run's steps (2000 of AG-50's 12,500; 60 of a 240-step run). The paper states no warm-up.
Why: on BUSI 2D with the ``cpu_coarse`` plans and 15 x 16 iterations, lr 10 from the first step
learned no foreground at all (Dice 0), while ``--avagrad-lr 1`` learned faster than SGD (BUSI
0.478 vs 0.459; README, "Measured on BUSI + STU"). Same-seed 300-step runs on synthetic two-site
2D data (15 x 20 steps; pseudo Dice at epoch 5 and at the end, seeds 0 / 1): lr 10 without
warm-up 0.246 -> 0.599 / 0.274 -> 0.436, with the default warm-up (75 steps) 0.661 -> 0.738 /
0.612 -> 0.710, Base (SGD) 0.000 -> 0.235 / 0.287 -> 0.472. (Toy data, two seeds: a check that
the default learns within a short budget, not a ranking.)
``--avagrad-warmup 0`` restores the paper's schedule.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from pytorch_optimizer import AvaGrad as AvaGradOptimizer
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.training.hooks import DomainMethod, OptimizerSetup, TrainingContext, TrainingSettings
from medseg_auto.training.registry import register_trainer

AVAGRAD_EPOCHS = 50
AVAGRAD_LR = 10.0
AVAGRAD_EPS = 0.1
AVAGRAD_BETAS = (0.9, 0.999)
UNTUNED_WARMUP_STEPS = round(2 / (1 - AVAGRAD_BETAS[1]))  # 2000: Ma and Yarats' rule for beta2 0.999
MAX_WARMUP_FRACTION = 0.25


def warmup_steps(total_steps: int, option: int | None) -> int:
    """``--avagrad-warmup`` if given, else ``2 / (1 - beta2)`` (2000) capped at a quarter of the run."""
    if option is not None:
        return max(0, int(option))
    return min(UNTUNED_WARMUP_STEPS, round(MAX_WARMUP_FRACTION * total_steps))


class WarmedUpAvaGrad(AvaGradOptimizer):
    """AvaGrad whose step size is multiplied by ``min(1, step / warmup)`` (a linear warm-up).

    The factor is applied inside :meth:`step` on top of whatever ``lr`` the epoch scheduler set,
    so the trainer's poly decay and this per-step warm-up compose without a second scheduler.
    The step count is the optimizer's own (``group["step"]``, saved with its state), so a resumed
    run continues the warm-up where it stopped.
    """

    def __init__(self, params, warmup: int = 0, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.warmup = int(warmup)

    def warmup_factor(self, step: int) -> float:
        """Factor for the ``step``-th update (1-based)."""
        return 1.0 if self.warmup <= 0 else min(1.0, step / self.warmup)

    @torch.no_grad()
    def step(self, closure=None):
        scheduled = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * self.warmup_factor(int(group.get("step", 0)) + 1)
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, scheduled):
                group["lr"] = lr


@register_trainer("AvaGrad")
class AvaGrad(DomainMethod):
    """AvaGrad (DART 2022): lr 10, eps 0.1, 50 epochs with poly decay, instead of SGD for 1000."""

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--avagrad-lr", type=float, default=AVAGRAD_LR,
                            help="learning rate alpha after the warm-up (paper: 10)")
        parser.add_argument("--avagrad-eps", type=float, default=AVAGRAD_EPS, help="adaptability epsilon (paper: 0.1)")
        parser.add_argument("--avagrad-weight-decay", type=float, default=0.0,
                            help="decoupled weight decay (the paper does not say; default none)")
        parser.add_argument("--avagrad-warmup", type=int, default=None, metavar="STEPS",
                            help="linear learning-rate warm-up over this many steps (default: 2 / (1 - beta2) = "
                                 "2000, at most a quarter of the run's steps; 0: none, as the paper)")

    def __init__(self, options=None) -> None:
        super().__init__(options)
        if self.options.get("avagrad_warmup") is not None and int(self.options["avagrad_warmup"]) < 0:
            raise MedsegError(f"--avagrad-warmup must be >= 0, got {self.options['avagrad_warmup']}")
        self.warmup = 0

    def setup(self, context: TrainingContext) -> None:
        settings = context.settings or TrainingSettings(num_epochs=AVAGRAD_EPOCHS)
        self.warmup = warmup_steps(settings.num_epochs * settings.iterations_per_epoch, self.options.get("avagrad_warmup"))

    def configure(self, settings: TrainingSettings) -> TrainingSettings:
        return replace(settings, num_epochs=AVAGRAD_EPOCHS, initial_lr=float(self.options["avagrad_lr"]))

    def make_optimizer(self, params: list[nn.Parameter]) -> OptimizerSetup:
        optimizer = WarmedUpAvaGrad(params, warmup=self.warmup, lr=float(self.options["avagrad_lr"]),
                                    betas=AVAGRAD_BETAS, eps=float(self.options["avagrad_eps"]),
                                    weight_decay=float(self.options["avagrad_weight_decay"]), weight_decouple=True)
        return OptimizerSetup(optimizer)  # no scheduler factory: nnU-Net's poly decay over the epochs
