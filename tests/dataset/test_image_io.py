"""Round trips through image_io keep pixels and geometry; bad files raise errors naming them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from medseg_auto.dataset.image_io import (
    DUMMY_2D_SPACING, ImageGeometry, check_same_geometry, read_case_images, read_image_file, read_segmentation,
    write_image, write_segmentation,
)
from medseg_auto.errors import GeometryMismatchError, ImageReadError


def _rotated_geometry() -> ImageGeometry:
    angle = math.radians(30)
    c, s = math.cos(angle), math.sin(angle)
    return ImageGeometry(
        spacing=(3.0, 0.7, 1.3), origin=(12.5, -40.25, 7.0),
        direction=(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0), dimension=3, file_ending=".nii.gz",
    )


def test_nifti_round_trip_keeps_anisotropic_spacing_origin_and_direction(tmp_path):
    geometry = _rotated_geometry()
    image = np.random.default_rng(0).normal(size=(5, 7, 9)).astype(np.float32)
    write_image(image, geometry, tmp_path / "x.nii.gz")
    array, read_geometry = read_image_file(tmp_path / "x.nii.gz")
    assert array.shape == (1, 5, 7, 9)
    np.testing.assert_allclose(array[0], image)
    np.testing.assert_allclose(read_geometry.spacing, geometry.spacing, atol=1e-6)
    np.testing.assert_allclose(read_geometry.origin, geometry.origin, atol=1e-6)
    np.testing.assert_allclose(read_geometry.direction, geometry.direction, atol=1e-6)
    assert read_geometry.dimension == 3


def test_nifti_segmentation_round_trip(tmp_path):
    geometry = _rotated_geometry()
    labels = np.zeros((4, 6, 8), dtype=np.int16)
    labels[1:3, 2:4, 3:6] = 2
    write_segmentation(labels, geometry, tmp_path / "seg.nii.gz")
    read_labels, read_geometry = read_segmentation(tmp_path / "seg.nii.gz")
    assert read_labels.dtype == np.int16
    np.testing.assert_array_equal(read_labels, labels)
    check_same_geometry(geometry, read_geometry, "written", "read")


def test_png_grey_round_trip(tmp_path):
    image = np.arange(6 * 10, dtype=np.uint8).reshape(1, 6, 10)
    geometry = ImageGeometry(spacing=(DUMMY_2D_SPACING, 1.0, 1.0), dimension=2, file_ending=".png")
    write_image(image, geometry, tmp_path / "grey.png")
    array, read_geometry = read_image_file(tmp_path / "grey.png")
    assert array.shape == (1, 1, 6, 10)
    np.testing.assert_array_equal(array[0], image)
    assert read_geometry.is_2d and read_geometry.spacing == (DUMMY_2D_SPACING, 1.0, 1.0)


def test_png_rgb_reads_three_channels(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, size=(6, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    array, geometry = read_case_images([tmp_path / "rgb.png"])
    assert array.shape == (3, 1, 6, 10) and array.dtype == np.float32
    np.testing.assert_array_equal(array[:, 0], np.moveaxis(rgb, -1, 0))
    assert geometry.dimension == 2


def test_rgb_mask_refused_naming_file(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(ImageReadError, match="mask.png"):
        read_segmentation(tmp_path / "mask.png")


def test_corrupt_and_missing_files_named(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        read_image_file(tmp_path / "broken.nii.gz")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image_file(tmp_path / "broken.png")
    with pytest.raises(ImageReadError, match="absent.png"):
        read_image_file(tmp_path / "absent.png")


def test_geometry_mismatch_names_second_file():
    first = _rotated_geometry()
    second = ImageGeometry(spacing=(1.0, 0.7, 1.3), origin=first.origin, direction=first.direction)
    with pytest.raises(GeometryMismatchError, match="label.nii.gz: spacing"):
        check_same_geometry(first, second, "image.nii.gz", "label.nii.gz")
