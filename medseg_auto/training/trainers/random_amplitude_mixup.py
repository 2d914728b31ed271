"""``RandomAmplitudeMixup`` (RAM): low-frequency Fourier amplitude of another site, phase kept.

Zhou, Qi, Shi, "Generalizable medical image segmentation via random amplitude mixup and
domain-specific image restoration" (ECCV 2022), the baseline SGCG builds on; the transform is
:mod:`~medseg_auto.training.data.amplitude_mixup`. Here it is an augmentation on each augmented
training batch (``transform_batch``, main process): with probability ``--ram-probability`` a
sample is replaced by its mix with a donor image from another *source site*, with donor share
``ratio ~ U(--ram-ratio-range)`` in the window ``--ram-window``.

Donors (issue 13). RAM draws the donor amplitude from another source domain's training images.
Here a mixed sample's donor is an unaugmented random crop of a random training case of a random
*other* site, read from the preprocessed cache in the main process (one small memory-mapped read
per mixed sample) and resized to the patch where the image is smaller (``donor_image``: a padded
donor brought the amplitude of the padding, not the site's style). Drawing donors from the batch instead
(the former behaviour) mixed within the majority site almost always in pooled training with
unbalanced sites (BUSI+STU: 780 vs 42 cases, so most batches hold BUSI only).

One source site (e.g. a 2-site leave-one-site-out). RAM has no other source domain to draw from,
so nothing is mixed: the run is Base, and the log says so at the start (``ram_source_sites``
= 1 in ``progress.csv``). ``--ram-within-site`` mixes with other training cases of the same
site instead, which RAM does not do (its style variety then comes from within one scanner).

Defaults, from RAM-DSIR's code (NOTES_disseg_sgcg.md B.7): window 0.1; donor share 0 .. 0.9
(their own-share ``r`` from {0.1, ..., 1.0}; we draw the share uniformly from the interval).
RAM-DSIR trains every step on both the original and the mixed image (two losses); replacing
each sample with probability 0.5 gives the same expected loss (up to a factor 2) for one
forward pass, hence ``--ram-probability 0.5``. Cases without a recorded site form a site of
their own. DSIR (the restoration decoder) is not part of this trainer. Used without
:meth:`setup` (no cache known), donors fall back to other samples of the batch.

Logged per epoch: ``ram_mixed`` (fraction of samples mixed), ``ram_cross_site`` (fraction of
mixed samples whose donor came from another site) and ``ram_source_sites``.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from medseg_auto.errors import MedsegError
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.data.amplitude_mixup import choose_donors, donor_image, mix_low_frequency_amplitude
from medseg_auto.training.hooks import DomainMethod, TrainingContext
from medseg_auto.training.registry import register_trainer
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.ram")


@register_trainer("RandomAmplitudeMixup")
class RandomAmplitudeMixup(DomainMethod):
    """RAM: mix the low-frequency Fourier amplitude of images from other sites of the batch (phase kept)."""

    min_training_sites = 2  # one source site: nothing is mixed, i.e. Base (unless --ram-within-site)

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ram-probability", type=float, default=0.5, help="chance that a sample is mixed")
        parser.add_argument("--ram-ratio-range", type=float, nargs=2, default=[0.0, 0.9], metavar=("LOW", "HIGH"),
                            help="donor share of the low-frequency amplitude, drawn uniformly (0: unchanged)")
        parser.add_argument("--ram-window", type=float, default=0.1,
                            help="low-frequency half-width as a fraction of each axis (RAM's L)")
        parser.add_argument("--ram-within-site", action="store_true",
                            help="with one source site, mix with other cases of that site (RAM itself mixes "
                                 "only across source sites, so by default such a run mixes nothing)")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        low, high = (float(v) for v in self.options["ram_ratio_range"])
        if not (0.0 <= low <= high <= 1.0):
            raise MedsegError(f"--ram-ratio-range needs 0 <= LOW <= HIGH <= 1, got {low} {high}")
        if not 0.0 <= float(self.options["ram_probability"]) <= 1.0 or not 0.0 < float(self.options["ram_window"]) <= 0.5:
            raise MedsegError("--ram-probability must be in [0, 1] and --ram-window in (0, 0.5]")
        self.ratio_range = (low, high)
        if self.options["ram_within_site"]:
            self.min_training_sites = 1  # mixing within the one site is what was asked for
        self.warned_single_site = False
        self.last_logs: dict[str, float] = {}
        self.last_donors: list[str] = []
        self.cache: PreprocessedCache | None = None
        self.cases_by_site: dict[str | None, list[str]] = {}

    def setup(self, context: TrainingContext) -> None:
        if context.cache is None or not context.train_case_ids:
            return
        for case in context.train_case_ids:
            self.cases_by_site.setdefault(context.sites.get(case), []).append(case)
        self.cache = context.cache
        self.rng = np.random.default_rng([int(torch.initial_seed() % 2**31), context.rank, 7])
        if len(self.cases_by_site) == 1:
            site = next(iter(self.cases_by_site))
            if self.options["ram_within_site"]:
                log.warning("RandomAmplitudeMixup: one source site (%s); --ram-within-site mixes amplitudes between "
                            "its own cases (RAM mixes only across source sites)", site)
            else:
                log.warning("RandomAmplitudeMixup: the training cases come from one source site (%s); RAM mixes "
                            "amplitudes across source sites, so nothing is mixed and this run is Base "
                            "(--ram-within-site mixes between the site's own cases)", site)

    def _donor_cases(self, case_ids: Sequence[str], sites: Sequence[str | None]) -> tuple[list[str | None], int]:
        """For each sample a donor case of another site (or, within one site on request, another
        case), None where there is none; and how many donors came from another site."""
        donors: list[str | None] = []
        cross = 0
        for case, site in zip(case_ids, sites):
            choices = [s for s in self.cases_by_site if s != site]
            if choices:
                pool = self.cases_by_site[choices[int(self.rng.integers(len(choices)))]]
                cross += 1
            elif self.options["ram_within_site"]:
                pool = [c for c in self.cases_by_site.get(site, []) if c != case]
            else:
                pool = []
            donors.append(pool[int(self.rng.integers(len(pool)))] if pool else None)
        return donors, cross

    def transform_batch(self, batch: dict[str, Any], epoch: int) -> dict[str, Any]:
        """Replace the mixed samples of ``batch["data"]`` ``(B, C, *patch)``; the rest is untouched."""
        if self.cache is not None:
            return self._mix_with_cache_donors(batch)
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

    def _mix_with_cache_donors(self, batch: dict[str, Any]) -> dict[str, Any]:
        data = batch["data"]
        size = data.shape[0]
        sites = list(batch.get("sites") or [None] * size)
        chosen = torch.rand(size) < float(self.options["ram_probability"])
        low, high = self.ratio_range
        ratios = low + (high - low) * torch.rand(size)
        index = torch.nonzero(chosen).squeeze(1).tolist()
        donors, cross = self._donor_cases([batch["case_ids"][i] for i in index], [sites[i] for i in index])
        pairs = [(i, donor) for i, donor in zip(index, donors) if donor is not None]
        self.last_donors = [donor for _, donor in pairs]
        self.last_logs = {"ram_mixed": len(pairs) / max(1, size), "ram_cross_site": cross / max(1, len(pairs)),
                          "ram_source_sites": float(len(self.cases_by_site))}
        if not pairs:
            return batch
        rows = torch.tensor([i for i, _ in pairs])
        patch = data.shape[2:]
        donor_images = torch.stack([donor_image(np.load(self.cache.data_path(donor), mmap_mode="r"), patch, self.rng)
                                    for _, donor in pairs]).to(data.dtype)
        mixed = data.clone()
        mixed[rows] = mix_low_frequency_amplitude(data[rows], donor_images, ratios[rows], float(self.options["ram_window"]))
        return {**batch, "data": mixed}

    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor], target: torch.Tensor,
                   batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """No loss (RAM is an augmentation); only the mixing statistics of this step's batch for the log."""
        return logits[0].new_zeros((), dtype=torch.float32), dict(self.last_logs)
