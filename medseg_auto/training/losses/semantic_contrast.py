"""SGCG's closed-form pixel contrast against class Gaussians (Eq. 9-11), and its label plumbing.

For a pixel feature ``q`` (L2-normalised, ``(A,)``) of class ``y``, with class statistics
``mu_c``, ``Sigma_c`` (:mod:`.class_statistics`) and temperature ``tau``:

``z_c = q . mu_c / tau + q^T Sigma_c q / (2 tau^2)``,
``L(q) = -log softmax(z)_y + q^T Sigma_y q / (2 tau^2)`` (Eq. 11, equal to Eq. 10).

It is the Jensen upper bound (Eq. 5-8) of the loss against infinitely many positives drawn from
``N(mu_y, Sigma_y)`` and negatives from the other classes' Gaussians (Eq. 4), made closed-form
by the Gaussian moment-generating function ``E exp(a^T x) = exp(a^T mu + a^T Sigma a / 2)``
(Eq. 9). The tests compare it with a Monte-Carlo estimate of Eq. 4.

Only the source term of Eq. 12 is used: in domain generalisation there are no target pixels
(NOTES_disseg_sgcg.md B.6 item 7). Statistics are constants here (no gradient), as in SePiCo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -1
MIN_LABEL_RATIO = 0.75  # SePiCo: a low-resolution pixel takes a class covering >= 75% of it


def covariance_quadratic(q: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """``q_n^T Sigma_k q_n`` for every pixel and class: ``(N, A)`` with ``(K, A)`` variances
    (diagonal) or ``(K, A, A)`` matrices -> ``(N, K)``."""
    if covariance.dim() == 2:
        return q.pow(2) @ covariance.T
    return torch.einsum("na,kab,nb->nk", q, covariance, q)


def semantic_contrastive_loss(q: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor,
                              tau: float, known_classes: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of Eq. 11 over the pixels. ``q`` ``(N, A)``, ``labels`` ``(N,)`` in ``0..K-1``,
    ``mean`` ``(K, A)``, ``covariance`` ``(K, A)`` or ``(K, A, A)``.

    ``known_classes`` ``(K,)`` bool: classes without statistics yet (never seen) are left out of
    the softmax, and pixels of such a class are skipped (their positive distribution is
    unknown). No pixel left: 0, still connected to ``q``.
    """
    mean = mean.to(q.dtype)
    covariance = covariance.to(q.dtype)
    quadratic = covariance_quadratic(q, covariance) / (2 * tau**2)
    logits = q @ mean.T / tau + quadratic
    if known_classes is not None:
        logits = logits.masked_fill(~known_classes[None, :], float("-inf"))
        keep = known_classes[labels]
        logits, quadratic, labels = logits[keep], quadratic[keep], labels[keep]
    if labels.numel() == 0:
        return q.sum() * 0.0
    cross_entropy = F.cross_entropy(logits, labels, reduction="none")
    positive_spread = quadratic.gather(1, labels[:, None]).squeeze(1)
    return (cross_entropy + positive_spread).mean()


def downsample_labels(target: torch.Tensor, size: tuple[int, ...] | torch.Size, num_classes: int,
                      min_ratio: float = MIN_LABEL_RATIO) -> torch.Tensor:
    """Labels at the feature resolution: ``(B, 1, *patch)`` int -> ``(B, *size)`` int64.

    Same size: unchanged. Otherwise SePiCo's rule (the paper does not say): average-pool the
    one-hot labels over each low-resolution cell and keep the majority class where it covers at
    least ``min_ratio`` of the cell, else :data:`IGNORE` (mixed boundary cells carry no clean
    class). Negative labels (ignore regions) count as a class of their own that is never kept.
    """
    labels = target[:, 0].long()
    if tuple(labels.shape[1:]) == tuple(size):
        return labels.clamp_min(IGNORE)
    valid = labels >= 0
    onehot = F.one_hot(labels.clamp_min(0), num_classes).movedim(-1, 1).float() * valid[:, None]
    pool = F.adaptive_avg_pool2d if len(size) == 2 else F.adaptive_avg_pool3d
    shares = pool(onehot, tuple(size))
    ratio, majority = shares.max(dim=1)
    return torch.where(ratio >= min_ratio, majority, torch.full_like(majority, IGNORE))


def sample_pixels(features: torch.Tensor, labels: torch.Tensor, max_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of at most ``max_pixels`` labelled pixels, drawn uniformly.

    ``features`` ``(B, C, *s)``, ``labels`` ``(B, *s)`` (``IGNORE`` skipped) -> ``(N, C)``, ``(N,)``.
    Gathers only the drawn pixels (no copy of the whole map), so a 3D full-resolution tap costs
    ``N x C``, not ``B x C x prod(s)``.
    """
    batch, channels = features.shape[:2]
    flat_labels = labels.reshape(-1)
    index = torch.nonzero(flat_labels >= 0).squeeze(1)
    if index.numel() > max_pixels > 0:
        index = index[torch.randperm(index.numel(), device=index.device)[:max_pixels]]
    per_sample = flat_labels.numel() // batch
    flat_features = features.reshape(batch, channels, per_sample)
    gathered = flat_features[index // per_sample, :, index % per_sample]
    return gathered, flat_labels[index]
