"""``ExchangeableFeatureDiscrepancy``: Roy et al. (MIDL 2026 submission), ``L_fd + L_fd^exch``
(eq. 1 + eq. 4, Algorithm 1) on every layer, with batches that hold every site.

``L_fd^exch`` pairs each sample ``i`` with a sample ``j`` of *another* site in the same batch and
pushes ``i``'s foreground away from ``j``'s background and ``j``'s foreground away from ``i``'s
background: ``-log(d(F_g,i, B_g,j) + d(F_g,j, B_g,i) + eps)``. Together with ``L_fd`` (which pushes
each sample's foreground from its own background) this draws the foregrounds of different sites
together (Appendix E). ``d``, the masks and the normalisation are those of ``FeatureDiscrepancy``
(:mod:`medseg_auto.training.losses.feature_discrepancy`); so are the layers, the learnt layer split, the
warm-up schedule and the options (``--fd-*``): each layer's term is ``L_fd + L_fd^exch`` under one
weight, as in Algorithm 1 (``loss = mean_i alpha * (L_fd + L_fd^exch)``).

Pairs. The paper's base and novel datasets are our sites (``batch["sites"]``). Batches come from
``SiteBalancedCaseSampler`` (equal shares of every site), so every batch of two or more samples
has a cross-site partner for every sample; each partner is drawn at random among the samples of
other sites. A batch with a single site (a one-site dataset, or sites unknown) falls back to
Algorithm 1's shuffled pairs within the batch (a random derangement), with one warning in the log;
``fd_exch_cross_site`` logs the share of batches that were paired across sites. Pairs where either
sample lacks the class or background contribute nothing.

Logged per epoch, besides ``FeatureDiscrepancy``'s columns: ``fd_exch/TAP`` (``L_fd^exch`` of each
layer) and ``fd_exch_cross_site``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from medseg_auto.training.data.case_samplers import CaseSampler, SiteBalancedCaseSampler
from medseg_auto.training.losses.feature_discrepancy import LayerStatistics, exchange_partners, exchangeable_discrepancy_loss
from medseg_auto.training.hooks import DatasetInfo
from medseg_auto.training.registry import register_trainer
from medseg_auto.training.trainers.feature_discrepancy import FeatureDiscrepancy
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.exchangeable_feature_discrepancy")


@register_trainer("ExchangeableFeatureDiscrepancy")
class ExchangeableFeatureDiscrepancy(FeatureDiscrepancy):
    """Roy et al. L_fd + L_fd^exch: per-layer feature discrepancy plus the cross-site exchange term; site-balanced batches."""

    control_arm = "SiteBalanced"  # the same site-balanced batches without the loss (issue 13)
    min_training_sites = 2  # one site: no cross-site partner, so FeatureDiscrepancy with within-batch pairs

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.partner: torch.Tensor | None = None
        self.cross_site = True
        self._warned_single_site = False

    def make_sampler(self, info: DatasetInfo) -> CaseSampler:
        return SiteBalancedCaseSampler.from_sites(info.case_ids, info.sites)

    def prepare_batch(self, batch: Mapping[str, Any], batch_size: int, device: torch.device) -> None:
        sites: Sequence[Any] = batch.get("sites") or [None] * batch_size
        partner, self.cross_site = exchange_partners(list(sites))
        self.partner = partner.to(device)
        if not self.cross_site and not self._warned_single_site:
            self._warned_single_site = True
            log.warning("ExchangeableFeatureDiscrepancy: a batch holds a single site (%s); L_fd^exch pairs samples "
                        "within the batch instead (shuffled pairs). Logged once; fd_exch_cross_site counts such "
                        "batches.", sites[0] if len(sites) else None)

    def layer_terms(self, stats: LayerStatistics) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        terms = super().layer_terms(stats)
        terms[f"{self.log_prefix}_exch"] = exchangeable_discrepancy_loss(stats, self.partner)
        return terms

    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor],
                   target: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        total, logs = super().extra_loss(features, logits, target, batch)
        logs[f"{self.log_prefix}_exch_cross_site"] = float(self.cross_site)
        return total, logs
