"""Style donors for prediction-time FDA: the most similar source images, and the adapted views.

Feather-Light FDA (DART 2022 #9) predicts a target image ``n_MST = 7`` times, each time with the
low-frequency amplitudes of another source image, and averages the predictions; donors are the
source scans most similar to the target (SR-SIM in the paper, scan-level "3D" variant, which
they found as good as per-slice choices and simplest).

Similarity here is a cheap stand-in for SR-SIM, computed on the *preprocessed* arrays so
target and donors are compared in the space the network sees: every case is resized to a fixed
grid (``64 x 64`` in-plane; depth 1 for 2D images, 16 for volumes), its centred amplitude
spectrum is taken per channel, and the low band (``(2*8+1)^2`` in-plane, ``2*4+1`` deep) in
``log(1 + amplitude / voxels)`` is the descriptor; donors are the nearest descriptors in
Euclidean distance. The low band holds the large-scale layout and contrast of an image, i.e.
what the swap will replace, so near donors mean small swap artefacts (the paper's reason for
choosing donors at all). Descriptors of a source cache are computed once and stored next to it
(``fda_descriptors.npz``, with each case's site); new cases are added on the next use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import fft

from medseg_auto.errors import DatasetError
from medseg_auto.inference.fda import (
    DEFAULT_BETA, DEFAULT_DONORS, apply_low_bands, check_beta, fit_donor, low_band_amplitude,
)
from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.utils.atomic import atomic_path
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("inference.fda")

DESCRIPTOR_FILE = "fda_descriptors.npz"
DESCRIPTOR_VERSION = "lowband-logamp-v1"
IN_PLANE_GRID, VOLUME_DEPTH = 64, 16
IN_PLANE_HALF_WIDTH, DEPTH_HALF_WIDTH = 8, 4


def amplitude_descriptor(data: np.ndarray) -> np.ndarray:
    """Descriptor ``(D,)`` float32 of a preprocessed case ``data (C, Z, Y, X)`` (see module doc)."""
    depth = 1 if data.shape[1] == 1 else VOLUME_DEPTH
    grid = (depth, IN_PLANE_GRID, IN_PLANE_GRID)
    small = fit_donor(np.asarray(data, dtype=np.float32), grid).astype(np.float64)
    axes = (1, 2, 3)
    amplitude = np.abs(fft.fftshift(fft.fftn(small, axes=axes), axes=axes)) / float(np.prod(grid))
    half = (0 if depth == 1 else DEPTH_HALF_WIDTH, IN_PLANE_HALF_WIDTH, IN_PLANE_HALF_WIDTH)
    band = amplitude[(slice(None), *(slice(n // 2 - h, n // 2 + h + 1) for n, h in zip(grid, half)))]
    return np.log1p(band).ravel().astype(np.float32)


@dataclass
class DonorBank:
    """Descriptors of the donor cases of one preprocessed cache (``case_ids[i]`` <-> ``descriptors[i]``)."""

    cache: PreprocessedCache
    case_ids: list[str]
    descriptors: np.ndarray

    @classmethod
    def load(cls, cache: PreprocessedCache, site: str | None = None) -> "DonorBank":
        """Every case of ``cache`` (of ``site`` only, when given), with descriptors from
        ``fda_descriptors.npz`` where present and computed (then stored) where not."""
        case_ids = cache.case_ids()
        if not case_ids:
            raise DatasetError(f"{cache.folder}: no preprocessed cases to take FDA donors from; "
                               "run 'medseg-auto plan_and_preprocess' for the source dataset with the model's plans")
        stored = _read_descriptors(cache.folder / DESCRIPTOR_FILE)
        missing = [case for case in case_ids if case not in stored]
        if missing:
            log.info("FDA: computing descriptors of %d source case(s) in %s (once)", len(missing), cache.folder)
            for case in missing:
                data, _, properties = cache.load_case(case, mmap=True)
                stored[case] = (amplitude_descriptor(data), properties.site or "")
            _write_descriptors(cache.folder / DESCRIPTOR_FILE, stored)
        chosen = [case for case in case_ids if site is None or stored[case][1] == site]
        if not chosen:
            sites = sorted({stored[case][1] or "(none)" for case in case_ids})
            raise DatasetError(f"{cache.folder}: no source case of site '{site}' for FDA (sites: {', '.join(sites)})")
        return cls(cache, chosen, np.stack([stored[case][0] for case in chosen]))

    def nearest(self, data: np.ndarray, count: int) -> list[tuple[str, float]]:
        """The ``count`` donors closest to ``data (C, Z, Y, X)``: ``[(case_id, distance), ...]``, nearest first."""
        descriptor = amplitude_descriptor(data)
        if descriptor.shape != self.descriptors.shape[1:]:
            raise DatasetError(
                f"{self.cache.folder}: FDA donors do not match the input (descriptor size {self.descriptors.shape[1]} "
                f"vs {descriptor.size}): source and input must have the same channels and both be 2D or both 3D")
        distances = np.linalg.norm(self.descriptors - descriptor, axis=1)
        order = np.argsort(distances, kind="stable")[: max(1, count)]
        return [(self.case_ids[i], float(distances[i])) for i in order]


@dataclass
class FdaAdapter:
    """Makes the FDA views of one preprocessed case: one per donor, in the target's shape.

    A donor's low-band amplitudes are computed once per target shape and kept (a few hundred
    numbers per donor and shape; at most ``cache_size`` entries): an external set's images
    mostly share one shape and its cases share their nearest donors, so most views cost one
    FFT of the target instead of reading, resizing and transforming the donor again.
    """

    bank: DonorBank
    beta: float = DEFAULT_BETA
    donors: int = DEFAULT_DONORS
    spatial_axes: int = 2  # 2: slice-wise (2D configurations); 3: whole volume
    match_moments: bool = False
    cache_size: int = 4096
    _bands: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_beta(self.beta)
        if self.donors < 1:
            raise ValueError(f"--fda-donors must be at least 1, got {self.donors}")

    def adapt(self, data: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
        """``([adapted (C, Z, Y, X) per donor], [donor case ids])`` for a preprocessed case."""
        target = np.asarray(data, dtype=np.float32)
        chosen = self.bank.nearest(target, self.donors)
        bands = [self._band(case_id, target) for case_id, _ in chosen]
        views = apply_low_bands(target, bands, self.beta, self.spatial_axes, self.match_moments)
        return views, [case_id for case_id, _ in chosen]

    def _band(self, case_id: str, target: np.ndarray) -> np.ndarray:
        key = (case_id, target.shape)
        band = self._bands.get(key)
        if band is None:
            donor = np.load(self.bank.cache.data_path(case_id), mmap_mode="r", allow_pickle=False)
            if donor.shape[0] != target.shape[0]:
                raise DatasetError(f"{self.bank.cache.folder}: donor '{case_id}' has {donor.shape[0]} channel(s), "
                                   f"the input {target.shape[0]}")
            band = low_band_amplitude(fit_donor(donor, target.shape[1:]), self.beta, self.spatial_axes)
            if len(self._bands) >= self.cache_size:
                self._bands.pop(next(iter(self._bands)))  # the oldest entry
            self._bands[key] = band
        return band


def open_source_cache(preprocessed_dataset_folder: Path, plans: Plans, config: ConfigurationPlan) -> PreprocessedCache:
    """The source dataset's cache for the model's configuration (``<folder>/<data_identifier>``).

    Donors must be preprocessed like the model's inputs: the same plans name gives the same
    cache folder name, and a source planned separately (its own plans file) is checked for the
    same spacing and normalization, since a donor at another spacing has another spectrum.
    """
    cache = PreprocessedCache(preprocessed_dataset_folder / config.data_identifier)
    if not cache.case_ids():
        raise DatasetError(
            f"{cache.folder}: no preprocessed cases for FDA donors; run 'medseg-auto plan_and_preprocess "
            f"{preprocessed_dataset_folder.name}' with the model's plans ('{plans.plans_name}')")
    source_plans_file = preprocessed_dataset_folder / f"{plans.plans_name}.json"
    source_plans = Plans.load(source_plans_file) if source_plans_file.is_file() else None
    if source_plans is not None and source_plans.dataset_name != plans.dataset_name:
        source = source_plans.configuration(config.name)
        expected = (list(config.spacing), list(config.normalization_schemes))
        if (list(source.spacing), list(source.normalization_schemes)) != expected:
            raise DatasetError(
                f"{source_plans_file}: the FDA source was preprocessed at spacing {source.spacing} with "
                f"{source.normalization_schemes}, the model expects {config.spacing} with {config.normalization_schemes}; "
                "preprocess the source with the model's plans")
    return cache


def _read_descriptors(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["version"]) != DESCRIPTOR_VERSION:
                return {}
            return {str(case): (row, str(site)) for case, row, site in
                    zip(stored["case_ids"], stored["descriptors"], stored["sites"])}
    except (OSError, ValueError, KeyError) as error:
        log.warning("%s: unreadable (%s); recomputing the FDA descriptors", path, error)
        return {}


def _write_descriptors(path: Path, stored: dict[str, tuple[np.ndarray, str]]) -> None:
    cases = sorted(stored)
    try:
        with atomic_path(path, suffix=".npz") as temporary:
            np.savez(temporary, version=np.array(DESCRIPTOR_VERSION), case_ids=np.array(cases),
                     descriptors=np.stack([stored[case][0] for case in cases]),
                     sites=np.array([stored[case][1] for case in cases]))
    except OSError as error:  # a read-only source still works, only slower next time
        log.warning("%s: cannot store the FDA descriptors (%s); they are recomputed next time", path, error)
