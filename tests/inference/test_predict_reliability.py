"""predict never writes over its inputs, never publishes or trusts a damaged output, and fails
with one line (exit 2) on a full disk, a read-only folder or a missing GPU."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from medseg_auto.cli.main import main
from medseg_auto.inference import predict as predict_module


def _inputs(home, tmp_path, count=2) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for source in sorted((home.raw_dataset("Syn2d") / "imagesTr").glob("*.png"))[:count]:
        shutil.copyfile(source, folder / source.name.replace("_0000", ""))  # plain names: case.png
    return folder


def _predict(home, input_path, output, *extra) -> int:
    return main(["predict", "-i", str(input_path), "-o", str(output), "-d", "Syn2d", "-c", "2d", "--home",
                 str(home.root), "--no-progress", "--no-ood", *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_output_folder_equal_to_input_folder_is_refused(trained_syn2d_home, tmp_path, capsys):
    scans = _inputs(trained_syn2d_home, tmp_path)
    before = _snapshot(scans)
    for extra in ((), ("--overwrite",)):
        assert _predict(trained_syn2d_home, scans, scans, *extra) == 2
        assert "output folder is the input folder" in _one_error_line(capsys)
    assert _snapshot(scans) == before and not (scans / "logs").exists()


def test_output_folder_of_a_single_input_file_is_refused(trained_syn2d_home, tmp_path, capsys):
    scans = _inputs(trained_syn2d_home, tmp_path, count=1)
    scan = next(scans.iterdir())
    before = scan.read_bytes()
    assert _predict(trained_syn2d_home, scan, scans, "--overwrite") == 2
    assert str(scans) in _one_error_line(capsys)
    assert scan.read_bytes() == before


def test_full_disk_publishes_no_empty_file_and_stops_with_one_line(trained_syn2d_home, tmp_path, capsys, monkeypatch):
    """SimpleITK and Pillow leave an empty file on ENOSPC without raising: simulated by a save
    that writes nothing (the export workers are forked, so they see the patch)."""
    from PIL import Image

    scans = _inputs(trained_syn2d_home, tmp_path)
    output = tmp_path / "out"
    monkeypatch.setattr(Image.Image, "save", lambda self, path, *a, **k: Path(path).write_bytes(b""))
    assert _predict(trained_syn2d_home, scans, output) == 2
    line = _one_error_line(capsys)
    assert "written file is empty" in line and "Traceback" not in line
    assert not list(output.glob("*.png")) and not list(output.glob(".tmp-*"))


def test_os_error_becomes_one_line_in_every_command(trained_syn2d_home, tmp_path, capsys, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.png"))

    monkeypatch.setattr(predict_module, "predict_folder", no_space)
    assert _predict(trained_syn2d_home, _inputs(trained_syn2d_home, tmp_path), tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert "x.png: No space left on device" in line


def test_disk_full_in_an_export_stops_the_run():
    from medseg_auto.errors import ImageWriteError

    future: Future = Future()
    future.set_exception(ImageWriteError("out/a.png: written file is empty (disk full?)"))
    with pytest.raises(ImageWriteError):
        predict_module._record_export("a", future, predict_module.PredictionReport())


def test_read_only_output_folder_is_one_line(trained_syn2d_home, tmp_path, capsys, monkeypatch):
    output = tmp_path / "readonly"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == output:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert _predict(trained_syn2d_home, _inputs(trained_syn2d_home, tmp_path), output) == 2
    assert "cannot write to the output folder (Read-only file system)" in _one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line_and_leaves_no_logs(trained_syn2d_home, tmp_path, capsys):
    output = tmp_path / "out"
    assert _predict(trained_syn2d_home, _inputs(trained_syn2d_home, tmp_path), output, "--device", "cuda") == 2
    assert "--device cuda" in _one_error_line(capsys)
    assert not (output / "logs").exists()
    root = str(trained_syn2d_home.root)
    assert main(["train", "Syn2d", "2d", "0", "--epochs", "1", "--home", root, "--device", "cuda", "--no-progress"]) == 2
    assert "--device cuda" in _one_error_line(capsys)


def test_damaged_output_is_predicted_again_and_stale_temporaries_are_cleaned(trained_syn2d_home, tmp_path):
    scans = _inputs(trained_syn2d_home, tmp_path)
    output = tmp_path / "out"
    assert _predict(trained_syn2d_home, scans, output) == 0
    first = sorted(output.glob("*.png"))[0]
    first.write_bytes(first.read_bytes()[:40])  # damaged after it was recorded as done
    stale = output / ".tmp-abc.png"
    stale.write_bytes(b"")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert _predict(trained_syn2d_home, scans, output) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["predicted"] == [first.stem] and not stale.exists()


def test_case_locked_by_another_process_is_left_to_it(trained_syn2d_home, tmp_path):
    from medseg_auto.inference.output_guard import CaseLedger

    scans = _inputs(trained_syn2d_home, tmp_path)
    output = tmp_path / "out"
    other = CaseLedger(output)
    locked = sorted(p.stem for p in scans.iterdir())[0]
    assert other.claim(locked)
    try:
        assert _predict(trained_syn2d_home, scans, output) == 0
    finally:
        other.release_all()
    assert not (output / f"{locked}.png").exists()
    assert len(list(output.glob("*.png"))) == 1


def test_2d_image_refused_for_a_3d_model_and_3d_volume_on_a_2d_model_logged(caplog, monkeypatch):
    import logging
    from types import SimpleNamespace

    from medseg_auto.errors import ImageReadError
    from medseg_auto.inference.input_checks import check_case_dimension

    with pytest.raises(ImageReadError, match="photo.png: a 2D image, but configuration 3d_fullres is a 3D model"):
        check_case_dimension("photo", Path("photo.png"), 2, SimpleNamespace(is_2d=False, name="3d_fullres"))
    monkeypatch.setattr(logging.getLogger("medseg_auto"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="medseg_auto"):
        check_case_dimension("vol", Path("vol.nii.gz"), 3, SimpleNamespace(is_2d=True, name="2d"))
    assert "predicted slice by slice" in caplog.text


@pytest.mark.parametrize("option", [("--step", "0"), ("--step", "1.5"), ("-np", "0"), ("--ood-percentile", "120")])
def test_meaningless_prediction_numbers_are_one_line(trained_syn2d_home, tmp_path, capsys, option):
    output = tmp_path / "out"
    assert _predict(trained_syn2d_home, _inputs(trained_syn2d_home, tmp_path), output, *option) == 2
    assert _one_error_line(capsys).startswith(f"medseg-auto predict: error: {option[0]} {option[1]}")
    assert not output.exists()


def test_a_missing_model_folder_is_one_line_and_leaves_no_logs(tmp_path, capsys):
    from medseg_auto.cli.main import main

    (tmp_path / "in").mkdir()
    code = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "no_model"),
                 "--home", str(tmp_path / "home")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "no_model" in err and "model folder not found" in err
    assert not (tmp_path / "out" / "logs").exists()
