"""The bad-input matrix, end to end through the real command line (``python -m medseg_auto``).

Each row gives a command one bad input or fault and asserts what a careful user needs: exit
code 2, a single line naming the file (or field) and the problem, no traceback, the raw input
byte for byte unchanged, and nothing left in the output that a rerun would take as done.
One tiny 3D model (trained for one iteration) serves every prediction row.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medseg_auto.cli.main import main
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home

REPOSITORY = Path(__file__).resolve().parents[2]
DATASET = "Rel3d"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "medseg_auto", *args, "--no-progress"], capture_output=True,
                          text=True, env=environment, timeout=timeout)


def assert_refused(result: subprocess.CompletedProcess, *named: str) -> str:
    """Exit 2, no traceback, and one line holding every string of ``named``; returns that line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if all(text in line for text in named)]
    assert len(lines) >= 1, f"no line names {named}:\n{result.stderr}"
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    """Content hash of every file under ``folder`` (the raw input must not change)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def truncate(path: Path, keep: int = 400) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A home with a tiny 3D two-site dataset, preprocessed, and fold 'all' trained 1 x 1."""
    home = synthetic_home(tmp_path_factory.mktemp("reliability") / "home")
    make_synthetic_dataset(home, DATASET, dimension=3, cases_per_site=2, shape=(8, 24, 24))
    root = str(home.root)
    assert main(["plan_and_preprocess", DATASET, "-c", "3d_fullres", "-np", "1", "--home", root, "--no-progress"]) == 0
    assert main(["train", DATASET, "3d_fullres", "all", "--epochs", "1", "--iters-per-epoch", "1",
                 "--val-iters-per-epoch", "1", "--num-workers", "0", "--device", "cpu", "--seed", "0", "--home", root,
                 "--no-progress"]) == 0
    return home


@pytest.fixture
def raw_images(trained) -> Path:
    return trained.raw_dataset(DATASET) / "imagesTr"


def _scans(raw_images: Path, folder: Path, count: int = 2) -> Path:
    """Plain-named copies (``case.nii.gz``) of ``count`` raw images in ``folder``."""
    folder.mkdir(parents=True)
    for source in sorted(raw_images.glob("*_0000.nii.gz"))[:count]:
        shutil.copyfile(source, folder / source.name.replace("_0000", ""))
    return folder


