"""``Consistency``: intensity-jitter consistency plus a reconstruction head (after Stain-AgLr).

Paper: Raipuria, Shrivastava, Singhal, "Stain-AgLr: Stain Agnostic Learning for Computational
Histopathology Using Domain Consistency and Stain Regeneration Loss", DART 2022, pp. 33-44
(reading notes ``NOTES_dart2022.md`` 2.6). Its loss, moved from patch classification to
per-voxel segmentation::

    L = L_seg(x) + lambda1 * MSE(M_gen(features(x_hat)), x) + lambda2 * KL(p(x) || p(x_hat))

``x`` is the training batch as the loader gives it (already augmented), ``x_hat`` the same batch
after an intensity jitter, the stand-in for the paper's HED stain jitter in grey-value
modalities. lambda1 = 0.1 (``--reconstruction-weight``) and lambda2 = 10
(``--consistency-weight``) are the paper's.

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
``extra_loss`` (about 2x the compute and activation memory of a Base step), plus the head.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.training.hooks import DomainMethod, TrainingContext
from medseg_auto.training.network import tapped
from medseg_auto.training.registry import register_trainer

GAMMA_RANGE = (0.7, 1.5)
CONTRAST_RANGE = (0.75, 1.25)
BRIGHTNESS_RANGE = (-0.25, 0.25)


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
        parser.add_argument("--consistency-weight", type=float, default=10.0, metavar="W",
                            help="weight of the per-voxel KL between clean and jittered views (default: 10, the paper's)")
        parser.add_argument("--reconstruction-weight", type=float, default=0.1, metavar="W",
                            help="weight of the reconstruction MSE (default: 0.1, the paper's; 0 turns the head off)")

    def setup(self, context: TrainingContext) -> None:
        if not isinstance(context.network, DynUNet):
            raise MedsegError("Consistency needs a DynUNet-based network (it reads the last decoder stage)")
        self.network, self.device = context.network, context.device
        self.last_decoder = last_decoder = context.last_decoder_tap()
        self.head = ReconstructionHead(context.configuration.spatial_dims, context.tap_channels[last_decoder],
                                       context.plans.num_input_channels).to(context.device)
        self.generator = torch.Generator(device=context.device)
        self.generator.manual_seed(int(torch.initial_seed() % 2**31))

    def trainable_modules(self) -> Iterable[nn.Module]:
        return [self.head]

    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor], target: torch.Tensor,
                   batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        clean = batch["data"].to(self.device, non_blocking=True)
        jittered = intensity_jitter(clean, self.generator)
        with tapped(self.network, self.last_decoder) as taps:
            outputs = self.network(jittered)
            decoder_features = taps.features[self.last_decoder]
        jittered_logits = outputs if isinstance(outputs, torch.Tensor) else outputs[0]
        kl = voxel_kl(logits[0], jittered_logits)
        loss = float(self.options["consistency_weight"]) * kl
        logs = {"consistency_kl": float(kl.detach())}
        weight = float(self.options["reconstruction_weight"])
        if weight > 0:
            reconstruction = self.head(decoder_features)
            mse = F.mse_loss(reconstruction.float(), clean.float())
            loss = loss + weight * mse
            logs["reconstruction_mse"] = float(mse.detach())
        return loss, logs

    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {"reconstruction_head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()}}

    def load_extra_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        if state and "reconstruction_head" in state:
            self.head.load_state_dict(state["reconstruction_head"])
