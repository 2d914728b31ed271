"""evaluate_folders, the written files and the ``evaluate`` command, on tiny hand-made folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.dataset_json import DatasetSpec, write_dataset_json
from medseg_auto.dataset.image_io import DUMMY_2D_SPACING, ImageGeometry, write_segmentation
from medseg_auto.errors import GeometryMismatchError
from medseg_auto.evaluation.evaluate import TABLE_COLUMNS, EvaluationError, evaluate_folders
from medseg_auto.evaluation.writing import write_evaluation
from medseg_auto.paths import DataHome

SPACING = (2.0, 1.0, 1.0)
SITES = {"a0": "siteA", "a1": "siteA", "b0": "siteB"}


def _write(folder: Path, case: str, labels: np.ndarray, spacing=SPACING, ending=".nii.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dimension = 2 if ending == ".png" else 3
    path = folder / f"{case}{ending}"
    write_segmentation(labels, ImageGeometry(spacing=spacing, dimension=dimension, file_ending=ending), path)
    return path


def _two_class_reference() -> np.ndarray:
    """(Z, Y, X) = (6, 10, 10): class 1 a 4x4x4 cube, class 2 a 2x2x2 cube."""
    volume = np.zeros((6, 10, 10), dtype=np.int16)
    volume[1:5, 1:5, 1:5] = 1
    volume[2:4, 7:9, 7:9] = 2
    return volume


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """Three cases: a0 perfect; a1 class 1 shifted one slice (z), class 2 missed; b0 has no
    class 2 in its reference but a false-positive class 2 in its prediction."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    reference = _two_class_reference()
    _write(gt, "a0", reference)
    _write(pred, "a0", reference)
    _write(gt, "a1", reference)
    shifted = np.roll(np.where(reference == 1, 1, 0), 1, axis=0).astype(np.int16)
    _write(pred, "a1", shifted)
    _write(gt, "b0", np.where(reference == 1, 1, 0).astype(np.int16))
    _write(pred, "b0", reference)
    return pred, gt


