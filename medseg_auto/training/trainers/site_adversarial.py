"""``SiteAdversarial``: a site classifier on an encoder stage behind a gradient reversal layer.

Paper: Bevan, Atapour-Abarghouei, "Detecting Melanoma Fairly: Skin Tone Detection and Debiasing
for Skin Lesion Classification", DART 2022 (reading notes ``NOTES_dart2022.md``, table row 1):
a secondary "unlearning" head classifies the bias label from the shared features; gradient
reversal (Ganin and Lempitsky's GRL, as in their LNTL and CLGR heads) multiplies its gradient by
``-lambda`` on the way into the feature extractor, so the head learns to tell the bias while the
features learn to hide it. Here the bias label is the case's site (hospital/scanner), for pooled
multi-site training::

    z = GRL_lambda(stage(x))                                 (B, F, *s)
    L = L_seg + CE_w(h(pool(z)), site)                       h: Linear(P, H) - ReLU - Linear(H, S)

Three departures from the paper, each because the paper's choice left the head nothing to learn
on our networks and data (a head that cannot tell the sites gives the reversal nothing to
unlearn):

- ``pool`` (``--site-features``): the paper's classifier reads its backbone's pooled features
  (batch-normalised ResNets). Ours end in instance norm, so the global average of a stage is
  nearly the same for every sample (on synthetic two-site data a head on it did not even fit
  its training patches: 0.45-0.55, against 0.80-0.92 for the covariance head;
  :mod:`~medseg_auto.training.feature_statistics`). The default, ``covariance``, is second-order
  pooling: a learnt 1x1 projection to ``--site-covariance-channels`` (32) channels and their
  covariance over space (528 values), which instance norm does not remove; ``gap`` is the
  former global average (``P = F``).
- the stage (``--site-stage``): the paper's shared features would be our bottleneck. On pooled
  BUSI + STU (2d, ``plans_cpu_coarse``, 6 stages, fold 0, 100 iterations, one seed, lambda 0 so
  that only the head learns) the covariance head on the bottleneck stayed at a balanced site
  accuracy of 0.50 in every epoch (it always answered BUSI), weighted loss or not; on
  ``encoder.3`` it rose 0.55, 0.80, 0.90, 0.98 over the four epochs, and with the reversal on
  (the defaults: lambda ramped to 0.1) it went 0.55, 0.75, 0.72, 0.69: the features hid the
  sites from it, as the method intends (pseudo Dice 0.38 against 0.40 without). A logistic-regression probe
  of three trained BUSI models agrees (``benchmarks/site_information.py``: bottleneck 0.44-0.65,
  encoder.3 covariance 0.67-0.83). Deeper stages keep what segments and drop the style that
  tells sites apart (MixStyle and DSU act on early and middle stages for the same reason), so
  the default, ``auto``, is the middle encoder stage, ``encoder.<n_stages // 2>``;
  ``bottleneck`` is selectable.
- the loss weights (``--site-weighting``): inverse to each site's share of the training cases
  (``balanced``, default; ``none`` is the paper's plain cross-entropy), so that on pooled data
  that is mostly one site (BUSI 624 training cases, STU 33) the head is not rewarded for always
  answering the big site.

Our choices, not the paper's: a one-hidden-layer head (``--site-hidden 64``; ``0`` gives their
single fully connected layer; they saw no gain from a deeper one), ``lambda = 0.1`` raised from 0
with DANN's ramp ``lambda_p = lambda (2 / (1 + exp(-10 p)) - 1)``, ``p = epoch / epochs``
(``--grl-no-ramp`` for a constant lambda). TABE's confusion loss and LNTL's conditional entropy
need alternating optimizer steps and are not implemented. Sites are indexed over the training
cases' sites (sorted); cases without a site do not enter the site loss. Logged per epoch in
``progress.csv``: ``site_loss``, ``site_accuracy`` (train batches), ``site_balanced_accuracy``
(the mean per-site recall over the epoch: falls toward 1 / sites as the features lose site
information, whatever the sites' mix), ``site_majority_rate`` and ``grl_lambda``. A fold whose
training cases come from fewer than two sites is refused: there is no site to unlearn.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.training.feature_statistics import CovariancePooling
from medseg_auto.training.hooks import DomainMethod, TrainingContext
from medseg_auto.training.registry import register_trainer
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.site_adversarial")
BOTTLENECK = "bottleneck"
AUTO_STAGE = "auto"
IGNORE = -100
SITE_FEATURES = ("covariance", "gap")


class GlobalAveragePooling(nn.Module):
    """``(B, F, *s) -> (B, F)`` float32 spatial mean."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_features = channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.float().flatten(2).mean(dim=2)


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, ``-lambda * grad`` backward (written here: ten lines, not worth a dependency)."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


