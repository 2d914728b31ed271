"""``SemanticGuidedContrastive`` (SGCG): pixel contrast against online class Gaussians.

SgCG (``../shared/papers/sgcg_contrastive_generalization.txt``): ``L = L_seg + lambda L_feat``
(Eq. 13) with ``L_feat`` the closed-form distribution-aware pixel contrast of Eq. 11
(:mod:`~medseg_auto.training.losses.semantic_contrast`) against per-class feature means and
covariances estimated online (Eq. 2-3, :mod:`~medseg_auto.training.losses.class_statistics`).
The paper builds on RAM (``SemanticGuidedContrastiveRAM`` combines the two, as in its tables).

Every step: the tap's features at ``N <= --sgcg-max-pixels`` labelled pixels go through a 1x1
projection head (two layers, as SePiCo's, applied per pixel) and L2 normalisation to ``q``;
the statistics are updated with ``q`` (no gradient), then the loss is taken with the updated
statistics (SePiCo's order). During the first ``--sgcg-warmup-epochs`` only the statistics are
updated: they start at zero (Eq. 2-3), which makes the loss meaningless at first.

Gaps filled (NOTES_disseg_sgcg.md B.6; none of these values is in the paper):

- Features: "the penultimate feature maps" = the input of the final 1x1 classifier, i.e. the
  last decoder stage (``--sgcg-tap last``, full resolution); any other tap works, with labels
  downsampled by SePiCo's 75 % majority rule.
- Projection: ``C -> C -> A`` (``--sgcg-proj-dim``, 64) with a leaky ReLU between, then L2
  normalisation (SePiCo; the paper mentions neither).
- ``tau = 0.1`` (``--sgcg-tau``): the usual pixel-contrast temperature for unit vectors
  (SePiCo's configs use 100, which with unit vectors leaves the softmax nearly uniform).
  ``lambda = 0.1`` (``--sgcg-weight``): with ``tau = 0.1`` the term starts near ``log K`` and its
  feature gradients are about ``1/tau`` times those of a plain cross-entropy, so 0.1 keeps it
  at the segmentation loss's scale. Sweep both on real data; the paper's Fig. 3 sweeps lambda.
- Diagonal covariance by default (SePiCo's code), full with ``--sgcg-covariance full``.
- Pixel sampling (uniform, up to 65536 per step): 3D full-resolution maps hold millions of
  pixels; the statistics and the loss are both estimates over pixels, so a uniform sample
  keeps them unbiased.
- The statistics accumulate over the whole run with equal weight per pixel (ISDA; the paper
  gives no decay), so late in training they average features of older networks.

Statistics and the head are stored in the checkpoints (``extra_checkpoint_state``), so
``--continue`` resumes them. Logged per epoch: ``sgcg_loss`` (unweighted, 0 in warm-up),
``sgcg_active`` and ``sgcg_pixels``.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.training.distributed import DistributedContext, all_reduce_sum
from medseg_auto.training.hooks import DomainMethod, TrainingContext
from medseg_auto.training.losses.class_statistics import COVARIANCE_KINDS, ClassFeatureStatistics
from medseg_auto.training.losses.semantic_contrast import downsample_labels, sample_pixels, semantic_contrastive_loss
from medseg_auto.training.registry import register_trainer

LAST_DECODER_STAGE = "last"


@register_trainer("SemanticGuidedContrastive")
class SemanticGuidedContrastive(DomainMethod):
    """SGCG: closed-form pixel contrast against online class means/covariances on the last decoder stage."""

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sgcg-weight", type=float, default=0.1, help="loss weight lambda (Eq. 13)")
        parser.add_argument("--sgcg-tau", type=float, default=0.1, help="temperature tau (Eq. 11)")
        parser.add_argument("--sgcg-tap", default=LAST_DECODER_STAGE,
                            help="feature tap: 'last' (last decoder stage, the classifier's input) or a tap name")
        parser.add_argument("--sgcg-proj-dim", type=int, default=64, help="projection head output size A")
        parser.add_argument("--sgcg-covariance", choices=COVARIANCE_KINDS, default="diagonal",
                            help="class covariance kept per class")
        parser.add_argument("--sgcg-warmup-epochs", type=int, default=1,
                            help="epochs that only update the statistics before the loss switches on")
        parser.add_argument("--sgcg-max-pixels", type=int, default=65536, help="pixels drawn per step (0: all)")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        if float(self.options["sgcg_tau"]) <= 0 or int(self.options["sgcg_proj_dim"]) < 1:
            raise MedsegError("--sgcg-tau must be positive and --sgcg-proj-dim at least 1")
        self.tap: str = self.options["sgcg_tap"]
        self.epoch = 0
        self.head: nn.Module | None = None
        self.statistics: ClassFeatureStatistics | None = None
        self.distributed = DistributedContext()

    def setup(self, context: TrainingContext) -> None:
        channels = context.tap_channels
        if not channels:
            raise MedsegError("SemanticGuidedContrastive needs a DynUNet-like network with feature taps")
        if self.tap == LAST_DECODER_STAGE:
            self.tap = context.last_decoder_tap()
        if self.tap not in channels:
            raise MedsegError(f"--sgcg-tap {self.tap!r} is not a tap of this network; taps: {', '.join(channels)}")
        width, dim = channels[self.tap], int(self.options["sgcg_proj_dim"])
        self.head = nn.Sequential(nn.Linear(width, width), nn.LeakyReLU(0.01), nn.Linear(width, dim)).to(context.device)
        self.statistics = ClassFeatureStatistics(context.num_classes, dim, self.options["sgcg_covariance"], context.device)
        self.distributed = DistributedContext(rank=context.rank, world_size=context.world_size)

    def feature_taps(self) -> Sequence[str]:
        return (self.tap,)

    def trainable_modules(self) -> Iterable[nn.Module]:
        return [self.head] if self.head is not None else []

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        self.epoch = epoch

    @property
    def active(self) -> bool:
        return self.epoch >= int(self.options["sgcg_warmup_epochs"])

    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor], target: torch.Tensor,
                   batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        feature_map = features[self.tap]
        with torch.autocast(feature_map.device.type, enabled=False):
            labels = downsample_labels(target, feature_map.shape[2:], self.statistics.num_classes)
            pixels, pixel_labels = sample_pixels(feature_map, labels, int(self.options["sgcg_max_pixels"]))
            q = F.normalize(self.head(pixels.float()), dim=1)
            self.statistics.update(q, pixel_labels, reduce=lambda t: all_reduce_sum(t, self.distributed))
            if not self.active or pixel_labels.numel() == 0:
                loss = q.sum() * 0.0  # keeps the head in the graph (DDP expects every parameter used)
            else:
                stats = self.statistics
                loss = semantic_contrastive_loss(q, pixel_labels, stats.mean, stats.covariance,
                                                 float(self.options["sgcg_tau"]), known_classes=stats.count > 0)
        logs = {"sgcg_loss": float(loss.detach()), "sgcg_active": float(self.active), "sgcg_pixels": float(q.shape[0])}
        return float(self.options["sgcg_weight"]) * loss, logs

    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {"statistics": self.statistics.state_dict(), "head": {k: v.cpu() for k, v in self.head.state_dict().items()}}

    def load_extra_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.statistics.load_state_dict(state["statistics"])
        self.head.load_state_dict(state["head"])