def _row(table, case: str, label: int):
    rows = table[(table["case"] == case) & (table["class"] == label)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_table_one_row_per_case_and_class(folders):
    pred, gt = folders
    result = evaluate_folders(pred, gt, labels=[1, 2], num_processes=2, show_progress=False)
    table = result.table
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert len(table) == 6 and sorted(table["case"].unique()) == ["a0", "a1", "b0"]
    assert _row(table, "a0", 1)["dice"] == 1.0 and _row(table, "a0", 2)["hd95"] == 0.0
    shifted = _row(table, "a1", 1)
    assert shifted["dice"] == pytest.approx(2 * 48 / (2 * 48 + 32))
    assert shifted["hd95"] == pytest.approx(2.0)  # one slice at z spacing 2 mm
    assert shifted["vol_ref_mm"] == pytest.approx(64 * 2.0)
    missed = _row(table, "a1", 2)
    assert missed["dice"] == 0.0 and missed["pred_empty"] and math.isnan(missed["hd95"])
    false_positive = _row(table, "b0", 2)
    assert false_positive["ref_empty"] and false_positive["dice"] == 0.0 and false_positive["fp"] == 8


def test_means_with_and_without_empty_reference(folders):
    pred, gt = folders
    summary = evaluate_folders(pred, gt, labels=[1, 2], num_processes=1, show_progress=False).summary
    dice_1 = (1.0 + 96 / 128 + 1.0) / 3
    assert summary["per_class"]["1"]["dice"] == pytest.approx(dice_1)
    assert summary["per_class"]["2"]["dice"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert summary["per_class_nonempty_reference"]["2"]["dice"] == pytest.approx(0.5)
    assert summary["per_class"]["2"]["num_empty_reference"] == 1
    assert summary["per_class"]["2"]["num_distance_undefined"] == 2
    assert summary["foreground_mean"]["dice"] == pytest.approx((dice_1 + 1 / 3) / 2)
    assert summary["foreground_mean_nonempty_reference"]["dice"] == pytest.approx((dice_1 + 0.5) / 2)
    assert summary["per_class"]["2"]["hd95"] == 0.0  # only a0 has defined distances
    assert "per_site" not in summary


def test_per_site_tables(folders):
    pred, gt = folders
    result = evaluate_folders(pred, gt, labels=[1, 2], sites=SITES, num_processes=1, show_progress=False)
    assert list(result.table["site"]) == ["siteA"] * 4 + ["siteB"] * 2
    per_site = result.summary["per_site"]
    assert set(per_site) == {"siteA", "siteB"}
    assert per_site["siteA"]["num_cases"] == 2 and per_site["siteB"]["num_cases"] == 1
    assert per_site["siteA"]["per_class"]["2"]["dice"] == pytest.approx(0.5)
    assert per_site["siteB"]["per_class"]["1"]["dice"] == 1.0
    assert per_site["siteB"]["per_class_nonempty_reference"]["2"]["num_cases"] == 0


def test_worst_and_best_deciles(tmp_path):
    """Case i loses its first i of 20 voxels: Dice falls with i, so case_19 is worst."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    reference = np.zeros((1, 3, 22), dtype=np.int16)
    reference[0, 1, 1:21] = 1
    for index in range(20):
        prediction = reference.copy()
        prediction[0, 1, 1:1 + index] = 0
        _write(gt, f"case_{index:02d}", reference, spacing=(1.0, 1.0, 1.0))
        _write(pred, f"case_{index:02d}", prediction, spacing=(1.0, 1.0, 1.0))
    summary = evaluate_folders(pred, gt, labels=[1], num_processes=1, show_progress=False).summary
    assert [c["case"] for c in summary["worst_cases"]] == ["case_19", "case_18"]
    assert [c["case"] for c in summary["best_cases"]] == ["case_00", "case_01"]
    assert summary["worst_cases"][0]["foreground_dice"] == pytest.approx(2 * 1 / 21)


def test_at_least_one_worst_and_best_case(folders):
    pred, gt = folders
    summary = evaluate_folders(pred, gt, labels=[1, 2], num_processes=1, show_progress=False).summary
    assert [c["case"] for c in summary["worst_cases"]] == ["a1"]
    assert [c["case"] for c in summary["best_cases"]] == ["a0"]


def test_missing_prediction_names_the_case(folders):
    pred, gt = folders
    (pred / "a1.nii.gz").unlink()
    with pytest.raises(EvaluationError, match=r"1 of 3 case\(s\) have no prediction: a1"):
        evaluate_folders(pred, gt, labels=[1], num_processes=1, show_progress=False)


def test_shape_mismatch_names_both_files(folders):
    pred, gt = folders
    _write(pred, "b0", np.zeros((6, 10, 11), dtype=np.int16))
    with pytest.raises(GeometryMismatchError) as caught:
        evaluate_folders(pred, gt, labels=[1], num_processes=1, show_progress=False)
    assert str(pred / "b0.nii.gz") in str(caught.value) and str(gt / "b0.nii.gz") in str(caught.value)


def test_prediction_may_use_another_ending_and_labels_are_inferred(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    one = np.zeros((4, 6, 6), dtype=np.int16)
    one[1:3, 1:3, 1:3] = 1
    three = np.where(one == 1, 3, 0).astype(np.int16)
    _write(gt, "x", one)
    _write(pred, "x", one, ending=".nrrd")
    _write(gt, "y", three)
    _write(pred, "y", three)
    (pred / "notes.txt").write_text("not an image")
    result = evaluate_folders(pred, gt, num_processes=1, show_progress=False)
    assert sorted(result.summary["labels"]) == ["1", "3"]
    assert _row(result.table, "x", 1)["dice"] == 1.0
    assert math.isnan(_row(result.table, "x", 3)["dice"])  # absent from case x: both empty
    assert result.summary["per_class"]["3"]["dice"] == 1.0


def test_png_labels_use_pixel_spacing(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    reference = np.zeros((1, 16, 16), dtype=np.uint8)
    reference[0, 4:8, 4:8] = 1
    geometry_spacing = (DUMMY_2D_SPACING, 1.0, 1.0)
    _write(gt, "img", reference, spacing=geometry_spacing, ending=".png")
    _write(pred, "img", np.roll(reference, 2, axis=1), spacing=geometry_spacing, ending=".png")
    row = _row(evaluate_folders(pred, gt, labels=[1], num_processes=1, show_progress=False).table, "img", 1)
    assert row["dice"] == pytest.approx(0.5)
    assert row["hd95"] == pytest.approx(2.0)
    assert row["vol_ref_mm"] == pytest.approx(16.0)


def test_written_files_are_strict_json_and_markdown(folders, tmp_path):
    pred, gt = folders
    result = evaluate_folders(pred, gt, labels=[1, 2], sites=SITES, num_processes=1, show_progress=False)
    paths = write_evaluation(result, tmp_path / "out")
    summary = json.loads(paths["summary.json"].read_text(), parse_constant=_refuse)
    assert summary["per_class"]["1"]["dice"] == pytest.approx(result.summary["per_class"]["1"]["dice"])
    lines = paths["metrics.csv"].read_text().splitlines()
    assert lines[0] == ",".join(TABLE_COLUMNS) and len(lines) == 7
    markdown = paths["summary.md"].read_text()
    assert "| siteA | 2 |" in markdown and "Worst cases" in markdown
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_cli_end_to_end(tmp_path, folders):
    pred, gt = folders
    home = DataHome(tmp_path / "home")
    folder = home.new_dataset_folder("Cubes", 601)
    write_dataset_json(folder, {"0": "CT"}, {"background": 0, "big": 1, "small": 2}, 3, ".nii.gz", sites=SITES)
    out = tmp_path / "report"
    argv = ["evaluate", str(pred), str(gt), "-d", "Cubes", "--sites", "-o", str(out),
            "-np", "1", "--home", str(home.root), "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == {"1": "big", "2": "small"} and set(summary["per_site"]) == {"siteA", "siteB"}
    assert (out / "metrics.csv").is_file() and (out / "summary.md").is_file()
    assert "foreground mean Dice" in next((out / "logs").glob("evaluate_*.txt")).read_text()

    assert main(["evaluate", str(pred), str(gt), "-np", "1", "--no-progress"]) == 0  # labels inferred, OUT = PRED
    assert json.loads((pred / "summary.json").read_text())["labels"] == {"1": "label_1", "2": "label_2"}


def test_cli_sites_error_when_dataset_has_none(tmp_path, folders, capsys):
    pred, gt = folders
    home = DataHome(tmp_path / "home")
    write_dataset_json(home.new_dataset_folder("NoSites", 602), {"0": "CT"}, {"background": 0, "a": 1}, 3, ".nii.gz")
    assert DatasetSpec.load(home.raw_dataset("NoSites")).sites == {}
    argv = ["evaluate", str(pred), str(gt), "-d", "NoSites", "--sites", "--home", str(home.root), "-np", "1"]
    assert main(argv) == 2
    assert "no 'sites' key" in capsys.readouterr().err


def _refuse(constant: str):
    raise AssertionError(f"summary.json holds non-standard JSON constant {constant}")


def test_in_memory_rows_give_the_folder_summary(folders):
    """The training's final validation path: evaluate_arrays + tabulate + summarise."""
    from medseg_auto.dataset.image_io import read_segmentation
    from medseg_auto.evaluation.evaluate import summarise, tabulate
    from medseg_auto.evaluation.metrics import evaluate_arrays

    pred, gt = folders
    rows_by_case = {}
    for case in ("a0", "a1", "b0"):
        reference, geometry = read_segmentation(gt / f"{case}.nii.gz")
        prediction, _ = read_segmentation(pred / f"{case}.nii.gz")
        rows_by_case[case] = evaluate_arrays(prediction, reference, geometry.spacing, [1, 2], geometry.is_2d)
    summary = summarise(tabulate(rows_by_case, SITES), [1, 2], per_site=True)
    expected = evaluate_folders(pred, gt, labels=[1, 2], sites=SITES, num_processes=1, show_progress=False).summary
    assert json.dumps(summary, sort_keys=True) == json.dumps(expected, sort_keys=True)
