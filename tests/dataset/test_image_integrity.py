"""Truncated and corrupt image files are refused, naming the file, wherever images are read."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_auto.dataset.image_io import ImageGeometry, read_image_file, read_segmentation, write_image
from medseg_auto.errors import ImageReadError


def _volume(tmp_path, name: str):
    geometry = ImageGeometry(spacing=(1.0, 1.0, 1.0), dimension=3, file_ending=name[name.index("."):])
    image = np.random.default_rng(0).random((35, 51, 35)).astype(np.float32) * 100
    path = tmp_path / name
    write_image(image, geometry, path)
    return path


def test_truncated_nii_gz_is_refused_not_zero_filled(tmp_path):
    path = _volume(tmp_path, "scan.nii.gz")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match=r"scan\.nii\.gz: truncated compressed file"):
        read_image_file(path)


def test_truncated_uncompressed_nii_is_refused(tmp_path):
    path = _volume(tmp_path, "scan.nii")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match=r"scan\.nii: truncated image"):
        read_image_file(path)


def test_corrupt_gzip_payload_is_refused(tmp_path):
    path = _volume(tmp_path, "scan.nii.gz")
    data = bytearray(path.read_bytes())
    for index in range(len(data) // 2, len(data) // 2 + 64):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"scan\.nii\.gz: (corrupt|truncated)"):
        read_image_file(path)


def test_truncated_label_map_is_refused(tmp_path):
    path = _volume(tmp_path, "label.nii.gz")
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ImageReadError, match="label.nii.gz"):
        read_segmentation(path)


def test_intact_files_still_read(tmp_path):
    for name in ("a.nii.gz", "b.nii", "c.nrrd", "d.mha"):
        array, _ = read_image_file(_volume(tmp_path, name))
        assert array.shape == (1, 35, 51, 35)