def reverse_gradient(features: torch.Tensor, strength: float) -> torch.Tensor:
    """``features`` unchanged; their gradient multiplied by ``-strength`` (any shape)."""
    return _ReverseGradient.apply(features, float(strength))


def ramped_lambda(strength: float, epoch: int, num_epochs: int, ramp: bool = True) -> float:
    """DANN's schedule ``strength (2 / (1 + exp(-10 p)) - 1)``, ``p = epoch / num_epochs``; constant without ramp."""
    if not ramp:
        return strength
    progress = epoch / max(1, num_epochs)
    return strength * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


def site_classifier(channels: int, n_sites: int, hidden: int) -> nn.Module:
    """``(B, P) -> (B, S)`` logits: one linear layer, or linear - ReLU - linear with ``hidden`` units."""
    if hidden <= 0:
        return nn.Linear(channels, n_sites)
    return nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_sites))


class SiteHead(nn.Module):
    """``(B, F, *s) -> (B, S)`` logits: ``pooling`` then ``classifier``, in float32."""

    def __init__(self, pooling: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.pooling, self.classifier = pooling, classifier

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooling(features).float())


def site_head(channels: int, n_sites: int, hidden: int, features: str = "covariance", reduced: int = 32) -> SiteHead:
    """The site head on a ``channels``-wide feature map (see the module docstring for ``features``)."""
    if features not in SITE_FEATURES:
        raise MedsegError(f"--site-features must be one of {', '.join(SITE_FEATURES)}, got {features!r}")
    pooling = CovariancePooling(channels, reduced) if features == "covariance" else GlobalAveragePooling(channels)
    return SiteHead(pooling, site_classifier(pooling.out_features, n_sites, hidden))


def middle_encoder_stage(tap_names: Sequence[str]) -> str:
    """``encoder.<n_stages // 2>`` of a network with taps ``encoder.0 .. encoder.K`` and a
    bottleneck (``n_stages = K + 2``): encoder.3 of a 6-stage U-Net, encoder.2 of a 4- or
    5-stage one; the bottleneck when the network has no such encoder tap."""
    encoders = {int(name.split(".")[1]) for name in tap_names if name.startswith("encoder.")
                and name.split(".")[1].isdigit()}
    index = (len(encoders) + 1) // 2
    return f"encoder.{index}" if index in encoders else BOTTLENECK


