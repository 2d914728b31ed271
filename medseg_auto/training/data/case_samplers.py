"""Which cases one batch draws from: the hook domain trainers use to balance sites.

A case sampler is any object with ``sample_batch(rng, batch_size) -> list[case_id]``. The patch
sampler asks it once per batch and then cuts one patch per returned id, in order, so the order
matters: nnU-Net forces foreground on the *last* third of a batch, and a sampler that always put
one site last would give that site all the forced-foreground patches. Samplers here therefore
return their ids in random order.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import numpy as np

from medseg_auto.errors import DatasetError


class CaseSampler(Protocol):
    """Chooses the case ids of one batch (with replacement; duplicates allowed)."""

    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> list[str]: ...


class UniformCaseSampler:
    """nnU-Net's default: every case equally likely, drawn with replacement."""

    def __init__(self, case_ids: Sequence[str]) -> None:
        if not case_ids:
            raise DatasetError("cannot sample batches from an empty list of training cases")
        self.case_ids = list(case_ids)

    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> list[str]:
        picks = rng.integers(0, len(self.case_ids), size=batch_size)
        return [self.case_ids[i] for i in picks]


class SiteBalancedCaseSampler:
    """Each batch takes ``batch_size // n_sites`` cases from every site, and one more from
    ``batch_size % n_sites`` randomly chosen sites, so small sites are seen as often as large ones.

    Within a site cases are drawn uniformly with replacement; the batch is then shuffled.
    ``cases_by_site`` maps a site name (``None`` for cases without one) to its case ids.
    """

    def __init__(self, cases_by_site: Mapping[str | None, Sequence[str]]) -> None:
        self.cases_by_site = {site: list(cases) for site, cases in cases_by_site.items() if len(cases) > 0}
        if not self.cases_by_site:
            raise DatasetError("SiteBalancedCaseSampler needs at least one site with cases")
        self._sites = list(self.cases_by_site)

    @classmethod
    def from_sites(cls, case_ids: Sequence[str], sites: Mapping[str, str | None]) -> "SiteBalancedCaseSampler":
        """Group ``case_ids`` by ``sites[case]`` (cases without a site form the ``None`` group)."""
        groups: dict[str | None, list[str]] = {}
        for case in case_ids:
            groups.setdefault(sites.get(case), []).append(case)
        return cls(groups)

    @property
    def case_ids(self) -> list[str]:
        return [case for cases in self.cases_by_site.values() for case in cases]

    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> list[str]:
        n_sites = len(self._sites)
        counts = np.full(n_sites, batch_size // n_sites)
        counts[rng.choice(n_sites, size=batch_size % n_sites, replace=False)] += 1
        chosen: list[str] = []
        for site, count in zip(self._sites, counts):
            cases = self.cases_by_site[site]
            chosen.extend(cases[i] for i in rng.integers(0, len(cases), size=int(count)))
        return [chosen[i] for i in rng.permutation(len(chosen))]
