"""``MixedMinibatchTransfer`` (MMTL): fine-tuning whose batches move from source to target cases.

Paper: Goodman, Greenspan, Goldberger, "Supervised Domain Adaptation Using Gradients Transfer
for Improved Medical Image Analysis", DART 2022 (LNCS 13542), Algorithm 1 (reading notes
``NOTES_dart2022.md`` 2.2). Each batch holds ``n_target`` cases of the target site and
``batch - n_target`` of the other (source) sites, with::

    n_target = floor(epoch / num_epochs * batch)        (epoch counted from 0)

so the gradient is ``alpha L'_source + (1 - alpha) L'_target`` with ``alpha`` falling linearly.
Meant for fine-tuning a source model on a merged multi-site dataset that holds a few labelled
target cases: ``train BreastUS 2d 0 -tr MixedMinibatchTransfer --target-site stu --pretrained
SOURCE.pt``.

Ends of the schedule (our reading; the paper says only ``int(current_epoch / num_epochs x
batch_size)``): epochs count from 0, so the first epoch is source only (``n_target = 0``: one
epoch of the source recipe on the source model) and the last epoch holds
``floor((E - 1) B / E) = B - ceil(B / E)`` target cases, so every batch keeps at least one source
case; the paper credits exactly that mixing for keeping the source Dice (its Table 3). The
authors' released code instead starts at one target case and adds one every four epochs
(``load_by_gradual_id``); for their batch 16 and 60 epochs both end at 15 target cases.

Within each group cases are drawn uniformly with replacement (``sample(source, n)`` in the
paper), then the batch is shuffled: the patch sampler forces foreground on the last third of a
batch (:mod:`~medseg_auto.training.data.case_samplers`), which must not always fall on one site.
Under DDP every rank applies the formula to its own share of the batch.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from medseg_auto.errors import MedsegError
from medseg_auto.training.hooks import DatasetInfo, DomainMethod, TrainingContext
from medseg_auto.training.registry import register_trainer
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.mmtl")


def target_count(epoch: int, num_epochs: int, batch_size: int) -> int:
    """``floor(epoch / num_epochs * batch_size)`` in integers (no float rounding), clipped to the batch."""
    if num_epochs <= 0:
        return 0
    return max(0, min(batch_size, (epoch * batch_size) // num_epochs))


class MixedMinibatchSampler:
    """One epoch's case sampler: ``target_count(epoch, num_epochs, B)`` target ids, the rest source,
    drawn with replacement and returned in random order."""

    def __init__(self, source_ids: Sequence[str], target_ids: Sequence[str], epoch: int, num_epochs: int) -> None:
        if not source_ids or not target_ids:
            raise MedsegError("MixedMinibatchSampler needs at least one source and one target case")
        self.source_ids, self.target_ids = list(source_ids), list(target_ids)
        self.epoch, self.num_epochs = epoch, num_epochs

    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> list[str]:
        n_target = target_count(self.epoch, self.num_epochs, batch_size)
        chosen = [self.source_ids[i] for i in rng.integers(0, len(self.source_ids), size=batch_size - n_target)]
        chosen += [self.target_ids[i] for i in rng.integers(0, len(self.target_ids), size=n_target)]
        return [chosen[i] for i in rng.permutation(len(chosen))]


@register_trainer("MixedMinibatchTransfer")
class MixedMinibatchTransfer(DomainMethod):
    """MMTL (DART 2022): fine-tuning batches mix source and target cases, target share rising linearly."""

    sampler_changes_per_epoch = True
    min_training_sites = 2  # a target site and at least one source site (setup refuses fewer)

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--target-site", default=None, metavar="SITE",
                            help="the site being adapted to; training cases of every other site (or of none) "
                                 "are the source (required; use with --pretrained SOURCE_CHECKPOINT)")

    def setup(self, context: TrainingContext) -> None:
        if context.pretrained_checkpoint is None:
            log.warning("MixedMinibatchTransfer without --pretrained: the schedule starts from random weights, "
                        "not from a source model (fine when resuming with --continue)")

    def make_sampler(self, info: DatasetInfo) -> MixedMinibatchSampler:
        target_site = self.options.get("target_site")
        groups = info.cases_by_site()
        known = sorted(str(site) for site in groups)
        if not target_site:
            raise MedsegError("MixedMinibatchTransfer needs --target-site "
                              f"(sites of the training cases: {', '.join(known)})")
        target = groups.get(target_site, [])
        source = [case for site, cases in groups.items() if site != target_site for case in cases]
        if not target:
            raise MedsegError(f"--target-site {target_site}: no training case of this fold has that site "
                              f"(sites of the training cases: {', '.join(known)})")
        if not source:
            raise MedsegError(f"--target-site {target_site}: every training case is from that site, so there is "
                              "no source to mix in; MMTL needs a merged multi-site dataset")
        return MixedMinibatchSampler(source, target, info.epoch, info.num_epochs)
