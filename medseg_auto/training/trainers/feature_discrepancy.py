"""``FeatureDiscrepancy``: Roy et al., "Is Exchangeability better than I.I.D. to handle Data
Distribution Shifts while Pooling Data for Data-scarce Medical image segmentation?" (MIDL 2026
submission; ``shared/papers/feature_discrepancy_exchangeability.txt``), eq. 1 on every layer.

Loss: ``L = L_seg + w(epoch) * sum_l softmax(theta)_l * L_fd,l`` with
``L_fd,l = mean over (sample, foreground class) of -log(d(F_g, B_g) + eps)`` at layer ``l``
(definitions of ``F_g``, ``B_g``, ``d`` and the masks: :mod:`medseg_auto.training.losses.feature_discrepancy`).

Layers. The paper's U-Net layers map onto the DynUNet taps (:mod:`medseg_auto.training.network`):
its encoder stages are ``encoder.0 .. encoder.{n-2}``, its bottleneck ``bottleneck``, its decoder
stages ``decoder.0 .. decoder.{n-2}`` (each the output of a stage's two convolutions, after instance
norm and leaky ReLU, as in a U-Net's "feature map F"). The 1x1 output convolution and the
deep-supervision heads are logits, not features, and are left out.

Per-layer weights. The paper learns one unbounded ``alpha_l`` per layer, starting at 0 after a
warm start. That is ill-posed as an optimisation: ``dL/dalpha_l = L_fd,l``, so a layer whose
``L_fd`` is negative (``d > 1``) drives its ``alpha`` to +infinity and the total loss to -infinity,
and one with a positive ``L_fd`` drives its ``alpha`` to 0 and beyond into negative weights (then
*maximising* ``L_fd``). Here the total weight is a schedule, ``w(epoch)``, and only the split between
layers is learnt: ``softmax(theta)``, ``theta`` starting at 0 (equal weights), trained with the
network. The split stays bounded; it moves towards layers whose ``L_fd`` is lowest, which is the
paper's reading of the final ``alpha`` (Fig. 2a: the layer with the highest ``alpha`` matters most).

Schedule (the paper's warm start, 100 + 75 epochs): ``w = 0`` for the first
``round(fd_warmup_fraction * epochs)`` epochs (segmentation loss only; ``L_fd`` is still computed,
without gradient, and logged), then ``w`` ramps linearly to ``fd_weight`` over the first tenth of
the remaining epochs (the paper's ``alpha`` "progressively rises from zero") and stays there.
``fd_weight`` defaults to 0.1: the paper reports no final ``alpha`` values, and with the
normalised distance each layer's ``L_fd`` is of order 1 (about -1 to 3 on the toy data), like the
Dice + CE loss, so 0.1 keeps segmentation dominant; worth a sweep (0.03, 0.1, 0.3) on real data.
The split ``theta`` is trained by the network's optimizer (SGD, same learning rate and decay).

Logged per epoch (``progress.csv``): ``fd_weight`` (``w``), ``fd_loss`` (the weighted sum),
``fd/TAP`` (``L_fd`` of each layer, mean over steps that had a valid pair) and ``fd_alpha/TAP``
(``w * softmax(theta)``). Computed in float32 even under bf16/fp16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.training.losses.feature_discrepancy import (
    NORMALIZATIONS, LayerStatistics, MaskPyramid, discrepancy_loss, layer_statistics,
)
from medseg_auto.training.hooks import DomainMethod, TrainingContext
from medseg_auto.training.registry import register_trainer

PAPER_WARMUP_FRACTION = 100 / 175
RAMP_FRACTION = 0.1


class LayerWeights(nn.Module):
    """``softmax(theta)`` over the layers; ``theta`` starts at 0 (equal shares)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def forward(self) -> torch.Tensor:
        return torch.softmax(self.logits.float(), dim=0)


def warmup_epochs(num_epochs: int, fraction: float) -> int:
    return min(num_epochs, max(0, round(fraction * num_epochs)))


def scheduled_weight(epoch: int, num_epochs: int, weight: float, fraction: float) -> float:
    """``w(epoch)``: 0 during the warm-up, then a linear ramp over a tenth of the rest to ``weight``."""
    start = warmup_epochs(num_epochs, fraction)
    if epoch < start:
        return 0.0
    ramp = max(1, round(RAMP_FRACTION * (num_epochs - start)))
    return weight * min(1.0, (epoch - start + 1) / ramp)


def network_taps(context: TrainingContext, method: str) -> list[str]:
    """Every encoder, bottleneck and decoder tap of the context's network, in forward order."""
    if not context.tap_channels:
        raise MedsegError(f"{method} needs a DynUNet-based network (feature taps encoder.i, bottleneck, "
                          f"decoder.j); {type(context.network).__name__} has none. Subclass DeepSupervisedDynUNet "
                          "for a custom network (see medseg_auto/training/network_registry.py).")
    return list(context.tap_channels)


