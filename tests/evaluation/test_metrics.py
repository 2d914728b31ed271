"""evaluate_arrays: hand-made masks with answers worked out on paper."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medseg_auto.evaluation.metrics import CLASS_ROW_KEYS, both_empty_row, evaluate_arrays

ANISOTROPIC = (3.0, 0.5, 0.5)  # (z, y, x) mm


def _cube(shape=(12, 12, 12), start=3, size=6, label=1) -> np.ndarray:
    """A ``size``^3 cube of ``label`` at ``start`` in a ``(Z, Y, X)`` int16 volume."""
    volume = np.zeros(shape, dtype=np.int16)
    volume[start:start + size, start:start + size, start:start + size] = label
    return volume


def _only(rows: list[dict]) -> dict:
    assert len(rows) == 1
    return rows[0]


def test_identical_masks_are_perfect():
    row = _only(evaluate_arrays(_cube(), _cube(), ANISOTROPIC, [1], is_2d=False))
    assert set(row) == set(CLASS_ROW_KEYS)
    assert row["dice"] == 1.0 and row["iou"] == 1.0
    assert row["hd95"] == 0.0 and row["asd"] == 0.0
    assert (row["tp"], row["fp"], row["fn"]) == (216, 0, 0)
    assert row["n_ref"] == row["n_pred"] == 216
    assert row["vol_ref_mm"] == pytest.approx(216 * 3.0 * 0.5 * 0.5)
    assert not row["ref_empty"] and not row["pred_empty"]


@pytest.mark.parametrize("axis, expected_mm", [(0, 3.0), (1, 0.5), (2, 0.5)])
def test_one_voxel_shift_gives_the_spacing_of_that_axis(axis, expected_mm):
    """Shifting a 6-voxel cube by one voxel: 5/6 overlap, and the new face lies one voxel
    (``spacing[axis]`` mm) from the old one, on 36 of 152 surface voxels (> 5 %), so HD95 = HD."""
    shifted = np.roll(_cube(), 1, axis=axis)
    row = _only(evaluate_arrays(shifted, _cube(), ANISOTROPIC, [1], is_2d=False))
    assert (row["tp"], row["fp"], row["fn"]) == (180, 36, 36)
    assert row["dice"] == pytest.approx(2 * 180 / (2 * 180 + 72))
    assert row["iou"] == pytest.approx(180 / 252)
    assert row["hd95"] == pytest.approx(expected_mm)
    assert 0 < row["asd"] < expected_mm


def test_disjoint_masks_have_dice_zero_and_finite_distance():
    reference = np.zeros((8, 20, 20), dtype=np.int16)
    prediction = np.zeros_like(reference)
    reference[2:6, 2:6, 2:6] = 1
    prediction[2:6, 2:6, 12:16] = 1  # 6 voxels further along x
    row = _only(evaluate_arrays(prediction, reference, (1.0, 1.0, 2.0), [1], is_2d=False))
    assert row["dice"] == 0.0 and row["iou"] == 0.0 and row["tp"] == 0
    assert row["hd95"] == pytest.approx(2.0 * (15 - 5))  # farthest face to nearest face, x spacing 2
    assert row["asd"] > 2.0 * 6


def test_both_empty_is_nan_without_monai_warnings():
    empty = np.zeros((4, 5, 6), dtype=np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = _only(evaluate_arrays(empty, empty, ANISOTROPIC, [1], is_2d=False))
    assert all(math.isnan(row[key]) for key in ("dice", "iou", "hd95", "asd"))
    assert (row["tp"], row["fp"], row["fn"], row["n_ref"], row["n_pred"]) == (0, 0, 0, 0, 0)
    assert row["ref_empty"] and row["pred_empty"]
    assert _nan_equal(row, both_empty_row(1))


@pytest.mark.parametrize("empty_side", ["reference", "prediction"])
def test_one_side_empty_is_dice_zero_distance_nan(empty_side):
    cube, empty = _cube(), np.zeros((12, 12, 12), dtype=np.int16)
    prediction, reference = (cube, empty) if empty_side == "reference" else (empty, cube)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = _only(evaluate_arrays(prediction, reference, ANISOTROPIC, [1], is_2d=False))
    assert row["dice"] == 0.0 and row["iou"] == 0.0
    assert math.isnan(row["hd95"]) and math.isnan(row["asd"])
    assert row["ref_empty"] == (empty_side == "reference")
    assert row["pred_empty"] == (empty_side == "prediction")


def test_two_dimensional_ignores_the_dummy_axis():
    """A 5x5 square shifted one pixel along x: HD95 is one x-spacing, never the dummy 999."""
    reference = np.zeros((1, 20, 20), dtype=np.int16)
    reference[0, 5:10, 5:10] = 2
    prediction = np.roll(reference, 1, axis=2)
    row = _only(evaluate_arrays(prediction, reference, (999.0, 1.0, 1.0), [2], is_2d=True))
    assert row["class"] == 2
    assert row["dice"] == pytest.approx(0.8)
    assert row["hd95"] == pytest.approx(1.0)
    assert row["asd"] == pytest.approx(0.5)  # 8 of 16 edge pixels per side are 1 px off
    row = _only(evaluate_arrays(prediction, reference, (999.0, 0.5, 2.0), [2], is_2d=True))
    assert row["hd95"] == pytest.approx(2.0)
    assert row["vol_ref_mm"] == pytest.approx(25 * 0.5 * 2.0)  # an area, mm^2


def test_several_labels_each_scored_and_background_skipped():
    reference = _cube(label=1)
    reference[0:2, 0:2, 0:2] = 2
    prediction = _cube(label=1)
    rows = evaluate_arrays(prediction, reference, (1.0, 1.0, 1.0), [0, 1, 2, 3], is_2d=False)
    assert [row["class"] for row in rows] == [1, 2, 3]
    assert rows[0]["dice"] == 1.0
    assert rows[1]["dice"] == 0.0 and rows[1]["fn"] == 8 and rows[1]["pred_empty"]
    assert math.isnan(rows[2]["dice"])


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        evaluate_arrays(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), (1, 1, 1), [1], is_2d=False)


def _nan_equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(
        (isinstance(a, float) and math.isnan(a) and math.isnan(b)) or a == b
        for a, b in ((first[k], second[k]) for k in first)
    )
