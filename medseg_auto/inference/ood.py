"""Out-of-distribution score of a case: Mahalanobis distance of its early-layer feature statistics
to those of the cross-validation cases (after ODEx, González et al., DART 2022 pp. 108-118).

ODEx fits a Gaussian ``(mu, Sigma)`` to first-normalization-layer features of the training data
and measures a test image by its Mahalanobis distance ``sqrt((z - mu)^T Sigma^-1 (z - mu))``.
Here ``z`` is a case's statistics vector (:mod:`.feature_statistics`), the reference is one
vector per validation case of a fold (held out from that fold's training, so their spread is
the spread of unseen in-distribution data), each feature is standardized by the reference's
mean and standard deviation, and ``Sigma`` is the Ledoit-Wolf shrinkage estimate (sklearn):
a few hundred cases for a few hundred features would make the plain covariance singular.

Threshold: the ``percentile`` (default 99) of the reference cases' own leave-one-out
distances (each case measured against the Gaussian fitted to the others), so about 1 % of
in-distribution cases are flagged. With a fold ensemble a case's score is the mean of its
distances over the folds, and its threshold the mean of the folds' thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg_auto.errors import MedsegError
from medseg_auto.utils.atomic import read_json, write_json_atomic

OOD_REFERENCE_FILE = "ood_reference.json"
REFERENCE_VERSION = 2  # 2: validation cases of the training sites only (1 held every site's)
DEFAULT_PERCENTILE = 99.0
MIN_REFERENCE_CASES = 5


def mahalanobis_distance(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``sqrt((x - mean)^T precision (x - mean))`` for ``features`` ``(N, D)`` (or ``(D,)``) -> ``(N,)`` (or scalar)."""
    centred = np.atleast_2d(features) - mean
    squared = np.einsum("nd,de,ne->n", centred, precision, centred)
    distances = np.sqrt(np.maximum(squared, 0.0))
    return distances if np.ndim(features) == 2 else distances[0]


@dataclass
class GaussianModel:
    """Standardization plus a Ledoit-Wolf Gaussian fitted to ``features (N, D)``."""

    center: np.ndarray
    scale: np.ndarray
    mean: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> "GaussianModel":
        from sklearn.covariance import LedoitWolf  # here, not at the top: the CLI imports this module

        features = np.asarray(features, dtype=np.float64)
        center = features.mean(axis=0)
        scale = features.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)  # a constant feature: any change is a real shift
        estimator = LedoitWolf().fit((features - center) / scale)
        return cls(center, scale, estimator.location_, estimator.precision_)

    def distance(self, features: np.ndarray) -> np.ndarray:
        return mahalanobis_distance((np.asarray(features, dtype=np.float64) - self.center) / self.scale,
                                    self.mean, self.precision)


def leave_one_out_distances(features: np.ndarray) -> np.ndarray:
    """Distance of every row of ``features (N, D)`` to the Gaussian fitted to the other rows."""
    features = np.asarray(features, dtype=np.float64)
    rows = np.arange(len(features))
    return np.array([float(GaussianModel.fit(features[rows != i]).distance(features[i])) for i in rows])


@dataclass
class OodReference:
    """The reference of one trained fold: the statistics of its validation cases.

    ``signature`` identifies the weights the statistics came from
    (:func:`~.feature_statistics.tap_signature`), so a retrained fold is not scored against
    an old reference. ``training_sites``: the sites the fold trained on; the reference holds
    validation cases of these sites only (:mod:`~medseg_auto.training.sampled_sites`; None:
    not recorded). Stored as ``fold_F/ood_reference.json``.
    """

    taps: list[str]
    case_ids: list[str]
    features: np.ndarray
    signature: str
    source: str
    loo_distances: np.ndarray | None = None
    training_sites: list[str | None] | None = None
    model: GaussianModel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float64)
        if self.features.ndim != 2 or len(self.features) < MIN_REFERENCE_CASES:
            raise MedsegError(f"an OOD reference needs at least {MIN_REFERENCE_CASES} cases, got {len(self.features)}")
        self.model = GaussianModel.fit(self.features)
        if self.loo_distances is None:
            self.loo_distances = leave_one_out_distances(self.features)
        self.loo_distances = np.asarray(self.loo_distances, dtype=np.float64)

    def distance(self, features: np.ndarray) -> np.ndarray:
        return self.model.distance(features)

    def threshold(self, percentile: float = DEFAULT_PERCENTILE) -> float:
        return float(np.percentile(self.loo_distances, percentile))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": REFERENCE_VERSION, "source": self.source, "taps": self.taps, "signature": self.signature,
            "statistics": "per channel mean and log std of the first normalization layer's input, identity view",
            "training_sites": self.training_sites, "case_ids": self.case_ids, "loo_distances": self.loo_distances.round(6).tolist(),
            "features": self.features.round(7).tolist(),
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "OodReference":
        return cls(list(payload["taps"]), list(payload["case_ids"]), np.asarray(payload["features"]),
                   str(payload["signature"]), str(payload.get("source", "")), payload.get("loo_distances"),
                   payload.get("training_sites"))

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json(), compact=True)

    @classmethod
    def load(cls, path: Path) -> "OodReference":
        try:
            payload = read_json(path)
            if payload.get("version") != REFERENCE_VERSION:
                raise ValueError(f"version {payload.get('version')} (expected {REFERENCE_VERSION})")
            return cls.from_json(payload)
        except (ValueError, KeyError, TypeError) as error:
            raise MedsegError(f"{path}: not a valid OOD reference ({error}); delete it to recompute") from error