def _task(raw: Path, folder: Path, names: dict[str, str]) -> Path:
    """A plain import-msd task: ``names`` maps new file stems to raw case ids."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for stem, case in names.items():
        shutil.copyfile(raw / "imagesTr" / f"{case}_0000.nii.gz", folder / "images" / f"{stem}.nii.gz")
        shutil.copyfile(raw / "labelsTr" / f"{case}.nii.gz", folder / "labels" / f"{stem}.nii.gz")
    return folder


def _predict(trained, input_path: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("predict", "-i", str(input_path), "-o", str(output), "-d", DATASET, "-c", "3d_fullres",
                   "--home", str(trained.root), "--device", "cpu", *extra)


# --- data that used to pass silently ------------------------------------------------------------

def test_import_msd_refuses_a_truncated_volume_and_leaves_no_dataset(trained, tmp_path):
    task = _task(trained.raw_dataset(DATASET), tmp_path / "task", {"a": "siteA_000", "b": "siteA_001"})
    truncate(task / "images" / "b.nii.gz")
    before = digest(task)
    home = tmp_path / "home"
    assert_refused(run_cli("import-msd", str(task), "--name", "Trunc", "-np", "1", "--home", str(home)),
                   "b.nii.gz", "truncated")
    assert digest(task) == before
    assert not (home / "raw").is_dir() or not list((home / "raw").iterdir())


def test_import_msd_refuses_case_id_collisions(trained, tmp_path):
    task = _task(trained.raw_dataset(DATASET), tmp_path / "task",
                 {"fall": "siteA_000", "fall_ü": "siteA_001", "fall_日本": "siteB_000"})
    home = tmp_path / "home"
    assert_refused(run_cli("import-msd", str(task), "--name", "Clash", "-np", "1", "--home", str(home)),
                   "both become case 'fall'")
    assert not (home / "raw").is_dir() or not list((home / "raw").iterdir())


def test_import_msd_refuses_a_non_utf8_file_name(trained, tmp_path):
    task = _task(trained.raw_dataset(DATASET), tmp_path / "task", {"good": "siteA_000"})
    for sub in ("images", "labels"):
        bad = os.fsdecode(os.fsencode(task / sub) + b"/bad_\xff.nii.gz")
        shutil.copyfile(task / sub / "good.nii.gz", bad)
    home = tmp_path / "home"
    assert_refused(run_cli("import-msd", str(task), "--name", "Bytes", "-np", "1", "--home", str(home)),
                   "not valid UTF-8")
    assert not (home / "raw").is_dir() or not list((home / "raw").iterdir())


def test_verify_and_plan_name_a_truncated_image(trained, tmp_path):
    home = synthetic_home(tmp_path / "home")
    shutil.copytree(trained.raw, home.raw)
    image = home.raw_dataset(DATASET) / "imagesTr" / "siteB_001_0000.nii.gz"
    truncate(image, keep=2000)
    before = digest(home.raw)
    assert_refused(run_cli("verify", DATASET, "-np", "1", "--home", str(home.root)), "siteB_001_0000.nii.gz", "truncated")
    assert_refused(run_cli("plan_and_preprocess", DATASET, "-c", "3d_fullres", "-np", "1", "--home", str(home.root)),
                   "siteB_001_0000.nii.gz", "truncated")
    assert digest(home.raw) == before  # verify writes its report into preprocessed/, never into raw/
    assert not list(home.preprocessed.rglob("siteB_001*"))


def test_edited_plans_are_refused_naming_the_field(trained, tmp_path):
    preprocessed = trained.preprocessed_dataset(DATASET)
    plans = json.loads((preprocessed / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"][0] = 0
    (preprocessed / "plans_bad.json").write_text(json.dumps(plans))
    try:
        assert_refused(run_cli("train", DATASET, "3d_fullres", "0", "-p", "plans_bad", "--device", "cpu",
                               "--home", str(trained.root)), "plans_bad.json", "patch_size[0]")
    finally:
        (preprocessed / "plans_bad.json").unlink()


# --- inputs and outputs never destroyed ---------------------------------------------------------

def test_predict_into_its_own_input_folder_is_refused(trained, raw_images, tmp_path):
    scans = _scans(raw_images, tmp_path / "scans")
    before = digest(scans)
    assert_refused(_predict(trained, scans, scans, "--overwrite"), "output folder is the input folder")
    assert digest(scans) == before


def test_predict_names_a_truncated_input_and_leaves_nothing_done(trained, raw_images, tmp_path):
    scans = _scans(raw_images, tmp_path / "scans")
    broken = sorted(scans.iterdir())[0]
    truncate(broken)
    before = digest(scans)
    output = tmp_path / "out"
    assert_refused(_predict(trained, scans, output, "--no-ood"), broken.name, "truncated")
    assert digest(scans) == before
    assert not (output / broken.name).exists()
    assert not (output / ".medseg_auto" / "done" / f"{broken.name[:-7]}.json").exists()


def test_train_refuses_zero_epochs_and_keeps_the_finished_fold(trained):
    fold = trained.results_dataset(DATASET) / "Base__plans__3d_fullres" / "fold_all"
    before = digest(fold)
    assert_refused(run_cli("train", DATASET, "3d_fullres", "all", "--epochs", "0", "--device", "cpu",
                           "--home", str(trained.root)), "--epochs 0")
    assert digest(fold) == before


# --- failures that were tracebacks or hangs -----------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(trained, raw_images, tmp_path):
    output = tmp_path / "out"
    assert_refused(_predict(trained, _scans(raw_images, tmp_path / "scans", 1), output, "--device", "cuda"),
                   "--device cuda")
    assert not (output / "logs").exists()


def test_predict_refuses_a_2d_image_for_a_3d_model(trained, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24), dtype=np.uint8)).save(scans / "photo.png")
    output = tmp_path / "out"
    assert_refused(_predict(trained, scans, output, "--no-ood"), "photo.png", "2D image")
    assert not list(output.glob("*.png"))


def test_small_fold_warns_once_about_its_ood_reference(trained, raw_images, tmp_path):
    result = _predict(trained, _scans(raw_images, tmp_path / "scans", 1), tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stderr.splitlines() if "OOD reference" in line]) == 1
