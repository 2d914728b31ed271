"""Keep the largest connected component: per foreground label, or of the union of all
foreground labels (nnU-Net's two candidates). MONAI's ``KeepLargestConnectedComponent`` does
the labelling; this module holds the decision format (a small JSON) and a picklable callable
that export workers apply."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent


@dataclass
class PostprocessingPlan:
    """What to apply: ``foreground_union`` first (removes everything outside the largest
    foreground blob), then the largest component of each label in ``per_label``."""

    foreground_union: bool = False
    per_label: list[int] = field(default_factory=list)

    @property
    def is_identity(self) -> bool:
        return not self.foreground_union and not self.per_label

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict) -> "PostprocessingPlan":
        return cls(bool(payload.get("foreground_union", False)), [int(v) for v in payload.get("per_label", [])])

    def __call__(self, segmentation: np.ndarray) -> np.ndarray:
        return apply_postprocessing(segmentation, self)


def keep_largest_foreground_union(segmentation: np.ndarray) -> np.ndarray:
    """Zero every foreground voxel outside the largest connected foreground region."""
    labels = [int(v) for v in np.unique(segmentation) if v != 0]
    if not labels:
        return segmentation
    transform = KeepLargestConnectedComponent(applied_labels=labels, is_onehot=False, independent=False)
    return _apply(transform, segmentation)


def keep_largest_per_label(segmentation: np.ndarray, label: int) -> np.ndarray:
    """Keep only the largest connected component of ``label``; other labels untouched."""
    if not (segmentation == label).any():
        return segmentation
    transform = KeepLargestConnectedComponent(applied_labels=[label], is_onehot=False, independent=True)
    return _apply(transform, segmentation)


def apply_postprocessing(segmentation: np.ndarray, plan: PostprocessingPlan) -> np.ndarray:
    """Apply ``plan`` to a ``(Z, Y, X)`` label map (2D maps have Z = 1)."""
    if plan.foreground_union:
        segmentation = keep_largest_foreground_union(segmentation)
    for label in plan.per_label:
        segmentation = keep_largest_per_label(segmentation, label)
    return segmentation


def _apply(transform: KeepLargestConnectedComponent, segmentation: np.ndarray) -> np.ndarray:
    # A single slice is labelled in 2D so connectivity is in-plane, as for 2D images.
    squeeze = segmentation.shape[0] == 1
    array = segmentation[0] if squeeze else segmentation
    result = transform(torch.as_tensor(array[None].astype(np.int64)))
    output = np.asarray(result[0]).astype(segmentation.dtype)
    return output[None] if squeeze else output
