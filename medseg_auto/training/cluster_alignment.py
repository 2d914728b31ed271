"""AIVA's per-epoch clustering and matching, and its alignment loss (pure functions).

Paper: Goodman, Kasten Serlin, Greenspan, Goldberger, "Unsupervised Site Adaptation by
Intra-site Variability Alignment", DART 2022 (LNCS 13542), pp. 56-65, eqs. 1-2 and Algorithm 1
(reading notes ``NOTES_dart2022.md`` 2.1). Source and target feature vectors are embedded
*jointly* (PCA, optionally followed by t-SNE as in the paper), each site is clustered
separately with k-means, and the clusterings are matched by the Hungarian method::

    pi = argmin_pi  sum_i || mu_i^t - mu_pi(i)^s ||^2          (eq. 1, in the embedding)
    L_alignment = sum_i || xbar_i^t - nu_pi(i)^s ||^2          (eq. 2, in feature space)

``nu_j^s`` is the mean *feature* (not embedded) vector of source cluster ``j`` and ``xbar_i^t``
the mean feature of the minibatch's target samples of cluster ``i``. sklearn's ``PCA``,
``TSNE``, ``KMeans`` and scipy's ``linear_sum_assignment`` do the work.

Choices (the paper leaves them open or they follow from small data): the number of clusters
is ``min(k, n_source, n_target)`` so both sites have the same count and the matching is a
permutation; PCA keeps ``min(components, n_points, n_features)`` axes; k-means uses
``n_init=10`` and a fixed seed; a source cluster left empty by k-means (duplicate points) has
no mean, and target clusters matched to it are left out of the loss; clusters absent from a
minibatch contribute nothing (the paper sums over clusters present).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

EMBEDDINGS = ("pca", "tsne")
KMEANS_RESTARTS = 10
TSNE_PERPLEXITY = 30.0  # sklearn's default, lowered for few points (it must stay below n)


@dataclass
class ClusterMatch:
    """One epoch's clustering of both sites and its matching.

    ``source_labels`` ``(Ns,)`` and ``target_labels`` ``(Nt,)`` in ``0..k-1``;
    ``source_means`` ``(k, F)`` feature means of the source clusters (NaN rows: empty);
    ``partner`` ``(k,)``: the source cluster matched to each target cluster; ``cost`` the
    matched sum of squared centre distances (eq. 1) in the embedding.
    """

    source_labels: np.ndarray
    target_labels: np.ndarray
    source_means: np.ndarray
    partner: np.ndarray
    cost: float

    @property
    def k(self) -> int:
        return int(self.partner.shape[0])

    def partner_means(self) -> tuple[np.ndarray, np.ndarray]:
        """``(k, F)`` ``nu^s_pi(i)`` per target cluster ``i`` (0 where invalid) and the ``(k,)`` valid mask."""
        means = self.source_means[self.partner]
        valid = np.all(np.isfinite(means), axis=1)
        return np.where(valid[:, None], means, 0.0).astype(np.float32), valid


def embed_jointly(source: np.ndarray, target: np.ndarray, components: int = 20, embedding: str = "pca",
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fit one PCA (then t-SNE to 2-D for ``embedding="tsne"``) on the stacked ``(Ns, F)`` and
    ``(Nt, F)`` features; return the embedded ``(Ns, d)`` and ``(Nt, d)`` points."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
    points = np.concatenate([source, target]).astype(np.float64)
    n_components = max(1, min(int(components), points.shape[0], points.shape[1]))
    points = PCA(n_components=n_components, random_state=seed).fit_transform(points)
    if embedding == "tsne":
        perplexity = min(TSNE_PERPLEXITY, max(1.0, (points.shape[0] - 1) / 3))
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                      random_state=seed).fit_transform(points)
    return points[: len(source)], points[len(source):]


def match_clusters(source_centres: np.ndarray, target_centres: np.ndarray) -> tuple[np.ndarray, float]:
    """Hungarian matching (eq. 1): ``partner[i]`` is the source centre for target centre ``i``.

    Both ``(k, d)``; returns ``(partner (k,), summed squared distance)``.
    """
    cost = ((target_centres[:, None, :] - source_centres[None, :, :]) ** 2).sum(axis=-1)
    rows, cols = linear_sum_assignment(cost)
    partner = np.empty(len(target_centres), dtype=np.int64)
    partner[rows] = cols
    return partner, float(cost[rows, cols].sum())


def cluster_and_match(source: np.ndarray, target: np.ndarray, k: int = 12, components: int = 20,
                      embedding: str = "pca", seed: int = 0) -> ClusterMatch:
    """Embed jointly, k-means each site, match the clusters; ``source`` ``(Ns, F)``, ``target`` ``(Nt, F)``."""
    if len(source) == 0 or len(target) == 0:
        raise ValueError(f"need features of both sites (got {len(source)} source, {len(target)} target)")
    k = max(1, min(int(k), len(source), len(target)))
    source_points, target_points = embed_jointly(source, target, components, embedding, seed)
    source_kmeans = KMeans(n_clusters=k, n_init=KMEANS_RESTARTS, random_state=seed).fit(source_points)
    target_kmeans = KMeans(n_clusters=k, n_init=KMEANS_RESTARTS, random_state=seed).fit(target_points)
    partner, cost = match_clusters(source_kmeans.cluster_centers_, target_kmeans.cluster_centers_)
    source_labels = source_kmeans.labels_.astype(np.int64)
    means = np.full((k, source.shape[1]), np.nan, dtype=np.float64)
    for cluster in range(k):
        members = source_labels == cluster
        if members.any():
            means[cluster] = source[members].mean(axis=0)
    return ClusterMatch(source_labels, target_kmeans.labels_.astype(np.int64), means, partner, cost)


def alignment_loss(features: torch.Tensor, clusters: torch.Tensor, partners: torch.Tensor,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: ``sum_i || mean(features[clusters == i]) - partners[i] ||^2`` over clusters present.

    ``features`` ``(B, F)`` (gradients flow through them), ``clusters`` ``(B,)`` int64 in
    ``0..k-1``, ``partners`` ``(k, F)`` fixed source means, ``valid`` ``(k,)`` bool (clusters
    whose partner has no mean are skipped). Computed in float32; returns a scalar.
    """
    features = features.float()
    k = partners.shape[0]
    one_hot = F.one_hot(clusters.long(), k).to(features.dtype)  # (B, k)
    counts = one_hot.sum(dim=0)
    present = counts > 0
    if valid is not None:
        present = present & valid.to(present.device)
    sums = one_hot.t() @ features  # (k, F)
    means = sums[present] / counts[present].unsqueeze(1)
    return ((means - partners[present].float()) ** 2).sum()