@register_trainer("SiteAdversarial")
class SiteAdversarial(DomainMethod):
    """Site classifier on an encoder stage with gradient reversal (DART 2022 unlearning head, site as bias)."""

    min_training_sites = 2  # one site: nothing to unlearn (setup refuses such a fold)

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--grl-lambda", type=float, default=0.1,
                            help="gradient reversal strength: the encoder gets -LAMBDA x the site-loss gradient")
        parser.add_argument("--grl-no-ramp", action="store_true",
                            help="constant lambda (default: DANN's ramp from 0 over the epochs)")
        parser.add_argument("--site-hidden", type=int, default=64,
                            help="hidden units of the site head (0: one linear layer, as in the paper)")
        parser.add_argument("--site-features", choices=SITE_FEATURES, default="covariance",
                            help="what the site head reads from the bottleneck: channel covariance of a learnt "
                                 "projection (default), or the global average (nearly constant after instance norm)")
        parser.add_argument("--site-stage", default=AUTO_STAGE, metavar="TAP",
                            help="the stage whose features the site head reads and the reversal reaches: auto (default: "
                                 "the middle encoder stage, encoder.<stages // 2>), bottleneck (the paper's shared "
                                 "features) or encoder.N")
        parser.add_argument("--site-weighting", choices=("balanced", "none"), default="balanced",
                            help="site loss weights: inverse to each site's share of the training cases "
                                 "(default), or none (the paper's plain cross-entropy)")
        parser.add_argument("--site-covariance-channels", type=int, default=32, metavar="R",
                            help="channels of the projection before the covariance (R (R+1)/2 values; default 32)")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.site_index: dict[str, int] = {}
        self.head: nn.Module | None = None
        self.strength = 0.0
        self.num_epochs = 1
        self.stage = str(self.options.get("site_stage", AUTO_STAGE))
        self.site_weights: torch.Tensor | None = None  # (S,) cross-entropy weight per site
        self.seen: torch.Tensor | None = None  # (S,) labelled training samples per site this epoch
        self.correct: torch.Tensor | None = None  # (S,) of those, classified as their site

    def setup(self, context: TrainingContext) -> None:
        sites = sorted({context.sites.get(case) for case in context.train_case_ids} - {None})
        if len(sites) < 2:
            raise MedsegError(
                f"SiteAdversarial needs training cases from at least two sites, this fold has "
                f"{sites or 'none recorded'}; import each site with 'import-folder --site NAME' (and --append), "
                "or train with Base")
        self.site_index = {site: index for index, site in enumerate(sites)}
        counts = torch.tensor([sum(context.sites.get(case) == site for case in context.train_case_ids)
                               for site in sites], dtype=torch.float32)
        self.site_weights = (counts.sum() / (len(sites) * counts) if self.options.get("site_weighting", "balanced")
                             == "balanced" else torch.ones(len(sites))).to(context.device)
        if self.stage == AUTO_STAGE:
            self.stage = middle_encoder_stage(context.tap_channels)
        channels = context.tap_channels.get(self.stage)
        if channels is None:
            raise MedsegError(f"SiteAdversarial needs the network's {self.stage!r} tap (a DynUNet-based network; "
                              f"taps: {', '.join(context.tap_channels) or 'none'})")
        self.head = site_head(channels, len(sites), int(self.options["site_hidden"]), str(self.options["site_features"]),
                              int(self.options["site_covariance_channels"])).to(context.device)
        self.num_epochs = context.settings.num_epochs if context.settings is not None else 1
        log.info("SiteAdversarial: %d sites %s (loss weights %s), %s head on %d %s channels", len(sites), sites,
                 [round(float(w), 3) for w in self.site_weights], self.options["site_features"], channels, self.stage)

    def feature_taps(self) -> Sequence[str]:
        return (self.stage,)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.head] if self.head is not None else []

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        self.strength = ramped_lambda(float(self.options["grl_lambda"]), epoch, self.num_epochs,
                                      ramp=not self.options["grl_no_ramp"])
        self.seen = torch.zeros(len(self.site_index), dtype=torch.long)
        self.correct = torch.zeros(len(self.site_index), dtype=torch.long)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Add the epoch's ``site_balanced_accuracy`` (mean over sites of the share of each
        site's samples the head classified right: 1 / S for a head that cannot tell the sites,
        whatever their mix) and ``site_majority_rate`` (the most common site's share of the
        samples, which plain ``site_accuracy`` reaches by always answering that site). On pooled
        data that is mostly one site (BUSI 780 + STU 42 cases) only the balanced one shows
        whether the features still carry site information."""
        if self.seen is None or int(self.seen.sum()) == 0:
            return
        present = self.seen > 0
        recall = self.correct[present].float() / self.seen[present].float()
        logs["site_balanced_accuracy"] = float(recall.mean())
        logs["site_majority_rate"] = float(self.seen.max()) / float(self.seen.sum())

    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor], target: torch.Tensor,
                   batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.autocast(features[self.stage].device.type, enabled=False):
            scores = self.head(reverse_gradient(features[self.stage], self.strength)).float()  # (B, S)
        labels = torch.tensor([self.site_index.get(site, IGNORE) if site is not None else IGNORE
                               for site in batch["sites"]], device=scores.device)
        known = labels != IGNORE
        if not bool(known.any()):
            return scores.sum() * 0.0, {"grl_lambda": self.strength}
        loss = nn.functional.cross_entropy(scores, labels, weight=self.site_weights, ignore_index=IGNORE)
        right = scores.argmax(dim=1)[known] == labels[known]
        accuracy = right.float().mean()
        if self.seen is not None:
            known_labels = labels[known].cpu()
            self.seen += torch.bincount(known_labels, minlength=len(self.site_index))
            self.correct += torch.bincount(known_labels[right.cpu()], minlength=len(self.site_index))
        return loss, {"site_loss": float(loss.detach()), "site_accuracy": float(accuracy), "grl_lambda": self.strength}

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """The head's weights and the site order, so ``--continue`` resumes the same classifier."""
        head = {name: tensor.detach().cpu() for name, tensor in self.head.state_dict().items()} if self.head else {}
        return {"sites": list(self.site_index), "head": head}

    def load_extra_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        if not state.get("head") or self.head is None:
            return
        if list(state.get("sites", [])) != list(self.site_index):
            raise MedsegError(f"SiteAdversarial: the checkpoint's sites {state.get('sites')} differ from this "
                              f"fold's {list(self.site_index)}; the site head cannot be resumed")
        self.head.load_state_dict(state["head"])
