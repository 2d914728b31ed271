"""Load one training case and check everything the pipeline relies on, naming the file at fault.

Shared by the fingerprint and preprocessing so a bad case fails the same way in both.
"""

from __future__ import annotations

import numpy as np

from medseg_auto.dataset.dataset_json import CaseFiles, DatasetSpec
from medseg_auto.dataset.image_io import (
    ImageGeometry, check_same_geometry, non_finite_in_nifti, read_case_images, read_segmentation,
)
from medseg_auto.errors import DatasetError, GeometryMismatchError, LabelValueError


def load_case_images(image_files, num_channels: int, case_id: str,
                     convert_channels: bool = False) -> tuple[np.ndarray, ImageGeometry]:
    """Read a case's channels; check the channel count and that no value is NaN or infinite.

    ``convert_channels`` (prediction on external data): fit RGB to grey or grey to N channels
    with a logged warning (:func:`~medseg_auto.dataset.channels.fit_channels`) instead of refusing."""
    data, geometry = read_case_images(image_files)
    if convert_channels and data.shape[0] != num_channels:
        from medseg_auto.dataset.channels import fit_channels

        data = fit_channels(data, num_channels, str(image_files[0]))
    if data.shape[0] != num_channels:
        raise DatasetError(
            f"{image_files[0]}: case '{case_id}' has {data.shape[0]} channel(s), dataset.json "
            f"'channel_names' declares {num_channels}"
        )
    if not np.all(np.isfinite(data)):
        raise DatasetError(f"{image_files[0]}: image contains NaN or infinite values")
    for image_file in image_files:
        if non_finite_in_nifti(image_file):
            raise DatasetError(f"{image_file}: image contains NaN or infinite values (replace them, e.g. with 0)")
    return data, geometry


def load_and_check_case(case: CaseFiles, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray, ImageGeometry]:
    """Return ``(data (C,Z,Y,X) float32, seg (1,Z,Y,X) int16, geometry)`` of a labelled case."""
    data, geometry = load_case_images(case.images, spec.num_channels, case.case_id)
    if case.label is None:
        raise DatasetError(f"case '{case.case_id}': no label file")
    seg, label_geometry = read_segmentation(case.label)
    if seg.shape != data.shape[1:]:
        raise GeometryMismatchError(f"{case.label}: label shape {seg.shape} differs from image shape {data.shape[1:]}")
    check_same_geometry(geometry, label_geometry, str(case.images[0]), str(case.label))
    unknown = sorted(set(np.unique(seg).tolist()) - set(spec.label_values))
    if unknown:
        raise LabelValueError(f"{case.label}: label value(s) {unknown} not declared in dataset.json 'labels' {spec.labels}")
    return data, seg[None], geometry
