"""``Dispersive``: Med-DisSeg's dispersive loss on an early encoder stage (Chen et al.,
``../shared/papers/med_disseg_dispersive.txt``; the math is :mod:`~medseg_auto.training.losses.dispersive`).

``L = L_seg + lambda * L_disp`` (Eq. 7), ``L_disp`` on one vector per sample of the batch,
pooled from the feature map of ``--disp-tap``. Defaults are the paper's final choices
(Sec. 4.4), ``tau = 0.8``, *early* placement, ``lambda = 0.2`` in Stage I and ``0.6`` in Stage
II, except the variant: InfoNCE-cosine (Eq. 4) instead of the paper's InfoNCE-L2 (Eq. 3).

Why not the paper's L2 variant by default (issue 13). ``D_ij = ||h_i - h_j||^2 / d`` grows with
the scale of the features, and every DynUNet stage ends in instance norm with a learnable affine
weight, so the cheapest way to lower Eq. 3 is to inflate that weight, not to separate samples.
Measured: a 60-step probe under the recipe's SGD grew the ``encoder.1`` norm weight from 1.00 to
1.60 and the feature RMS from 0.70 to 1.57 while the loss fell from -0.81 to -3.26, and the
unseen-site Dice of a short BUSI+STU run collapsed (0.09). Reproduced on synthetic 2D data
(60 steps of the recipe's SGD, weight 0.6, same seed): with Eq. 3 the ``encoder.1`` norm weight
went 1.00 -> 2.64, the feature RMS 0.70 -> 2.63 and the loss -0.83 -> -11.06; with the cosine
variant 1.00 -> 1.00, 0.70 -> 0.70 and -0.84 -> -1.01. The cosine distance
``1 - cos(h_i, h_j)`` is the same loss family (the paper's own Eq. 4) and does not change when
a sample's vector is scaled, so the only way to lower it is to make samples point in different
directions; its value is bounded, ``log(exp(-2 / tau)) .. 0`` (-2.5 .. 0 at tau 0.8).
``--disp-variant infonce_l2`` restores the paper's choice (hinge and covariance are not
scale-invariant either).

How the paper maps onto this pipeline:

- Placement. The paper's "early" layer is not named; its backbone's first feature level (ConDSeg
  f_1, ResNet stem) is at half resolution, so the default tap is ``encoder.1``, DynUNet's first
  downsampled stage (half resolution, ``features_per_stage[1]`` channels). ``encoder.0`` (full
  resolution), deeper stages, ``bottleneck`` and ``decoder.j`` are accepted too.
- Two stages. The paper pre-trains the encoder alone (Stage I) and then fine-tunes the whole
  network (Stage II) with a smaller encoder learning rate. Here one network trains throughout;
  only the weight changes: ``lambda_1`` for epochs before ``--disp-phase-boundary`` (a fraction of
  the epochs, 0.5 by default: the paper gives no Stage I length) and ``lambda_2`` after.
- Pooling and distance scaling: see :mod:`~medseg_auto.training.losses.dispersive` (flatten, and
  squared distances divided by the vector length), which also says how the loss behaves at
  batch sizes from 2 to hundreds.
- The loss is computed in float32 outside autocast, within each rank's batch under DDP.

Logged per epoch: ``disp_loss`` (unweighted) and ``disp_weight``.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

import torch

from medseg_auto.errors import MedsegError
from medseg_auto.training.hooks import DomainMethod, TrainingContext
from medseg_auto.training.losses.dispersive import POOLING, VARIANTS, dispersive_loss, pool_representations
from medseg_auto.training.registry import register_trainer

DEFAULT_VARIANT = "infonce_cos"  # scale-invariant; the paper's final choice is "infonce_l2"


@register_trainer("Dispersive")
class Dispersive(DomainMethod):
    """Med-DisSeg dispersive loss (InfoNCE-cosine, tau 0.8) on an early encoder stage, weight 0.2 then 0.6."""

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--disp-variant", choices=VARIANTS, default=DEFAULT_VARIANT,
                            help="dispersive loss variant (Eq. 3-6; default infonce_cos, scale-invariant; "
                                 "the paper's infonce_l2 lets the network lower it by inflating feature scale)")
        parser.add_argument("--disp-tap", default="encoder.1",
                            help="feature tap whose per-sample vectors are dispersed (encoder.i, bottleneck, decoder.j)")
        parser.add_argument("--disp-pooling", choices=POOLING, default="flatten",
                            help="feature map -> vector: the whole map, or global average pooling")
        parser.add_argument("--disp-tau", type=float, default=0.8, help="temperature of the InfoNCE variants")
        parser.add_argument("--disp-weights", type=float, nargs=2, default=[0.2, 0.6], metavar=("LAMBDA1", "LAMBDA2"),
                            help="loss weight before and after the phase boundary")
        parser.add_argument("--disp-phase-boundary", type=float, default=0.5,
                            help="fraction of the epochs after which LAMBDA2 replaces LAMBDA1")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        if not 0.0 <= float(self.options["disp_phase_boundary"]) <= 1.0:
            raise MedsegError(f"--disp-phase-boundary must be in [0, 1], got {self.options['disp_phase_boundary']}")
        if float(self.options["disp_tau"]) <= 0:
            raise MedsegError(f"--disp-tau must be positive, got {self.options['disp_tau']}")
        self.weight = float(self.options["disp_weights"][0])
        self.num_epochs = 1

    def setup(self, context: TrainingContext) -> None:
        tap = self.options["disp_tap"]
        if context.tap_channels and tap not in context.tap_channels:
            raise MedsegError(f"--disp-tap {tap!r} is not a tap of this network; taps: {', '.join(context.tap_channels)}")
        self.num_epochs = context.settings.num_epochs if context.settings is not None else 1

    def feature_taps(self) -> Sequence[str]:
        return (self.options["disp_tap"],)

    def weight_for_epoch(self, epoch: int) -> float:
        """``lambda_1`` before ``boundary * num_epochs``, ``lambda_2`` from there on."""
        first, second = (float(w) for w in self.options["disp_weights"])
        return first if epoch < float(self.options["disp_phase_boundary"]) * self.num_epochs else second

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        self.weight = self.weight_for_epoch(epoch)

    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor], target: torch.Tensor,
                   batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        feature_map = features[self.options["disp_tap"]]
        with torch.autocast(feature_map.device.type, enabled=False):
            vectors = pool_representations(feature_map, self.options["disp_pooling"])
            loss = dispersive_loss(vectors, self.options["disp_variant"], tau=float(self.options["disp_tau"]))
        return self.weight * loss, {"disp_loss": float(loss.detach()), "disp_weight": self.weight}
