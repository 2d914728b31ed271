"""``Consistency``: intensity-jitter consistency plus a reconstruction head (after Stain-AgLr).

Paper: Raipuria, Shrivastava, Singhal, "Stain-AgLr: Stain Agnostic Learning for Computational
Histopathology Using Domain Consistency and Stain Regeneration Loss", DART 2022, pp. 33-44
(reading notes ``NOTES_dart2022.md`` 2.6). Its loss, moved from patch classification to
per-voxel segmentation::

    L = L_seg(x) + lambda1 * MSE(M_gen(features(x_hat)), x) + lambda2 * KL(p(x) || p(x_hat))

``x`` is the training batch as the loader gives it (already augmented), ``x_hat`` the same batch
after an intensity jitter, the stand-in for the paper's HED stain jitter in grey-value
modalities. lambda1 = 0.1 (``--reconstruction-weight``) is the paper's; lambda2
(``--consistency-weight``) is 1 by default, the paper's 10 on request; both are reached after a
ramp-up (below).

Departures from the paper: a ramp-up and lambda2 = 1 (issue 13). The paper applies both
weights from the first step. At its defaults this trainer learned no foreground in a short BUSI run (Dice 0 after 240
steps): a per-voxel KL at weight 10 pulls the jittered view towards the clean view's
prediction before that prediction means anything. Both weights are now multiplied by Laine and
Aila's sigmoid ramp-up ``exp(-5 (1 - t)^2)`` (:func:`rampup_factor`), ``t`` the share of the
first ``--consistency-rampup`` (0.2) of all training steps, so early training is Base's; ``0``
restores the paper's schedule. The network gradient norms of the segmentation loss and of this
method's weighted terms are measured on each epoch's first step and logged
(``grad_norm_segmentation``, ``grad_norm_consistency``): the trainer clips their *sum* at 12,
so a consistency norm far above the segmentation norm would shrink the segmentation step.
Measured at initialisation on a real BUSI batch (``cpu_coarse`` 2d, batch 10): segmentation
1.35, 10 x KL 1.29, 10 x KL + 0.1 x MSE 1.39, total 1.93, so the clip at 12 is not what stalls
the start. Same-seed 300-step runs on synthetic two-site 2D data (15 x 20 steps; final pseudo
Dice, seeds 0 / 1): Base 0.235 / 0.472; the paper's schedule (weight 10 from step 1) 0.221 /
0.245; weight 10 with the ramp-up 0.256 / 0.376; weight 1 with the ramp-up 0.234 / 0.463 (its
curve stays within 0.03 of Base's at every epoch of both seeds but one: seed 1, epoch 7, 0.293
vs 0.390). Hence lambda2 = 1: the only setting measured that learns about as fast as Base. Two seeds on toy data: a check that the default
trains, not evidence that the method helps (the ``experiment methods`` benchmark is for that).

Choices the paper leaves open:

- Jitter, per sample and channel, in this order: gamma ``U(0.7, 1.5)`` on the sample's min-max
  range (nnU-Net's gamma range), contrast ``U(0.75, 1.25)`` about the mean (nnU-Net's range),
  brightness shift ``U(-0.25, 0.25)`` times the sample's standard deviation (for z-scored data
  nnU-Net's multiplicative brightness would be another contrast change).
- KL per voxel on the full-resolution head, averaged over voxels and batch; the clean view's
  probabilities are a fixed target (no gradient through ``p(x)``: the clean view is already
  supervised; letting both move invites agreeing on something wrong). The segmentation loss is
  applied to the clean view only.
- ``M_gen`` is a light head on the last decoder stage's features of the *jittered* pass (tap
  ``decoder.{n-2}``): 3x3 conv, leaky ReLU, 1x1 conv to the input channels; it reconstructs
  the *clean* image (the paper's "regeneration"). It is a trainable module of the method, not
  part of the network: checkpoints keep it for ``--continue``, prediction never builds it.

Cost: the jittered view is a second forward and backward through the whole network inside
``extra_loss`` (about 2x the compute and activation memory of a Base step), plus the head, and
two extra backward passes once per epoch for the gradient norms (single-process runs only:
``torch.autograd.grad`` does not mix with DDP's gradient hooks).

Logged per epoch: ``consistency_kl``, ``consistency_weight`` (after the ramp), ``reconstruction_mse``,
``reconstruction_weight``, ``grad_norm_segmentation``, ``grad_norm_consistency``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.training.hooks import DomainMethod, TrainingContext
from medseg_auto.training.loss import build_loss
from medseg_auto.training.network import tapped
from medseg_auto.training.registry import register_trainer

GAMMA_RANGE = (0.7, 1.5)
CONTRAST_RANGE = (0.75, 1.25)
BRIGHTNESS_RANGE = (-0.25, 0.25)
RAMPUP_FRACTION = 0.2


def intensity_jitter(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gamma, contrast and brightness jitter of ``(B, C, *spatial)`` images, per sample and channel.

    Written by hand because MONAI's ``AdjustContrast``/``ScaleIntensity`` act on one image at a
    time with a host sync each; this is one batched expression on the images' device.
    """
    shape = images.shape[:2] + (1,) * (images.dim() - 2)
    dims = tuple(range(2, images.dim()))

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(shape, device=images.device, dtype=torch.float32).uniform_(low, high, generator=generator)

    x = images.float()
    low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    span = (high - low).clamp_min(1e-7)
    x = ((x - low) / span).clamp(0, 1) ** uniform(*GAMMA_RANGE) * span + low
    mean = x.mean(dim=dims, keepdim=True)
    x = (x - mean) * uniform(*CONTRAST_RANGE) + mean
    x = x + uniform(*BRIGHTNESS_RANGE) * x.std(dim=dims, keepdim=True)
    return x.to(images.dtype)


