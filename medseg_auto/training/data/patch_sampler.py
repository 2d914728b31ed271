"""nnU-Net's patch sampling (``nnUNetDataLoaderBase.get_bbox`` and the 2D/3D loaders), on our cache.

One batch: case ids come from a case sampler (uniform with replacement by default); sample ``j``
is forced to contain foreground iff ``j >= round(batch_size * (1 - 0.33))`` (3 of 9, 1 of 2).
A forced sample picks a random class present in the case, a random stored voxel of that class
(``CaseProperties.class_locations``), and centres the patch on it; other samples (and cases
without foreground) get a uniformly random position. Positions range so that the *final*
patch, the centre of the enlarged one, can touch every border of the image.

The crop is cut at the enlarged ``initial_patch_size`` so that rotation and scaling in the
augmentation have real image around the final patch; where it sticks out of the image it is
padded with 0 (data) and -1 (seg, "outside"). Only the crop's own region is read from the
memory-mapped ``.npy`` files. 2D configurations (a 2-element patch) pick one z slice: the
slice of the chosen foreground voxel, or a uniformly random one.

One deliberate difference from nnU-Net: a foreground-centred start is clamped at both ends of
the allowed range (nnU-Net clamps only the lower end, so foreground at the upper border got
more padding than at the lower border).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from medseg_auto.errors import DatasetError
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.data.case_samplers import CaseSampler, UniformCaseSampler

DEFAULT_OVERSAMPLE_FOREGROUND = 0.33


@dataclass
class _CaseInfo:
    """What sampling needs from a case's properties: its site and ``(N, 3)`` voxel lists per class."""

    site: str | None
    foreground_locations: list[np.ndarray]


