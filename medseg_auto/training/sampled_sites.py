"""The sites a fold trained on, so that its OOD reference holds validation cases of those sites only.

Why: the reference is "what unseen in-distribution data looks like". A fold's validation cases
are held out from training, but with ``TrainOnSites --train-sites busi`` (or any trainer whose
batch sampler draws from some sites only) the validation cases of the *other* sites are not in
distribution at all: a held-out STU case scored against a reference that contains STU cases
looks normal by construction. So the reference keeps only the validation cases whose site is one
the training batches came from.

"The sites the model trained on" are read from the trainer's own batch sampler (the hook that
``TrainOnSites``, ``IntraSiteVariabilityAlignment --source-sites`` and others use to restrict
training cases): the sites of its ``case_ids``; a sampler without ``case_ids`` (or none) trains
on every training case. The same function serves the final validation (the live trainer's
methods) and ``predict`` (methods rebuilt from the checkpoint's options).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from medseg_auto.errors import MedsegError
from medseg_auto.training.checkpoint import find_resume_checkpoint, load_checkpoint
from medseg_auto.training.hooks import DatasetInfo, DomainMethod
from medseg_auto.training.registry import get_trainer
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.sampled_sites")


def sampled_sites(methods: Sequence[DomainMethod], train_ids: Sequence[str],
                  sites: Mapping[str, str | None]) -> list[str | None]:
    """The sites of the cases the training batches are drawn from (sorted; ``None``: no site)."""
    info = DatasetInfo(list(train_ids), {case: sites.get(case) for case in train_ids})
    sampled = list(train_ids)
    for method in methods:
        try:
            sampler = method.make_sampler(info)
        except MedsegError as error:  # e.g. options a rebuilt method lacks: count every training site
            log.warning("cannot rebuild the %s sampler (%s); counting every training site", type(method).__name__, error)
            break
        if sampler is not None:  # the first sampler wins, as in the trainer
            sampled = list(getattr(sampler, "case_ids", None) or train_ids)
            break
    return sites_of(sampled, sites)


def sites_of(case_ids: Sequence[str], sites: Mapping[str, str | None]) -> list[str | None]:
    """The sites of ``case_ids``, sorted (``None``, no site, last)."""
    return sorted({sites.get(case) for case in case_ids}, key=lambda site: (site is None, str(site)))


def fold_training_sites(fold_folder: Path, train_ids: Sequence[str],
                        sites: Mapping[str, str | None]) -> list[str | None]:
    """:func:`sampled_sites` of a trained fold, its trainer rebuilt from the checkpoint's options;
    every training case's site when the fold has no readable checkpoint or the trainer is unknown."""
    everything = sorted({sites.get(case) for case in train_ids}, key=lambda site: (site is None, str(site)))
    checkpoint = find_resume_checkpoint(fold_folder)
    if checkpoint is None:
        return everything
    try:
        payload = load_checkpoint(checkpoint)
        init_args = payload.get("init_args", {}) or {}
        options: dict = {}
        for method_options in (init_args.get("method_options") or {}).values():
            options.update(method_options)
        methods = get_trainer(str(payload["trainer_name"])).create_methods(options)
        return sampled_sites(methods, train_ids, sites)
    except (MedsegError, KeyError, TypeError, ValueError) as error:
        log.warning("%s: cannot tell which sites it trained on (%s); the OOD reference uses every site", fold_folder, error)
        return everything


def in_sites(case_ids: Sequence[str], sites: Mapping[str, str | None], wanted: Sequence[str | None]) -> list[str]:
    """The cases of ``case_ids`` whose site is in ``wanted`` (order kept)."""
    allowed = set(wanted)
    return [case for case in case_ids if sites.get(case) in allowed]