@register_trainer("FeatureDiscrepancy")
class FeatureDiscrepancy(DomainMethod):
    """Roy et al. L_fd: -log foreground-background feature distance on every encoder, bottleneck and decoder stage."""

    #: prefix of the logged columns
    log_prefix = "fd"

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--fd-weight", type=float, default=0.1,
                            help="total weight w of the feature-discrepancy terms after the warm-up (split "
                                 "between layers by learnt softmax weights)")
        parser.add_argument("--fd-warmup-fraction", type=float, default=PAPER_WARMUP_FRACTION,
                            help="share of the epochs trained on the segmentation loss alone (paper: 100 of 175)")
        parser.add_argument("--fd-normalization", choices=NORMALIZATIONS, default="variance",
                            help="divide each channel's squared difference by its batch variance (scale-free, "
                                 "bounded) or not (the paper's raw distance)")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        if self.options["fd_weight"] < 0:
            raise MedsegError(f"--fd-weight must be >= 0, got {self.options['fd_weight']}")
        if not 0.0 <= self.options["fd_warmup_fraction"] <= 1.0:
            raise MedsegError(f"--fd-warmup-fraction must be within [0, 1], got {self.options['fd_warmup_fraction']}")
        self.taps: list[str] = []
        self.epoch = 0
        self.num_epochs = 1

    def setup(self, context: TrainingContext) -> None:
        self.taps = network_taps(context, type(self).__name__)
        self.num_classes = context.num_classes
        self.num_epochs = context.settings.num_epochs if context.settings is not None else 1
        self.layer_weights = LayerWeights(len(self.taps)).to(context.device)

    def feature_taps(self) -> Sequence[str]:
        return tuple(self.taps)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.layer_weights]

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        self.epoch = epoch

    @property
    def weight(self) -> float:
        return scheduled_weight(self.epoch, self.num_epochs, self.options["fd_weight"],
                                self.options["fd_warmup_fraction"])

    # ----- the loss ------------------------------------------------------------------------------
    def prepare_batch(self, batch: Mapping[str, Any], batch_size: int, device: torch.device) -> None:
        """Per-step state shared by all layers (subclasses pair samples here)."""

    def layer_terms(self, stats: LayerStatistics) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The loss terms of one layer: name -> (value, number of valid pairs as a tensor)."""
        return {self.log_prefix: discrepancy_loss(stats)}

    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor],
                   target: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        weight = self.weight
        grad = contextlib.nullcontext() if weight > 0 else torch.no_grad()
        with grad, torch.autocast(target.device.type, enabled=False):
            self.prepare_batch(batch, target.shape[0], target.device)
            masks = MaskPyramid(target, self.num_classes, batch.get("padding"))  # padding is not background
            per_layer, names, values, counts = [], [], [], []
            for tap in self.taps:
                feature = features[tap]
                stats = layer_statistics(feature, masks.at(feature.shape[2:]), self.options["fd_normalization"])
                terms = self.layer_terms(stats)
                per_layer.append(torch.stack([value for value, _ in terms.values()]).sum())
                for name, (value, count) in terms.items():
                    names.append(f"{name}/{tap}")
                    values.append(value.detach())
                    counts.append(count.to(value.dtype))
            alphas = weight * self.layer_weights()
            total = (alphas * torch.stack(per_layer)).sum()
        # one transfer for every logged number (a device sync per number would stall the step)
        numbers = torch.cat([torch.stack(values), torch.stack(counts), alphas.detach(), total.detach().reshape(1)]).tolist()
        n = len(names)
        logs = {name: value for name, value, count in zip(names, numbers[:n], numbers[n:2 * n]) if count > 0}
        logs.update({f"{self.log_prefix}_alpha/{tap}": alpha for tap, alpha in zip(self.taps, numbers[2 * n:-1])})
        logs[f"{self.log_prefix}_weight"] = weight
        logs[f"{self.log_prefix}_loss"] = numbers[-1]
        if weight == 0:
            total = torch.zeros((), device=target.device)
        return total, logs

    # ----- checkpoints -------------------------------------------------------------------------
    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {"taps": list(self.taps), "layer_logits": self.layer_weights.logits.detach().cpu()}

    def load_extra_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if list(state.get("taps", [])) != self.taps:
            raise MedsegError(f"checkpoint layer weights are for taps {state.get('taps')}, this network has {self.taps}")
        with torch.no_grad():
            self.layer_weights.logits.copy_(state["layer_logits"])
