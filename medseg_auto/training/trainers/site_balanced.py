"""``SiteBalanced``: the control for the site-balanced methods (nnU-Net's recipe, site-balanced batches).

Methods such as ``ExchangeableFeatureDiscrepancy`` change two things at once: a loss term and
batches that hold every site in equal shares. This trainer changes only the batches, so a
comparison can tell what the loss adds beyond the sampling. Everything else is ``Base``.
"""

from __future__ import annotations

from medseg_auto.training.data.case_samplers import CaseSampler, SiteBalancedCaseSampler
from medseg_auto.training.hooks import DatasetInfo, DomainMethod
from medseg_auto.training.registry import register_trainer


@register_trainer("SiteBalanced")
class SiteBalanced(DomainMethod):
    """nnU-Net v2 default with site-balanced batches (equal shares of every site): the sampling control."""

    min_training_sites = 2  # one site: the batches are uniform, i.e. Base

    def make_sampler(self, info: DatasetInfo) -> CaseSampler:
        return SiteBalancedCaseSampler.from_sites(info.case_ids, info.sites)
