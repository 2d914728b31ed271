"""Dispersive loss: a contrastive loss without positives on per-sample representations.

Med-DisSeg (Chen et al., ``../shared/papers/med_disseg_dispersive.txt``, Sec. 3.2 and App. A.2,
after Wang & He 2025 "Diffuse and Disperse"). ``h`` is ``(B, d)``, one vector per sample of the
batch; every ordered pair ``i != j`` is a negative pair, self-pairs are excluded:

========================  =====================================================================
variant                   loss
========================  =====================================================================
``infonce_l2`` (Eq. 3)    ``log( mean_{i!=j} exp(-D_ij / tau) + eps )``, ``D_ij = ||h_i-h_j||^2 / d``
``infonce_cos`` (Eq. 4)   the same with ``D_ij = 1 - cos(h_i, h_j)``
``hinge`` (Eq. 5)         ``mean_{i!=j} max(0, margin - sqrt(D_ij))^2`` (``D_ij`` as for L2)
``covariance`` (Eq. 6)    ``sum_{p!=q} C_pq^2 / (d (d-1))``, ``C = H~^T H~ / (B-1)``, H~ centred
========================  =====================================================================

Our choices where the paper is silent (NOTES_disseg_sgcg.md A.6 item 5-7):

- Distance scaling: the squared L2 distance is divided by the vector length ``d`` (a mean
  squared difference per element, as the Wang & He reference code does). Raw distances of
  flattened feature maps are in the thousands, so ``exp(-D/tau)`` would underflow to 0 and the
  loss would sit at ``log eps`` with no gradient; per element, features after instance norm
  differ by O(1) and ``tau = 0.8`` is in the range where the exponential is informative.
- The log-mean-exp is computed as ``logaddexp(logsumexp(-D/tau) - log P, log eps)`` (``P`` the
  number of pairs): exact, and finite with a gradient even where every ``exp`` underflows.
- ``eps = 1e-6`` (:data:`EPS`): the loss is bounded below by ``log eps`` = -13.8; the push stops
  once the mean kernel falls to about ``eps``, i.e. at ``D / tau`` about 14.
- Hinge margin (not given): 1.0 on the root-mean-square element difference ``sqrt(D_ij)``.
- Covariance: Eq. 6's sum divided by ``d (d-1)`` (the mean squared off-diagonal covariance), so
  its size does not grow with the feature length; computed through the ``B x B`` Gram matrix,
  never the ``d x d`` covariance.

Behaviour with the batch size ``B`` (the planner's 2 .. hundreds). With ``B = 2`` the two ordered
pairs are one pair seen twice, and the L2 loss is ``log(exp(-D_12/tau) + eps)``, about
``-D_12 / tau``: a constant-strength push on that single pair until ``D_12/tau`` nears 14, and a
noisy one (one random pair per step). At ``B = 4 .. 12`` (typical 3D and 2D plans) the mean over
12 .. 132 pairs is a soft minimum of the distances: the gradient weight of pair ``(i, j)`` is
its share of ``exp(-D_ij/tau)``, so the closest pairs are pushed hardest. At hundreds of samples
(2D plans with small patches) the value stays a *mean*, so unlike the log-sum form of App. Eq. 17
it does not grow with ``log B`` and the same weight carries across batch sizes; the cost is a
``B x B`` Gram matrix (``O(B^2 d)`` time, ``O(B^2 + B d)`` memory). In every case patches of the
same case in one batch count as negatives too, so overlapping patches are pushed apart. The
hinge loss is a plain mean over pairs; the covariance loss measures decorrelation across
feature dimensions, not distance between samples (with ``B = 2``, ``C`` has rank 1). A batch
of one sample has no pairs: every variant returns 0 (still connected to the graph).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VARIANTS = ("infonce_l2", "infonce_cos", "hinge", "covariance")
POOLING = ("flatten", "gap")
EPS = 1e-6
HINGE_MARGIN = 1.0


def pool_representations(features: torch.Tensor, pooling: str = "flatten") -> torch.Tensor:
    """One vector per sample: ``(B, C, *spatial) -> (B, d)``, in float32.

    ``flatten`` (default): the whole feature map, ``d = C * prod(spatial)`` (Wang & He's
    reference flattens). ``gap``: global average pooling, ``d = C``. With instance-normalised
    features (every DynUNet block ends with instance norm and a leaky ReLU) the spatial mean of
    each channel is almost the same for every sample (it is the norm's bias before the
    activation), so ``gap`` vectors barely differ and the loss sees only small, shape-of-the-
    distribution differences; it is offered for networks without instance norm.
    """
    if pooling not in POOLING:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLING)}")
    features = features.float()
    if pooling == "gap":
        return features.flatten(2).mean(dim=2)
    return features.flatten(1)


def pairwise_scaled_squared_distances(h: torch.Tensor) -> torch.Tensor:
    """``(B, d) -> (B, B)``: ``||h_i - h_j||^2 / d`` via the Gram matrix (centred first: distances
    do not change, and the cancellation in ``|a|^2 + |b|^2 - 2 a.b`` is smaller)."""
    centred = h - h.mean(dim=0, keepdim=True)
    squared_norms = centred.pow(2).sum(dim=1)
    gram = centred @ centred.T
    distances = (squared_norms[:, None] + squared_norms[None, :] - 2 * gram).clamp_min(0.0)
    return distances / h.shape[1]


def _off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The ``B (B-1)`` entries with ``i != j`` of a ``(B, B)`` matrix, as a vector."""
    keep = ~torch.eye(matrix.shape[0], dtype=torch.bool, device=matrix.device)
    return matrix[keep]


