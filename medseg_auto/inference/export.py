"""From logits in preprocessed space to a label file in the input's own geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from medseg_auto.dataset.image_io import write_segmentation
from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.preprocessing.cache import CaseProperties
from medseg_auto.preprocessing.restore import probabilities_to_original_grid, probabilities_to_segmentation
from medseg_auto.utils.atomic import atomic_path


def logits_to_probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax over classes: ``(K, ...)`` logits -> float32 probabilities."""
    return torch.softmax(logits.float(), dim=0).numpy()


def export_prediction(
    probabilities: np.ndarray,
    properties: CaseProperties,
    plans: Plans,
    config: ConfigurationPlan,
    output_file: Path,
    save_probabilities: bool = False,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Write the label map (and optionally ``.npz`` probabilities) for one case, atomically.

    ``postprocess`` (e.g. keep the largest component) maps the label map before writing.

    ``probabilities`` is ``(K, z, y, x)`` in preprocessed space; returns the ``(Z, Y, X)`` label
    map in the file's own array order.
    """
    original = probabilities_to_original_grid(probabilities, properties, plans, config)
    segmentation = probabilities_to_segmentation(original)
    if postprocess is not None:
        segmentation = postprocess(segmentation)
    geometry = properties.image_geometry
    ending = geometry.file_ending
    with atomic_path(output_file, suffix=ending) as temporary:
        write_segmentation(segmentation, geometry, temporary)
    if save_probabilities:
        npz_file = output_file.with_name(output_file.name[: -len(ending)] + ".npz")
        with atomic_path(npz_file, suffix=".npz") as temporary:
            np.savez_compressed(temporary, probabilities=original.astype(np.float16))
    return segmentation
