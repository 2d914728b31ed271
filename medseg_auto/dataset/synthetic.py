"""Synthetic two-site datasets for the demo and the tests.

Why synthetic: the demo must run on a fresh machine without downloads, and tests need tiny
data with known answers. Each case is a smooth background with one or two bright blobs
(label 1 = blob, label 2 = its core in 3D); the two "sites" differ in intensity scale, offset
and noise, like two scanners, so domain methods have something to bridge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg_auto.dataset.dataset_json import DatasetSpec, write_dataset_json
from medseg_auto.dataset.image_io import ImageGeometry, write_image, write_segmentation
from medseg_auto.paths import DataHome

SITE_STYLES = {
    "siteA": {"scale": 100.0, "offset": 20.0, "noise": 5.0},
    "siteB": {"scale": 60.0, "offset": 60.0, "noise": 15.0},
}


# Blob radius as a fraction of the shortest image side (drawn uniformly), and the core's
# radius as a fraction of the blob's: the defaults every test's synthetic data uses.
BLOB_RADIUS_FRACTION = (0.15, 0.25)
CORE_FRACTION = 0.5


def make_case(
    shape: tuple[int, ...], rng: np.random.Generator, site: str, with_core: bool,
    radius_fraction: tuple[float, float] = BLOB_RADIUS_FRACTION, core_fraction: float = CORE_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """One image ``shape`` (2D or 3D) and its label map with one blob (and core if asked).

    The blob's radius is ``radius_fraction`` (low, high) of the shortest side; the core's is
    ``core_fraction`` of the blob's.
    """
    style = SITE_STYLES[site]
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = [rng.uniform(0.3 * n, 0.7 * n) for n in shape]
    radius = rng.uniform(*radius_fraction) * min(shape)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    labels = (distance < radius).astype(np.int16)
    if with_core:
        labels[distance < radius * core_fraction] = 2
    background = 0.3 + 0.1 * np.sin(grids[-1] / max(shape[-1], 1) * 3.0)
    intensity = background + 0.7 * (labels > 0) + 0.3 * (labels == 2)
    image = style["offset"] + style["scale"] * intensity + rng.normal(0.0, style["noise"], size=shape)
    return image.astype(np.float32), labels


def make_synthetic_dataset(
    home: DataHome,
    name: str,
    dimension: int = 3,
    cases_per_site: int = 6,
    shape: tuple[int, ...] | None = None,
    seed: int = 0,
    dataset_id: int | None = None,
    radius_fraction: tuple[float, float] = BLOB_RADIUS_FRACTION,
    core_fraction: float = CORE_FRACTION,
) -> DatasetSpec:
    """Write a two-site raw dataset into ``home`` and return its spec.

    3D cases are NIfTI with anisotropic spacing (2.5, 1, 1) so the planner has real decisions
    to make; 2D cases are PNG. Labels: background, ``blob`` and (3D only) ``core``.
    ``radius_fraction`` and ``core_fraction``: the blob's size (see :func:`make_case`).
    """
    rng = np.random.default_rng(seed)
    folder = home.new_dataset_folder(name, dataset_id)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    if dimension == 3:
        shape = shape or (12, 40, 36)
        ending, spacing, labels = ".nii.gz", (2.5, 1.0, 1.0), {"background": 0, "blob": 1, "core": 2}
    else:
        shape = shape or (64, 56)
        ending, spacing, labels = ".png", (999.0, 1.0, 1.0), {"background": 0, "blob": 1}
    sites: dict[str, str] = {}
    for site in SITE_STYLES:
        for index in range(cases_per_site):
            case_id = f"{site}_{index:03d}"
            image, label_map = make_case(shape, rng, site, with_core=(dimension == 3),
                                         radius_fraction=radius_fraction, core_fraction=core_fraction)
            if dimension == 2:
                image = np.clip(image, 0, 255).astype(np.uint8)
                geometry = ImageGeometry(spacing=spacing, dimension=2, file_ending=ending)  # type: ignore[arg-type]
                image_zyx, label_zyx = image[None], label_map[None]
            else:
                geometry = ImageGeometry(
                    spacing=spacing, origin=(10.0, -5.0, 3.0),  # type: ignore[arg-type]
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), dimension=3, file_ending=ending,
                )
                image_zyx, label_zyx = image, label_map
            write_image(image_zyx, geometry, folder / "imagesTr" / f"{case_id}_0000{ending}")
            write_segmentation(label_zyx, geometry, folder / "labelsTr" / f"{case_id}{ending}")
            sites[case_id] = site
    channel = {"0": "MRI"} if dimension == 3 else {"0": "US"}
    return write_dataset_json(folder, channel, labels, len(sites), ending, sites=sites)


def synthetic_home(root: Path) -> DataHome:
    """A data home under ``root`` (helper for tests)."""
    return DataHome(Path(root).resolve())
