"""``RandomAmplitudeMixup`` (RAM): low-frequency Fourier amplitude of another site, phase kept.

Zhou, Qi, Shi, "Generalizable medical image segmentation via random amplitude mixup and
domain-specific image restoration" (ECCV 2022), the baseline SGCG builds on; the transform is
:mod:`~medseg_auto.training.data.amplitude_mixup`. Here it is an augmentation on each augmented
training batch (``transform_batch``, main process): with probability ``--ram-probability`` a
sample is replaced by its mix with a donor from another site *of the same batch*, with donor
share ``ratio ~ U(--ram-ratio-range)`` in the window ``--ram-window``.

Defaults, from RAM-DSIR's code (NOTES_disseg_sgcg.md B.7): window 0.1; donor share 0 .. 0.9
(their own-share ``r`` from {0.1, ..., 1.0}; we draw the share uniformly from the interval).
RAM-DSIR trains every step on both the original and the mixed image (two losses); replacing
each sample with probability 0.5 gives the same expected loss (up to a factor 2) for one
forward pass, hence ``--ram-probability 0.5``. RAM-DSIR draws donors from the whole other-site
training set; donors from the batch need no extra reading. A batch with a single site (or no
recorded sites) mixes with another sample of the batch instead, and the log says so once.
DSIR (the restoration decoder) is not part of this trainer.

Logged per epoch: ``ram_mixed`` (fraction of samples mixed) and ``ram_cross_site`` (fraction
of batches with more than one site).
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

import torch

from medseg_auto.errors import MedsegError
from medseg_auto.training.data.amplitude_mixup import choose_donors, mix_low_frequency_amplitude
from medseg_auto.training.hooks import DomainMethod
from medseg_auto.training.registry import register_trainer
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.ram")


@register_trainer("RandomAmplitudeMixup")
class RandomAmplitudeMixup(DomainMethod):
    """RAM: mix the low-frequency Fourier amplitude of images from other sites of the batch (phase kept)."""

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ram-probability", type=float, default=0.5, help="chance that a sample is mixed")
        parser.add_argument("--ram-ratio-range", type=float, nargs=2, default=[0.0, 0.9], metavar=("LOW", "HIGH"),
                            help="donor share of the low-frequency amplitude, drawn uniformly (0: unchanged)")
        parser.add_argument("--ram-window", type=float, default=0.1,
                            help="low-frequency half-width as a fraction of each axis (RAM's L)")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        low, high = (float(v) for v in self.options["ram_ratio_range"])
        if not (0.0 <= low <= high <= 1.0):
            raise MedsegError(f"--ram-ratio-range needs 0 <= LOW <= HIGH <= 1, got {low} {high}")
        if not 0.0 <= float(self.options["ram_probability"]) <= 1.0 or not 0.0 < float(self.options["ram_window"]) <= 0.5:
            raise MedsegError("--ram-probability must be in [0, 1] and --ram-window in (0, 0.5]")
        self.ratio_range = (low, high)
        self.warned_single_site = False
        self.last_logs: dict[str, float] = {}

    def transform_batch(self, batch: dict[str, Any], epoch: int) -> dict[str, Any]:
        """Replace the mixed samples of ``batch["data"]`` ``(B, C, *patch)``; the rest is untouched."""
        data = batch["data"]
        size = data.shape[0]
        sites = list(batch.get("sites") or [None] * size)
        donors, cross_site = choose_donors(sites)
        if not cross_site and not self.warned_single_site:
            self.warned_single_site = True
            log.warning("RandomAmplitudeMixup: a batch holds a single site (%s); mixing with other samples of the "
                        "batch instead (reported once)", sites[0] if sites else None)
        chosen = torch.rand(size) < float(self.options["ram_probability"])
        low, high = self.ratio_range
        ratios = low + (high - low) * torch.rand(size)
        self.last_logs = {"ram_mixed": float(chosen.float().mean()), "ram_cross_site": float(cross_site)}
        if size < 2 or not bool(chosen.any()):
            return batch
        index = torch.nonzero(chosen).squeeze(1)
        donor_index = torch.tensor(donors)[index]
        mixed = data.clone()
        mixed[index] = mix_low_frequency_amplitude(data[index], data[donor_index], ratios[index],
                                                   float(self.options["ram_window"]))
        return {**batch, "data": mixed}

    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor], target: torch.Tensor,
                   batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """No loss (RAM is an augmentation); only the mixing statistics of this step's batch for the log."""
        return logits[0].new_zeros((), dtype=torch.float32), dict(self.last_logs)
