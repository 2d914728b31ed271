"""evaluate: -pred/-ref named folders, detection of swapped folders, dataset-name suggestions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.image_io import ImageGeometry, write_segmentation
from medseg_auto.errors import DatasetError
from medseg_auto.paths import DataHome

GEOMETRY = ImageGeometry(spacing=(1.0, 1.0, 1.0), dimension=3, file_ending=".nii.gz")


def _label_map(two_classes: bool) -> np.ndarray:
    volume = np.zeros((4, 8, 8), dtype=np.int16)
    volume[1:3, 1:4, 1:4] = 1
    if two_classes:
        volume[1:3, 5:7, 5:7] = 2
    return volume


@pytest.fixture
def labels_and_validation(tmp_path) -> tuple[Path, Path]:
    """A raw dataset's labelsTr (4 cases, classes 1 and 2) and one fold's validation output
    (2 of the cases; the model missed class 2), with predict's summary.json."""
    labels, validation = tmp_path / "Dataset001_X" / "labelsTr", tmp_path / "fold_0" / "validation"
    labels.mkdir(parents=True)
    validation.mkdir(parents=True)
    (labels.parent / "dataset.json").write_text("{}")
    for case in ("c0", "c1", "c2", "c3"):
        write_segmentation(_label_map(True), GEOMETRY, labels / f"{case}.nii.gz")
    for case in ("c0", "c1"):
        write_segmentation(_label_map(False), GEOMETRY, validation / f"{case}.nii.gz")
    return labels, validation


def test_swapped_folders_with_predicted_only_fail(labels_and_validation, tmp_path, capsys) -> None:
    labels, validation = labels_and_validation
    argv = ["evaluate", str(labels), str(validation), "--predicted-only", "-o", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "swapped" in err and "-pred" in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_swap_detected_from_case_counts_and_labels(labels_and_validation, tmp_path, capsys) -> None:
    labels, validation = labels_and_validation
    plain_labels = tmp_path / "all_labels"
    labels.rename(plain_labels)  # no labelsTr/dataset.json marker: only cases and labels tell
    assert main(["evaluate", str(plain_labels), str(validation), "-o", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "fewer or other labels" in capsys.readouterr().err


def test_right_order_and_named_roles_work(labels_and_validation, tmp_path) -> None:
    labels, validation = labels_and_validation
    assert main(["evaluate", str(validation), str(labels), "--predicted-only", "-o", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    assert main(["evaluate", "-ref", str(labels), "-pred", str(validation), "--chill", "-o", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert first["foreground_mean"] == second["foreground_mean"]


def test_named_and_positional_mixed_is_refused(labels_and_validation, capsys) -> None:
    labels, validation = labels_and_validation
    assert main(["evaluate", str(validation), "-ref", str(labels), "--no-progress"]) == 2


def test_wrong_dataset_name_suggests_closest(tmp_path) -> None:
    home = DataHome(tmp_path)
    (home.raw / "Dataset004_Hippocampus").mkdir(parents=True)
    (home.raw / "Dataset501_BreastUS").mkdir(parents=True)
    with pytest.raises(DatasetError, match="Did you mean 'Hippocampus'"):
        home.find_dataset("Hipocampus")
    with pytest.raises(DatasetError) as error:
        home.find_dataset("Prostate")
    assert "Did you mean" not in str(error.value)
