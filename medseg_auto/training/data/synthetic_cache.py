"""Tiny synthetic preprocessed caches, for the data-pipeline tests and the loading benchmark.

Why not preprocess a synthetic raw dataset: the tests of sampling and augmentation need exact
control over shapes and label positions, and the benchmark needs hundreds of batches from a
hippocampus-sized cache in seconds. Each case is noise plus one ellipsoid (label 1) with a
core (label 2), -1 in seg outside a non-zero region (the two lowest rows of every slice),
and class locations sampled as preprocessing does (up to ``max_locations`` per class, stored
as ``[channel, z, y, x]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medseg_auto.dataset.image_io import ImageGeometry
from medseg_auto.preprocessing.cache import CaseProperties, PreprocessedCache


def sample_class_locations(
    seg: np.ndarray, labels: Sequence[int], rng: np.random.Generator, max_locations: int
) -> dict[str, list[list[int]]]:
    """``{"label": [[c, z, y, x], ...]}``, at most ``max_locations`` voxels per label; seg ``(1, Z, Y, X)``."""
    locations: dict[str, list[list[int]]] = {}
    for label in labels:
        voxels = np.argwhere(seg == label)
        if len(voxels) > max_locations:
            voxels = voxels[rng.choice(len(voxels), max_locations, replace=False)]
        locations[str(label)] = voxels.tolist()
    return locations


def make_case_arrays(
    shape: Sequence[int], rng: np.random.Generator, n_channels: int = 1, with_foreground: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(data float32 (C, Z, Y, X), seg int16 (1, Z, Y, X))`` of one synthetic case."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = [rng.uniform(0.3 * n, 0.7 * n) for n in shape]
    radii = [max(1.0, rng.uniform(0.15, 0.3) * n) for n in shape]
    distance = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))
    seg = np.zeros(shape, dtype=np.int16)
    if with_foreground:
        seg[distance < 1.0] = 1
        seg[distance < 0.5] = 2
    seg[..., :2, :] = -1
    data = rng.normal(0.0, 1.0, size=(n_channels, *shape)).astype(np.float32) + seg.clip(0)[None]
    data[:, seg < 0] = 0
    return data, seg[None]


def write_synthetic_cache(
    folder: str | Path,
    shapes: Sequence[Sequence[int]],
    n_channels: int = 1,
    sites: Sequence[str | None] | None = None,
    empty_cases: Sequence[int] = (),
    seed: int = 0,
    max_locations: int = 1000,
) -> PreprocessedCache:
    """Write one case per shape (ids ``case_000``, ...) and return the cache.

    ``sites[i]`` is case i's site; cases listed in ``empty_cases`` have no foreground.
    """
    rng = np.random.default_rng(seed)
    cache = PreprocessedCache(folder)
    for index, shape in enumerate(shapes):
        data, seg = make_case_arrays(shape, rng, n_channels, with_foreground=index not in empty_cases)
        properties = CaseProperties(
            case_id=f"case_{index:03d}",
            geometry=ImageGeometry(spacing=(1.0, 1.0, 1.0)).to_json(),
            original_shape=list(shape),
            original_spacing=[1.0, 1.0, 1.0],
            shape_before_cropping=list(shape),
            bbox_used_for_cropping=[[0, n] for n in shape],
            shape_after_cropping_before_resampling=list(shape),
            spacing_after_resampling=[1.0, 1.0, 1.0],
            site=sites[index] if sites is not None else None,
            class_locations=sample_class_locations(seg, (1, 2), rng, max_locations),
        )
        cache.write_case(properties.case_id, data, seg, properties)
    return cache
