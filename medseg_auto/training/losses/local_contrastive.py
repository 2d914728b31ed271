"""Supervised local (pixel-level) contrastive loss (Chaitanya et al., NeurIPS 2020, local loss;
labels define the positives as in Chaitanya et al. 2021, arXiv:2112.09645); the trainer and its
choices: :mod:`medseg_auto.training.trainers.local_contrastive`.

For anchors ``a`` with projected embeddings ``z`` (L2-normalised) and classes ``y``::

    loss = mean_a mean_{p in P(a)} -log( exp(s_ap) / (exp(s_ap) + sum_{n in N(a)} exp(s_an)) ),  s = z z^T / tau

``P(a)``: the other anchors of ``a``'s class, ``N(a)``: the anchors of other classes. Anchors
without a positive or without a negative contribute nothing. Vectorised (an ``M x M`` similarity
matrix, no loop over anchors); written by hand because the maintained libraries' supervised
contrastive losses (e.g. pytorch-metric-learning's ``SupConLoss``) put *all* other anchors in
each denominator, not one positive plus the negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medseg_auto.training.losses.feature_discrepancy import masked_mean

MASKED_SIMILARITY = -1e4  # finite stand-in for -inf, so rows without negatives keep finite gradients


def sample_pixels(labels: torch.Tensor, num_classes: int, per_class: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``per_class`` random positions of every class in every image, without replacement.

    ``labels`` ``(B, N)`` int (flattened). Returns ``(index (B, K, P), class (B, K, P), valid (B, K, P))``:
    flat positions, their class, and whether the image had that many pixels of the class. One
    random score per pixel, then a top-k per class: vectorised, no loop over pixels.
    """
    count = min(per_class, labels.shape[1])
    scores = torch.rand(labels.shape, generator=generator, device=labels.device)
    indices, valid = [], []
    for k in range(num_classes):
        top = scores.masked_fill(labels != k, -1.0).topk(count, dim=1)
        indices.append(top.indices)
        valid.append(top.values >= 0)
    index = torch.stack(indices, dim=1)
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1).expand_as(index)
    return index, classes, torch.stack(valid, dim=1)


def local_contrastive_loss(embeddings: torch.Tensor, classes: torch.Tensor,
                           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``embeddings`` ``(M, D)`` (normalised here), ``classes`` ``(M,)``: the loss above and the
    number of anchors that had both a positive and a negative (0: the loss is 0)."""
    z = F.normalize(embeddings.float(), dim=1)
    similarity = z @ z.t() / temperature
    same = classes.unsqueeze(0) == classes.unsqueeze(1)
    positive = same & ~torch.eye(len(classes), dtype=torch.bool, device=classes.device)
    negative = ~same
    negatives = similarity.masked_fill(~negative, MASKED_SIMILARITY).logsumexp(dim=1, keepdim=True)
    pair = torch.logaddexp(similarity, negatives) - similarity  # -log(e^s_ap / (e^s_ap + sum_n e^s_an))
    per_anchor = (pair * positive).sum(1) / positive.sum(1).clamp_min(1)
    valid = positive.any(1) & negative.any(1)
    return masked_mean(per_anchor, valid), valid.sum()