def _log_mean_exp_plus_eps(values: torch.Tensor, eps: float) -> torch.Tensor:
    """``log(mean(exp(values)) + eps)`` without underflow."""
    log_mean = torch.logsumexp(values, dim=0) - math.log(values.numel())
    return torch.logaddexp(log_mean, torch.tensor(math.log(eps), dtype=values.dtype, device=values.device))


def infonce_l2(h: torch.Tensor, tau: float = 0.8, eps: float = EPS) -> torch.Tensor:
    """Eq. 3 with ``D_ij = ||h_i - h_j||^2 / d``. ``h``: ``(B, d)``; returns a scalar."""
    distances = _off_diagonal(pairwise_scaled_squared_distances(h))
    return _log_mean_exp_plus_eps(-distances / tau, eps)


def infonce_cos(h: torch.Tensor, tau: float = 0.8, eps: float = EPS) -> torch.Tensor:
    """Eq. 4 with ``D_ij = 1 - cos(h_i, h_j)``. ``h``: ``(B, d)``; returns a scalar."""
    unit = F.normalize(h, dim=1)
    distances = _off_diagonal(1.0 - unit @ unit.T)
    return _log_mean_exp_plus_eps(-distances / tau, eps)


def hinge(h: torch.Tensor, margin: float = HINGE_MARGIN) -> torch.Tensor:
    """Eq. 5 on the root-mean-square element difference. ``h``: ``(B, d)``; returns a scalar."""
    distances = _off_diagonal(pairwise_scaled_squared_distances(h)).clamp_min(1e-12).sqrt()
    return (margin - distances).clamp_min(0.0).pow(2).mean()


def covariance(h: torch.Tensor) -> torch.Tensor:
    """Eq. 6 divided by ``d (d-1)``. ``h``: ``(B, d)``; returns a scalar.

    ``||C||_F^2 = ||H~ H~^T||_F^2 / (B-1)^2`` and ``C_pp = sum_i H~_ip^2 / (B-1)``, so the
    off-diagonal energy needs only the ``B x B`` Gram matrix.
    """
    batch, dims = h.shape
    centred = h - h.mean(dim=0, keepdim=True)
    gram = centred @ centred.T
    diagonal = centred.pow(2).sum(dim=0)
    off_diagonal_energy = (gram.pow(2).sum() - diagonal.pow(2).sum()) / (batch - 1) ** 2
    return off_diagonal_energy / max(1, dims * (dims - 1))


def dispersive_loss(h: torch.Tensor, variant: str = "infonce_l2", tau: float = 0.8, eps: float = EPS,
                    margin: float = HINGE_MARGIN) -> torch.Tensor:
    """The chosen variant on ``h`` ``(B, d)`` (float32 advised); 0 for ``B < 2``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown dispersive loss variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if h.dim() != 2:
        raise ValueError(f"dispersive loss expects (B, d) vectors, got shape {tuple(h.shape)}")
    if h.shape[0] < 2:
        return h.sum() * 0.0
    if variant == "infonce_l2":
        return infonce_l2(h, tau, eps)
    if variant == "infonce_cos":
        return infonce_cos(h, tau, eps)
    if variant == "hinge":
        return hinge(h, margin)
    return covariance(h)
