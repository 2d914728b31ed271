"""import-msd refuses what it used to take silently: truncated volumes, names that collide once
cleaned, non-UTF-8 names (a C++ abort before); palette PNG images become their colours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medseg_auto.dataset.image_io import read_image_file, read_segmentation
from medseg_auto.dataset.importers import import_msd
from medseg_auto.dataset.synthetic import synthetic_home
from medseg_auto.errors import DatasetError

REPOSITORY = Path(__file__).resolve().parents[2]
QUIET = {"num_processes": 1, "show_progress": False}


def _volume(seed: int, labels: bool = False) -> sitk.Image:
    rng = np.random.default_rng(seed)
    shape = (6, 8, 10)
    array = rng.integers(0, 2, size=shape).astype(np.uint8) if labels else rng.normal(size=shape).astype(np.float32)
    return sitk.GetImageFromArray(array)


def _plain_task(root: Path, names) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for index, name in enumerate(names):
        sitk.WriteImage(_volume(index), str(root / "images" / f"{name}.nii.gz"))
        sitk.WriteImage(_volume(index, labels=True), str(root / "labels" / f"{name}.nii.gz"))
    return root


@pytest.fixture
def home(tmp_path):
    return synthetic_home(tmp_path / "home")


def test_truncated_volume_refused_by_import_msd(home, tmp_path):
    task = _plain_task(tmp_path / "task", ["a", "b"])
    image = task / "images" / "b.nii.gz"
    image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"images/b.nii.gz: truncated"):
        import_msd(home, task, "Trunc", **QUIET)


def test_names_that_clean_to_the_same_case_id_are_refused(home, tmp_path):
    task = _plain_task(tmp_path / "task", ["fall", "fall_ü", "fall_日本"])
    with pytest.raises(DatasetError, match="both become case 'fall'"):
        import_msd(home, task, "Collide", **QUIET)


def test_non_utf8_file_name_refused_without_half_made_dataset(tmp_path):
    task = _plain_task(tmp_path / "task", ["good"])
    bad = b"bad_\xff"
    images, labels = (os.fsencode(task / sub) for sub in ("images", "labels"))
    (Path(os.fsdecode(images + b"/" + bad + b".nii.gz"))).write_bytes((task / "images" / "good.nii.gz").read_bytes())
    (Path(os.fsdecode(labels + b"/" + bad + b".nii.gz"))).write_bytes((task / "labels" / "good.nii.gz").read_bytes())
    home = tmp_path / "home"
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "medseg_auto", "import-msd", str(task), "--name", "Bad", "-np", "1", "--home",
         str(home), "--no-progress"], capture_output=True, text=True, env=environment, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "not valid UTF-8" in result.stderr and "Traceback" not in result.stderr
    assert not (home / "raw").is_dir() or not list((home / "raw").iterdir())


def test_palette_png_image_becomes_grey_values_but_palette_mask_keeps_indices(tmp_path):
    grey = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    palette_image = Image.fromarray(grey).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    assert palette_image.mode == "P"
    palette_image.save(tmp_path / "image.png")
    mask = Image.fromarray((grey > 120).astype(np.uint8), mode="L").convert("P")
    mask.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    mask.save(tmp_path / "mask.png")
    array, _ = read_image_file(tmp_path / "image.png")
    assert array.shape == (1, 1, 12, 20)
    assert np.corrcoef(array.ravel().astype(float), grey.ravel().astype(float))[0, 1] > 0.99
    labels, _ = read_segmentation(tmp_path / "mask.png")
    assert set(np.unique(labels)) == {0, 1}


def test_colour_palette_png_image_becomes_rgb(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:4, :, 0] = 200
    rgb[4:, :, 2] = 150
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "image.png")
    array, _ = read_image_file(tmp_path / "image.png")
    assert array.shape == (3, 1, 8, 8)
    assert array[0, 0, 0, 0] == 200 and array[2, 0, 7, 0] == 150
