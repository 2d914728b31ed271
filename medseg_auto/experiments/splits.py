"""The case splits of an experiment, drawn once (seeded) and kept in ``splits.json``.

Why a file: every cell of an experiment must test on the same cases, also after a restart or
when more trainers, fractions or repeats are added later; a file read back on every call makes
that true even if sklearn's shuffling changed between versions. Drawing uses sklearn's
``train_test_split`` over sorted ids (stratified by site where every site has two cases).

Data addition (defaults follow the paper's 70/20/10 train/test/validation split): the base
site's cases are split into test (``test_fraction``), validation (``val_fraction`` of the rest)
and training; the novel site's into test (``novel_test_fraction``) and a training pool. Each
repeat orders the pool by its own seeded permutation and fraction ``f`` adds the first
``round(f * len(pool))`` cases of that order, so a repeat's subsets are nested across
fractions. Validation cases come from the base site only and are the same in every cell, so
model selection targets the base site in every cell alike.

Leave one site out: for each site, its cases are the test set; a validation subset
(``val_fraction``, stratified by site) is drawn from the other sites and the rest trains.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from medseg_auto.errors import MedsegError
from medseg_auto.utils.atomic import read_json, write_json_atomic

SPLITS_FILE = "splits.json"
SPLITS_VERSION = 1


class ExperimentSplitError(MedsegError):
    """The data cannot be split as asked, or the stored splits belong to other settings."""


def split_off(case_ids: Sequence[str], fraction: float, seed: int,
              groups: Mapping[str, str | None] | None = None) -> tuple[list[str], list[str]]:
    """``(held, kept)``: ``round(fraction * n)`` cases (at least one, at most ``n - 1``) held out.

    Stratified by ``groups`` (case -> site) when every group has at least two cases; both lists
    sorted. ``fraction`` 0 holds out nothing.
    """
    ordered = sorted(case_ids)
    if fraction <= 0:
        return [], ordered
    if len(ordered) < 2:
        raise ExperimentSplitError(f"cannot hold out {fraction:.0%} of {len(ordered)} case(s): at least 2 are needed")
    count = min(max(round_count(fraction, len(ordered)), 1), len(ordered) - 1)
    labels = [str(groups.get(case)) for case in ordered] if groups else None
    if labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        if len(counts) < 2 or counts.min() < 2 or count < len(counts) or len(ordered) - count < len(counts):
            labels = None
    kept, held = train_test_split(ordered, test_size=count, random_state=seed, shuffle=True, stratify=labels)
    return sorted(held), sorted(kept)


def split_off_linked(case_ids: Sequence[str], fraction: float, seed: int, strata: Mapping[str, str | None],
                     links: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """``(held, kept)`` like :func:`split_off`, but linked cases (``links``: case -> link id, e.g.
    duplicates or one patient's images, see :func:`medseg_auto.dataset.duplicates.case_links`)
    always land on the same side.

    Per stratum (site of the link's first case) the links are shuffled with ``seed`` and taken
    whole until ``round(fraction * n)`` cases of the stratum are held (so the held share can
    overshoot by one link's size). Both lists sorted.
    """
    ordered = sorted(case_ids)
    if fraction <= 0:
        return [], ordered
    members: dict[str, list[str]] = {}
    for case in ordered:
        members.setdefault(links.get(case, case), []).append(case)
    by_stratum: dict[str, list[str]] = {}
    for link, cases in sorted(members.items()):
        by_stratum.setdefault(str(strata.get(cases[0])), []).append(link)
    rng = np.random.default_rng(seed)
    held: list[str] = []
    for stratum in sorted(by_stratum):
        link_ids = by_stratum[stratum]
        target = round_count(fraction, sum(len(members[link]) for link in link_ids))
        taken = 0
        for index in rng.permutation(len(link_ids)):
            if taken >= max(target, 1):
                break
            held += members[link_ids[index]]
            taken += len(members[link_ids[index]])
    if len(held) >= len(ordered):
        raise ExperimentSplitError(f"cannot hold out {fraction:.0%} of {len(ordered)} case(s) in linked groups: "
                                   "every case would be held out")
    held_set = set(held)
    return sorted(held_set), [case for case in ordered if case not in held_set]


def round_count(fraction: float, total: int) -> int:
    """``fraction * total`` rounded half up (so 0.5 of 3 is 2, as a reader would expect)."""
    return int(math.floor(fraction * total + 0.5))


@dataclass
class DataAdditionSplits:
    """Fixed splits of one data-addition experiment (see the module docstring)."""

    base_site: str
    novel_site: str
    base_train: list[str]
    base_val: list[str]
    base_test: list[str]
    novel_pool: list[str]
    novel_test: list[str]
    seed: int

    def novel_order(self, repeat: int) -> list[str]:
        """Repeat ``repeat``'s order of the novel pool (seeded by ``(seed, repeat)``)."""
        rng = np.random.default_rng([self.seed, repeat])
        return [self.novel_pool[i] for i in rng.permutation(len(self.novel_pool))]

    def novel_subset(self, fraction: float, repeat: int) -> list[str]:
        """The novel cases added at ``fraction`` in ``repeat``: a prefix of :meth:`novel_order`."""
        if not 0.0 <= fraction <= 1.0:
            raise ExperimentSplitError(f"fraction {fraction} is outside [0, 1]")
        return self.novel_order(repeat)[: round_count(fraction, len(self.novel_pool))]

    def training_cases(self, fraction: float, repeat: int) -> list[str]:
        return sorted(self.base_train + self.novel_subset(fraction, repeat))


def make_data_addition_splits(
    sites: Mapping[str, str | None], base_site: str, novel_site: str, test_fraction: float,
    val_fraction: float, novel_test_fraction: float, seed: int,
) -> DataAdditionSplits:
    """Draw the splits from ``sites`` (case -> site); cases of other sites are not used."""
    base = sorted(case for case, site in sites.items() if site == base_site)
    novel = sorted(case for case, site in sites.items() if site == novel_site)
    known = sorted({str(site) for site in sites.values()})
    for name, cases in ((base_site, base), (novel_site, novel)):
        if not cases:
            raise ExperimentSplitError(f"site '{name}' has no preprocessed cases (sites: {', '.join(known)})")
    if base_site == novel_site:
        raise ExperimentSplitError(f"base and novel site are both '{base_site}'")
    if len(base) < 3:
        raise ExperimentSplitError(f"site '{base_site}' has {len(base)} case(s); test, validation and training need 3")
    base_test, rest = split_off(base, test_fraction, seed)
    if not base_test:
        raise ExperimentSplitError(f"--test-fraction {test_fraction} leaves no base test case")
    base_val, base_train = split_off(rest, val_fraction, seed + 1)
    if not base_val:
        raise ExperimentSplitError(f"--val-fraction {val_fraction} leaves no validation case")
    novel_test, novel_pool = split_off(novel, novel_test_fraction, seed + 2)
    return DataAdditionSplits(base_site, novel_site, base_train, base_val, base_test, novel_pool, novel_test, seed)


@dataclass
class HeldOutSplit:
    """One leave-one-site-out fold: train and validate on other sites, test on ``site``."""

    site: str
    train: list[str]
    val: list[str]
    test: list[str]


def make_leave_one_site_out_splits(sites: Mapping[str, str | None], val_fraction: float,
                                   seed: int) -> list[HeldOutSplit]:
    """One :class:`HeldOutSplit` per site (sorted); cases without a site are never tested on."""
    named = {case: str(site) for case, site in sites.items() if site is not None}
    all_sites = sorted(set(named.values()))
    if len(all_sites) < 2:
        raise ExperimentSplitError(f"leave-one-site-out needs at least two sites, found {all_sites or 'none'}; "
                                   "record sites in dataset.json (medseg-auto merge or import-folder --site)")
    splits = []
    for index, site in enumerate(all_sites):
        test = sorted(case for case, s in named.items() if s == site)
        others = {case: s for case, s in sites.items() if case not in set(test)}
        if len(others) < 2:
            raise ExperimentSplitError(f"holding out '{site}' leaves {len(others)} case(s) to train and validate on")
        val, train = split_off(sorted(others), val_fraction, seed + index, groups=others)
        if not val:
            raise ExperimentSplitError(f"--val-fraction {val_fraction} leaves no validation case")
        splits.append(HeldOutSplit(site, train, val, test))
    return splits


def load_or_write_splits(folder: Path, settings: Mapping[str, Any], make: Any,
                         known_cases: Sequence[str]) -> dict[str, Any]:
    """``folder/splits.json``: read it (checking it was drawn with ``settings`` and names only
    ``known_cases``), or call ``make()`` (returning a JSON-ready dict) and write it once."""
    path = folder / SPLITS_FILE
    if path.is_file():
        try:
            stored = read_json(path)
        except ValueError as error:
            raise ExperimentSplitError(f"{path}: not valid JSON ({error}); delete it to draw new splits") from error
        differing = {key: (stored.get("settings", {}).get(key), value) for key, value in settings.items()
                     if stored.get("settings", {}).get(key) != value}
        if differing:
            shown = ", ".join(f"{key}: stored {old!r}, now {new!r}" for key, (old, new) in differing.items())
            raise ExperimentSplitError(f"{path}: drawn with other settings ({shown}); use another --out, "
                                       "or delete the experiment folder to start over")
        named = set(_case_ids(stored["splits"]))
        unknown = sorted(named - set(known_cases))
        if unknown:
            raise ExperimentSplitError(f"{path}: names {len(unknown)} case(s) that are not preprocessed "
                                       f"({', '.join(unknown[:5])}); delete it to draw new splits")
        return stored["splits"]
    splits = make()
    write_json_atomic(path, {"version": SPLITS_VERSION, "settings": dict(settings), "splits": splits})
    return splits


def data_addition_to_json(splits: DataAdditionSplits) -> dict[str, Any]:
    return asdict(splits)


def data_addition_from_json(payload: Mapping[str, Any]) -> DataAdditionSplits:
    return DataAdditionSplits(**payload)


def held_out_to_json(splits: Sequence[HeldOutSplit]) -> dict[str, Any]:
    return {split.site: {"train": split.train, "val": split.val, "test": split.test} for split in splits}


def held_out_from_json(payload: Mapping[str, Any]) -> list[HeldOutSplit]:
    return [HeldOutSplit(site, **lists) for site, lists in payload.items()]


def _case_ids(value: Any) -> list[str]:
    """Every string inside a list anywhere in ``value`` (the case lists; site names and seeds
    are plain values)."""
    if isinstance(value, Mapping):
        return [case for item in value.values() for case in _case_ids(item)]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []
