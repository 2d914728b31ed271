"""Trainers whose mechanism needs several training sites, and what to do with fewer.

Why: site-balanced batches, a site classifier to unlearn, cross-site pairs or amplitude donors
from another site mean nothing on one site; such a trainer then reduces to another one (``Base``,
``FeatureDiscrepancy``, ...) under its own name, and a benchmark would count it twice. A method
declares what it needs in ``min_training_sites`` (:class:`~.hooks.DomainMethod`); ``train``
warns once at the start (:func:`warn_if_too_few_sites`) and ``experiment methods --trainers all``
leaves such trainers out (:func:`trainers_needing_more_sites`).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.sites")


def count_sites(case_ids: Iterable[str], sites: Mapping[str, str | None]) -> int:
    """Distinct recorded sites of ``case_ids`` (cases without a site are not counted)."""
    return len({sites.get(case) for case in case_ids} - {None})


def warn_if_too_few_sites(trainer_name: str, methods: Sequence, case_ids: Sequence[str],
                          sites: Mapping[str, str | None]) -> bool:
    """Log one warning when ``methods`` (the trainer's method instances) need more training
    sites than ``case_ids`` hold; return whether it warned."""
    needed = max((int(getattr(method, "min_training_sites", 1)) for method in methods), default=1)
    found = count_sites(case_ids, sites)
    if needed <= 1 or found >= needed:  # one site or none recorded: enough for every other method
        return False
    names = [type(m).__name__ for m in methods if int(getattr(m, "min_training_sites", 1)) > found]
    log.warning("%s needs training cases from at least %d sites (%s), this run has %d; its mechanism has nothing "
                "to work across, so it trains like the trainer it reduces to (see its docstring). Import each site "
                "with 'import-folder --site NAME' to use it as meant", trainer_name, needed, ", ".join(names), found)
    return True


def trainers_needing_more_sites(trainer_names: Sequence[str], n_sites: int) -> dict[str, int]:
    """``{trainer: sites it needs}`` for the registered trainers of ``trainer_names`` that need
    more than ``n_sites`` training sites."""
    from medseg_auto.training.registry import get_trainer

    needs = {name: get_trainer(name).min_training_sites for name in trainer_names}
    return {name: needed for name, needed in needs.items() if needed > n_sites}
