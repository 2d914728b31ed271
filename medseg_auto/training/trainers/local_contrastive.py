"""``LocalContrastive``: the supervised local (pixel-level) contrastive loss of Chaitanya et al.,
"Contrastive learning of global and local features for medical image segmentation with limited
annotations" (NeurIPS 2020), in its supervised form (Chaitanya et al. 2021, arXiv:2112.09645,
where labels define the positives), trained jointly with the segmentation loss. It is the
``L_con`` baseline of Roy et al. (``shared/papers/feature_discrepancy_exchangeability.txt``, Fig. 3).

Loss: ``L = L_seg + lc_weight * L_local`` with, over the sampled pixels ``a`` of the batch,

    L_local = mean_a mean_{p in P(a)} -log( exp(s_ap / tau) / (exp(s_ap / tau) + sum_{n in N(a)} exp(s_an / tau)) )

``s`` the cosine similarity of projected embeddings, ``P(a)`` the other sampled pixels of ``a``'s
class (in any image of the batch), ``N(a)`` those of the other classes (background included, so
binary tasks have negatives; the 2021 code contrasts foreground classes only). The form of each
term (positive over positive plus negatives) is the 2020 paper's local loss.

Choices (the 2021 code's defaults where it has one):

- features: the full-resolution decoder stage ``decoder.{n-2}`` (the code's last decoder block,
  ``dec_c1_a``; labels need no resampling there); ``--lc-tap`` picks another decoder or encoder
  stage, whose labels are then taken by nearest-neighbour downsampling;
- projection head ``h``: two 1x1 convolutions (the first with batch norm and ReLU, no biases),
  as many channels as the features; applied to the sampled pixels only (a 1x1 convolution on a
  pixel is a linear layer on its feature vector), so the head costs nothing at full resolution;
- ``--lc-pixels 16`` pixels drawn uniformly per class per image (the code: 3; more pixels cost
  little and lower the variance), at most :data:`MAX_ANCHORS` in all (the similarity matrix is
  anchors x anchors): for larger batches the per-class count shrinks to fit;
- ``--lc-temperature 0.1`` and ``--lc-weight 0.1`` (the code's ``temp_fac`` and ``lamda_local``).

Logged per epoch: ``lc_loss`` (``L_local`` before weighting) and ``lc_anchors`` (anchors used per
step). Computed in float32 even under bf16/fp16 autocast.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.training.losses.local_contrastive import local_contrastive_loss, sample_pixels
from medseg_auto.training.hooks import DomainMethod, TrainingContext
from medseg_auto.training.registry import register_trainer
from medseg_auto.training.trainers.feature_discrepancy import network_taps

MAX_ANCHORS = 2048


def projection_head(channels: int) -> nn.Sequential:
    """The 2021 code's ``h_phi``: 1x1 conv (no bias) - batch norm - ReLU - 1x1 conv (no bias),
    written as linear layers on sampled feature vectors ``(M, C) -> (M, C)``."""
    return nn.Sequential(nn.Linear(channels, channels, bias=False), nn.BatchNorm1d(channels), nn.ReLU(inplace=True),
                         nn.Linear(channels, channels, bias=False))


@register_trainer("LocalContrastive")
class LocalContrastive(DomainMethod):
    """Chaitanya et al. supervised local contrastive loss on the last decoder stage (baseline L_con of Roy et al.)."""

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--lc-weight", type=float, default=0.1, help="weight of the local contrastive loss")
        parser.add_argument("--lc-temperature", type=float, default=0.1, help="temperature tau of the similarities")
        parser.add_argument("--lc-pixels", type=int, default=16, help="pixels sampled per class per image")
        parser.add_argument("--lc-tap", default=None,
                            help="feature tap (default: the full-resolution decoder stage, decoder.{n-2})")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        if self.options["lc_temperature"] <= 0 or self.options["lc_pixels"] < 1 or self.options["lc_weight"] < 0:
            raise MedsegError("LocalContrastive needs --lc-temperature > 0, --lc-pixels >= 1 and --lc-weight >= 0; got "
                              f"{self.options['lc_temperature']}, {self.options['lc_pixels']}, {self.options['lc_weight']}")
        self.tap = ""

    def setup(self, context: TrainingContext) -> None:
        taps = network_taps(context, "LocalContrastive")
        self.tap = self.options["lc_tap"] or context.last_decoder_tap()
        if self.tap not in context.tap_channels:
            raise MedsegError(f"--lc-tap {self.tap}: no such feature tap; available: {', '.join(taps)}")
        self.num_classes = context.num_classes
        self.head = projection_head(context.tap_channels[self.tap]).to(context.device)

    def feature_taps(self) -> Sequence[str]:
        return (self.tap,)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.head]

    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor],
                   target: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]] | None:
        feature = features[self.tap]
        batch_size, spatial = feature.shape[0], feature.shape[2:]
        labels = target if tuple(target.shape[2:]) == tuple(spatial) else \
            F.interpolate(target.float(), size=tuple(spatial), mode="nearest").long()
        per_class = max(1, min(self.options["lc_pixels"], MAX_ANCHORS // (batch_size * self.num_classes)))
        with torch.autocast(target.device.type, enabled=False):
            index, classes, valid = sample_pixels(labels.flatten(1), self.num_classes, per_class)
            flat = feature.flatten(2)
            gathered = flat.gather(2, index.flatten(1).unsqueeze(1).expand(-1, flat.shape[1], -1))  # (B, C, K*P)
            vectors = gathered.transpose(1, 2).reshape(-1, flat.shape[1])[valid.flatten()].float()
            anchor_classes = classes.flatten()[valid.flatten()]
            if vectors.shape[0] < 2:  # batch norm needs two vectors; nothing to contrast anyway
                return torch.zeros((), device=target.device), {}
            loss, anchors = local_contrastive_loss(self.head(vectors), anchor_classes, self.options["lc_temperature"])
        value, anchors = torch.stack([loss.detach(), anchors.to(loss.dtype)]).tolist()  # one device sync
        logs = {"lc_anchors": anchors, **({"lc_loss": value} if anchors else {})}
        return self.options["lc_weight"] * loss, logs

    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {"tap": self.tap, "head": {name: value.detach().cpu() for name, value in self.head.state_dict().items()}}

    def load_extra_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        if state:
            self.head.load_state_dict(state["head"])
