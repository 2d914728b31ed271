"""``TrainOnSites``: train on the cases of some sites only, validate on every site of the fold.

Why: the site-adaptation experiments of DART 2022 (MMTL/OCTL, AvaGrad) start from a model
trained on the *source* site alone and report Dice on source and target; in a merged multi-site
dataset this trainer gives that model (``--train-sites busi``) and the plain fine-tuning
baseline on the target site (``-tr FineTuneOnSites --train-sites stu --pretrained SOURCE.pt``, the
papers' "FTA"; the same method under its own name, so that it gets its own results folder),
while the fold's validation (pseudo Dice, final validation with per-site tables) still covers
every site. Only the training batches change: cases of the named sites, uniformly with
replacement, as the default sampler does. Combines with other trainers: ``TrainOnSites+AvaGrad``.
"""

from __future__ import annotations

import argparse

from medseg_auto.errors import MedsegError
from medseg_auto.training.data.case_samplers import UniformCaseSampler
from medseg_auto.training.hooks import DatasetInfo, DomainMethod, TrainingContext
from medseg_auto.training.registry import register_trainer
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.train_on_sites")


@register_trainer("TrainOnSites")
class TrainOnSites(DomainMethod):
    """Base, but training batches come only from the sites named by --train-sites (validation: all)."""

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--train-sites", nargs="+", default=None, metavar="SITE",
                            help="sites whose training cases are used (required), e.g. --train-sites busi")

    def make_sampler(self, info: DatasetInfo) -> UniformCaseSampler:
        wanted = self.options.get("train_sites")
        groups = info.cases_by_site()
        known = ", ".join(sorted(str(site) for site in groups))
        if not wanted:
            raise MedsegError(f"TrainOnSites needs --train-sites (sites of the training cases: {known})")
        missing = [site for site in wanted if site not in groups]
        if missing:
            raise MedsegError(f"--train-sites: no training case of this fold has site(s) {', '.join(missing)} "
                              f"(sites of the training cases: {known})")
        return UniformCaseSampler([case for site in wanted for case in groups[site]])


@register_trainer("FineTuneOnSites")
class FineTuneOnSites(TrainOnSites):
    """TrainOnSites for fine-tuning a --pretrained model (own results folder, apart from the source model's)."""

    def setup(self, context: TrainingContext) -> None:
        if context.pretrained_checkpoint is None:
            log.warning("FineTuneOnSites without --pretrained trains from random weights (fine when resuming "
                        "with --continue); TrainOnSites is the name for training from scratch")