class PatchSampler:
    """Cuts batches of enlarged patches from one configuration's preprocessed cache.

    ``patch_size`` is the network's patch (2 or 3 entries; 2 means 2D slices of the stored
    ``(C, Z, Y, X)`` arrays); ``initial_patch_size`` the enlarged crop (default: no enlargement,
    as nnU-Net's validation loader). Picklable, so it can be handed to worker processes; it keeps
    no file open between patches (each worker would otherwise hold two descriptors per case).
    """

    def __init__(
        self,
        cache: PreprocessedCache,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        batch_size: int,
        initial_patch_size: Sequence[int] | None = None,
        oversample_foreground_percent: float = DEFAULT_OVERSAMPLE_FOREGROUND,
        case_sampler: CaseSampler | None = None,
    ) -> None:
        missing = [case for case in case_ids if not cache.is_complete(case)]
        if missing:
            raise DatasetError(
                f"{cache.folder}: {len(missing)} training case(s) are not in the preprocessed cache "
                f"({', '.join(missing[:5])}); run preprocessing again"
            )
        if len(patch_size) not in (2, 3):
            raise ValueError(f"patch_size must have 2 or 3 entries, got {list(patch_size)}")
        self.cache = cache
        self.case_ids = list(case_ids)
        self.patch_size = tuple(int(v) for v in patch_size)
        self.initial_patch_size = tuple(int(v) for v in (initial_patch_size or patch_size))
        if len(self.initial_patch_size) != len(self.patch_size) or any(
            i < p for i, p in zip(self.initial_patch_size, self.patch_size)
        ):
            raise ValueError(
                f"initial_patch_size {self.initial_patch_size} must cover patch_size {self.patch_size}"
            )
        self.batch_size = int(batch_size)
        self.oversample_foreground_percent = float(oversample_foreground_percent)
        self.case_sampler = case_sampler if case_sampler is not None else UniformCaseSampler(self.case_ids)
        self._case_info: dict[str, _CaseInfo] = {}

    @property
    def spatial_dims(self) -> int:
        return len(self.patch_size)

    def is_forced_foreground(self, sample_index: int) -> bool:
        """nnU-Net's ``_oversample_last_XX_percent`` (Python's ``round``: round half to even)."""
        return sample_index >= round(self.batch_size * (1 - self.oversample_foreground_percent))

    def sample_batch(self, rng: np.random.Generator) -> dict[str, Any]:
        """Return ``{"data": float32 (B, C, *initial), "seg": int16 (B, 1, *initial), "case_ids", "sites"}``.

        ``seg`` holds -1 outside the image and outside the non-zero region.
        """
        case_ids = list(self.case_sampler.sample_batch(rng, self.batch_size))
        patches = [
            self.sample_patch(case_id, self.is_forced_foreground(j), rng) for j, case_id in enumerate(case_ids)
        ]
        return {
            "data": np.stack([data for data, _ in patches]),
            "seg": np.stack([seg for _, seg in patches]),
            "case_ids": case_ids,
            "sites": [self._info(case_id).site for case_id in case_ids],
        }

    def sample_patch(
        self, case_id: str, force_foreground: bool, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One patch of one case: ``(data float32 (C, *initial), seg int16 (1, *initial))``."""
        data_map = np.load(self.cache.data_path(case_id), mmap_mode="r", allow_pickle=False)
        seg_map = np.load(self.cache.seg_path(case_id), mmap_mode="r", allow_pickle=False)
        voxel = self._foreground_voxel(case_id, rng) if force_foreground else None
        stored_shape = data_map.shape[1:]
        if self.spatial_dims == 2:
            z_index = int(voxel[0]) if voxel is not None else int(rng.integers(0, stored_shape[0]))
            leading: tuple[int, ...] = (z_index,)
            shape, centre = stored_shape[1:], (voxel[1:] if voxel is not None else None)
        else:
            leading, shape, centre = (), stored_shape, voxel
        start = self._patch_start(np.asarray(shape), centre, rng)
        return (
            _read_padded(data_map, leading, start, self.initial_patch_size, 0, np.float32),
            _read_padded(seg_map, leading, start, self.initial_patch_size, -1, np.int16),
        )

    def _patch_start(self, shape: np.ndarray, centre: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """Lower corner of the enlarged patch (may be negative or run past ``shape``: padded later)."""
        initial = np.asarray(self.initial_patch_size)
        need_to_pad = np.maximum(initial - np.asarray(self.patch_size), initial - shape)
        lowest = (-need_to_pad) // 2
        highest = shape + need_to_pad // 2 + need_to_pad % 2 - initial
        if centre is None:
            return np.array([rng.integers(lo, hi + 1) for lo, hi in zip(lowest, highest)])
        return np.clip(np.asarray(centre) - initial // 2, lowest, highest)

    def _foreground_voxel(self, case_id: str, rng: np.random.Generator) -> np.ndarray | None:
        """A random stored voxel ``(z, y, x)`` of a random class present in the case, or None."""
        locations = self._info(case_id).foreground_locations
        if not locations:
            return None
        of_class = locations[int(rng.integers(0, len(locations)))]
        return of_class[int(rng.integers(0, len(of_class)))]

    def _info(self, case_id: str) -> _CaseInfo:
        """Properties are read once per process and kept as compact integer arrays."""
        info = self._case_info.get(case_id)
        if info is None:
            properties = self.cache.load_properties(case_id)
            locations = [
                np.asarray(voxels, dtype=np.int32).reshape(len(voxels), -1)[:, -3:]
                for voxels in properties.class_locations.values()
                if len(voxels) > 0
            ]
            info = _CaseInfo(site=properties.site, foreground_locations=locations)
            self._case_info[case_id] = info
        return info


def _read_padded(
    array: np.ndarray,
    leading: tuple[int, ...],
    start: np.ndarray,
    size: Sequence[int],
    pad_value: int,
    dtype: type,
) -> np.ndarray:
    """Copy ``array[:, *leading, start:start+size]`` into a ``(C, *size)`` array filled with ``pad_value``.

    ``array`` is ``(C, *leading_axes, *spatial)``; only the part of the window inside the image
    is read, which for a memory-mapped file touches only those pages.
    """
    spatial_shape = np.asarray(array.shape[1 + len(leading) :])
    stop = start + np.asarray(size)
    source_lo, source_hi = np.maximum(start, 0), np.minimum(stop, spatial_shape)
    out = np.full((array.shape[0], *size), pad_value, dtype=dtype)
    if np.any(source_hi <= source_lo):
        return out
    source = (slice(None), *leading, *(slice(int(lo), int(hi)) for lo, hi in zip(source_lo, source_hi)))
    target = (slice(None), *(slice(int(lo - s), int(hi - s)) for lo, hi, s in zip(source_lo, source_hi, start)))
    out[target] = array[source]
    return out