def voxel_kl(clean_logits: torch.Tensor, jittered_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_clean || p_jittered)`` per voxel, mean over batch and voxels; ``(B, K, *s)`` logits.

    The clean side is detached (a fixed target). Float32.
    """
    target_log = torch.log_softmax(clean_logits.detach().float(), dim=1)
    jittered_log = torch.log_softmax(jittered_logits.float(), dim=1)
    return F.kl_div(jittered_log, target_log, reduction="none", log_target=True).sum(dim=1).mean()


def rampup_factor(step: int, rampup_steps: int) -> float:
    """Laine and Aila's sigmoid ramp-up ``exp(-5 (1 - t)^2)``, ``t = step / rampup_steps`` capped at 1.

    ``exp(-5)`` = 0.0067 at step 0, 0.5 near ``t = 0.63``, 1 from ``rampup_steps`` on (and always
    when ``rampup_steps <= 0``).
    """
    if rampup_steps <= 0 or step >= rampup_steps:
        return 1.0
    return math.exp(-5.0 * (1.0 - step / rampup_steps) ** 2)


def gradient_norm(term: torch.Tensor, parameters: Sequence[nn.Parameter]) -> float:
    """``||d term / d parameters||_2`` without touching ``.grad`` (the graph is kept for the step)."""
    grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
    squares = [g.float().pow(2).sum() for g in grads if g is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


class ReconstructionHead(nn.Module):
    """``(B, F, *patch) -> (B, C_in, *patch)``: 3x3 conv, leaky ReLU, 1x1 conv."""

    def __init__(self, spatial_dims: int, features: int, out_channels: int) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.layers = nn.Sequential(conv(features, features, 3, padding=1), nn.LeakyReLU(0.01),
                                    conv(features, out_channels, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


@register_trainer("Consistency")
class Consistency(DomainMethod):
    """Stain-AgLr-style: KL between clean and intensity-jittered predictions + image reconstruction head."""

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--consistency-weight", type=float, default=1.0, metavar="W",
                            help="weight of the per-voxel KL between clean and jittered views after the ramp-up "
                                 "(default: 1; the paper's 10 learned slower than Base in short runs)")
        parser.add_argument("--reconstruction-weight", type=float, default=0.1, metavar="W",
                            help="weight of the reconstruction MSE after the ramp-up (default: 0.1, the paper's; "
                                 "0 turns the head off)")
        parser.add_argument("--consistency-rampup", type=float, default=RAMPUP_FRACTION, metavar="F",
                            help="share of the training steps over which both weights rise from 0 (sigmoid "
                                 f"ramp-up; default: {RAMPUP_FRACTION}; 0: full weights from the first step, as the paper)")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        if not 0.0 <= float(self.options["consistency_rampup"]) <= 1.0:
            raise MedsegError(f"--consistency-rampup must be in [0, 1], got {self.options['consistency_rampup']}")
        self.step = 0
        self.measure_gradients = False
        self.epoch_logs: dict[str, float] = {}

    def setup(self, context: TrainingContext) -> None:
        if not isinstance(context.network, DynUNet):
            raise MedsegError("Consistency needs a DynUNet-based network (it reads the last decoder stage)")
        self.network, self.device = context.network, context.device
        self.last_decoder = last_decoder = context.last_decoder_tap()
        self.head = ReconstructionHead(context.configuration.spatial_dims, context.tap_channels[last_decoder],
                                       context.plans.num_input_channels).to(context.device)
        self.generator = torch.Generator(device=context.device)
        self.generator.manual_seed(int(torch.initial_seed() % 2**31))
        settings = context.settings
        self.iterations_per_epoch = settings.iterations_per_epoch if settings is not None else 1
        total_steps = (settings.num_epochs if settings is not None else 1) * self.iterations_per_epoch
        self.rampup_steps = round(float(self.options["consistency_rampup"]) * total_steps)
        self.segmentation_loss = build_loss(context.configuration.batch_dice)
        self.parameters = [p for p in context.network.parameters() if p.requires_grad]
        self.single_process = context.world_size == 1  # torch.autograd.grad is not DDP-safe

    def trainable_modules(self) -> Iterable[nn.Module]:
        return [self.head]

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        self.step = epoch * self.iterations_per_epoch  # so a resumed run continues the ramp
        self.measure_gradients = self.single_process
        self.epoch_logs = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        logs.update(self.epoch_logs)

    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor], target: torch.Tensor,
                   batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        ramp = rampup_factor(self.step, self.rampup_steps)
        self.step += 1
        clean = batch["data"].to(self.device, non_blocking=True)
        jittered = intensity_jitter(clean, self.generator)
        with tapped(self.network, self.last_decoder) as taps:
            outputs = self.network(jittered)
            decoder_features = taps.features[self.last_decoder]
        jittered_logits = outputs if isinstance(outputs, torch.Tensor) else outputs[0]
        kl = voxel_kl(logits[0], jittered_logits)
        consistency_weight = ramp * float(self.options["consistency_weight"])
        loss = consistency_weight * kl
        logs = {"consistency_kl": float(kl.detach()), "consistency_weight": consistency_weight}
        weight = ramp * float(self.options["reconstruction_weight"])
        if float(self.options["reconstruction_weight"]) > 0:
            reconstruction = self.head(decoder_features)
            mse = F.mse_loss(reconstruction.float(), clean.float())
            loss = loss + weight * mse
            logs.update(reconstruction_mse=float(mse.detach()), reconstruction_weight=weight)
        if self.measure_gradients and torch.is_grad_enabled():
            self.measure_gradients = False
            logs.update(self._gradient_norms(logits, target, loss))
            self.epoch_logs = {key: logs[key] for key in ("grad_norm_segmentation", "grad_norm_consistency")}
        return loss, logs

    def _gradient_norms(self, logits: Sequence[torch.Tensor], target: torch.Tensor,
                        loss: torch.Tensor) -> dict[str, float]:
        """Network gradient norms of the segmentation loss and of this method's weighted terms, on
        the epoch's first step (two extra backward passes per epoch). Their sum is what the
        trainer clips at ``grad_clip_norm`` (12): a consistency norm well above the segmentation
        norm means the clip is shrinking the segmentation gradient."""
        segmentation = self.segmentation_loss(list(logits), target.to(self.device))
        return {"grad_norm_segmentation": gradient_norm(segmentation, self.parameters),
                "grad_norm_consistency": gradient_norm(loss, self.parameters)}

    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {"reconstruction_head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()}}

    def load_extra_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        if state and "reconstruction_head" in state:
            self.head.load_state_dict(state["reconstruction_head"])
