"""Online per-class feature mean and covariance (SGCG Eq. 2-3, the ISDA estimator).

SGCG (``../shared/papers/sgcg_contrastive_generalization.txt`` Sec. 2.2) keeps, for each class
``k``, the mean ``mu_k`` and covariance ``Sigma_k`` of all pixel features seen so far, starting
from zeros, and merges each new batch with

``mu_t = (n mu_{t-1} + m mu')/(n+m)``,
``Sigma_t = (n Sigma_{t-1} + m Sigma')/(n+m) + n m (mu_{t-1} - mu')(mu_{t-1} - mu')^T / (n+m)^2``,

where ``n`` is the number of class-``k`` pixels seen before, ``m`` (``mu'``, ``Sigma'``) the count
(mean, covariance) in the current batch; ``n`` grows by ``m``. The paper leaves ``n`` and ``m``
undefined and speaks of "the t-th image"; we update once per batch with all its sampled pixels,
and ``Sigma'`` is the population covariance (divided by ``m``, as ISDA does), so that the merged
statistics equal those of all pixels pooled: exactly what the tests check. The update runs
without gradient; under DDP the batch moments are summed over ranks first, so every rank keeps
the same statistics. Sums are kept in float64: counts reach 1e9 pixels over a run.

``covariance="diagonal"`` (default, as SePiCo's reference code) stores ``(K, A)`` variances;
``"full"`` stores ``(K, A, A)`` matrices (as the paper writes).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

COVARIANCE_KINDS = ("diagonal", "full")


class ClassFeatureStatistics:
    """Running ``mean`` ``(K, A)``, ``covariance`` ``(K, A)`` or ``(K, A, A)`` and ``count`` ``(K,)``."""

    def __init__(self, num_classes: int, dim: int, covariance: str = "diagonal",
                 device: torch.device | str = "cpu") -> None:
        if covariance not in COVARIANCE_KINDS:
            raise ValueError(f"unknown covariance kind {covariance!r}; choose from {', '.join(COVARIANCE_KINDS)}")
        self.num_classes, self.dim, self.kind = num_classes, dim, covariance
        shape = (num_classes, dim) if covariance == "diagonal" else (num_classes, dim, dim)
        self.mean = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)
        self.covariance = torch.zeros(shape, dtype=torch.float64, device=device)
        self.count = torch.zeros(num_classes, dtype=torch.float64, device=device)

    @property
    def full(self) -> bool:
        return self.kind == "full"

    @torch.no_grad()
    def batch_moments(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-class ``count (K,)``, ``sum (K, A)`` and ``sum of squares`` (``(K, A)``, or outer
        products ``(K, A, A)``) of ``features`` ``(N, A)`` with ``labels`` ``(N,)`` in ``0..K-1``."""
        x = features.detach().to(torch.float64)
        onehot = F.one_hot(labels.long(), self.num_classes).to(torch.float64)  # (N, K)
        count = onehot.sum(dim=0)
        sums = onehot.T @ x
        if self.full:
            squares = torch.einsum("nk,na,nb->kab", onehot, x, x)
        else:
            squares = onehot.T @ x.pow(2)
        return count, sums, squares

    @torch.no_grad()
    def update_from_moments(self, count: torch.Tensor, sums: torch.Tensor, squares: torch.Tensor) -> None:
        """Merge one batch's moments (from :meth:`batch_moments`, possibly summed over ranks)."""
        seen = count > 0
        m = count.clamp_min(1.0)
        batch_mean = sums / m[:, None]
        if self.full:
            batch_cov = squares / m[:, None, None] - batch_mean[:, :, None] * batch_mean[:, None, :]
        else:
            batch_cov = (squares / m[:, None] - batch_mean.pow(2)).clamp_min(0.0)
        n = self.count
        total = (n + count).clamp_min(1.0)
        weight_new = (count / total)[:, None]  # m / (n + m)
        weight_old = (n / total)[:, None]  # n / (n + m)
        delta = self.mean - batch_mean
        if self.full:
            spread = (n * count / total.pow(2))[:, None, None] * delta[:, :, None] * delta[:, None, :]
            merged_cov = weight_old[:, :, None] * self.covariance + weight_new[:, :, None] * batch_cov + spread
            self.covariance = torch.where(seen[:, None, None], merged_cov, self.covariance)
        else:
            spread = (n * count / total.pow(2))[:, None] * delta.pow(2)
            merged_cov = weight_old * self.covariance + weight_new * batch_cov + spread
            self.covariance = torch.where(seen[:, None], merged_cov, self.covariance)
        self.mean = torch.where(seen[:, None], weight_old * self.mean + weight_new * batch_mean, self.mean)
        self.count = n + count

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Eq. 2-3 with one batch; ``reduce`` (e.g. a sum over DDP ranks) is applied to each moment."""
        moments = self.batch_moments(features, labels)
        if reduce is not None:
            moments = tuple(reduce(moment) for moment in moments)
        self.update_from_moments(*moments)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean.cpu(), "covariance": self.covariance.cpu(), "count": self.count.cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind or tuple(state["mean"].shape) != tuple(self.mean.shape):
            raise ValueError(
                f"class statistics in the checkpoint ({state.get('kind')}, mean {tuple(state['mean'].shape)}) do not fit "
                f"this run ({self.kind}, mean {tuple(self.mean.shape)})"
            )
        device = self.mean.device
        self.mean = state["mean"].to(device, torch.float64)
        self.covariance = state["covariance"].to(device, torch.float64)
        self.count = state["count"].to(device, torch.float64)
