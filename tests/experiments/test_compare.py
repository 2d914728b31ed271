"""``medseg-auto compare`` on hand-made per-case tables with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medseg_auto.cli.main import main
from medseg_auto.evaluation.compare import CompareError, compare_runs, load_run, worst_count, write_comparison


def _write_metrics(folder, rows):
    """``rows``: (case, class, dice, iou); the other evaluate columns are filled plausibly."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{"case": c, "site": "s", "class": k, "dice": d, "iou": i, "ref_empty": False,
                           "pred_empty": False} for c, k, d, i in rows])
    frame.to_csv(folder / "metrics.csv", index=False)
    return folder


@pytest.fixture
def runs(tmp_path):
    """Ten cases; A's Dice 0.1..0.55 by case, B = A + 0.01 * (i + 1); IoU = Dice / 2. Plus one
    case without a defined Dice in A and one case only in B (both must be left out)."""
    dice_a = [0.1 + 0.05 * i for i in range(10)]
    dice_b = [d + 0.01 * (i + 1) for i, d in enumerate(dice_a)]
    rows_a = [(f"c{i}", 1, d, d / 2) for i, d in enumerate(dice_a)] + [("empty", 1, np.nan, np.nan)]
    rows_b = [(f"c{i}", 1, d, d / 2) for i, d in enumerate(dice_b)] + [("empty", 1, 0.5, 0.25), ("extra", 1, 0.9, 0.45)]
    return _write_metrics(tmp_path / "A", rows_a), _write_metrics(tmp_path / "B", rows_b), dice_a, dice_b


def test_table1_worst_best_all_with_known_values(runs):
    folder_a, folder_b, dice_a, dice_b = runs
    result, per_case = compare_runs(load_run(folder_a), load_run(folder_b), worst=3)
    assert result["num_paired_cases"] == 10 and result["unpaired_cases"] == {"only_a": 0, "only_b": 2}
    worst, best, everything = (result["table1"][g] for g in ("worst_off", "best_off", "all"))
    assert result["worst_off_cases"] == ["c0", "c1", "c2"] and result["best_off_cases"] == ["c9", "c8", "c7"]
    assert worst["n"] == 3 and worst["dice_a"] == pytest.approx(np.mean(dice_a[:3]))
    assert worst["dice_b"] == pytest.approx(np.mean(dice_b[:3]))
    assert worst["delta_dice"] == pytest.approx(0.02)  # (0.01 + 0.02 + 0.03) / 3
    assert worst["delta_iou"] == pytest.approx(0.01)
    assert best["delta_dice"] == pytest.approx(0.09)  # (0.10 + 0.09 + 0.08) / 3
    assert everything["dice_a"] == pytest.approx(np.mean(dice_a)) and everything["delta_dice"] == pytest.approx(0.055)
    assert result["worst_off_threshold_dice_a"] == pytest.approx(0.2)
    # every difference positive and distinct: exact two-sided p = 2 / 2**10, statistic min(W+, W-) = 0
    assert result["wilcoxon"]["all"]["dice"]["p_value"] == pytest.approx(2 / 2**10)
    assert result["wilcoxon"]["all"]["dice"]["statistic"] == 0.0
    assert result["wilcoxon"]["worst_off"]["dice"]["n"] == 3
    assert list(per_case.loc[per_case["group"] == "worst_off", "case"]) == ["c0", "c1", "c2"]


def test_worst_count_follows_table4_or_the_given_number():
    assert worst_count(10) == 2  # UDIAT 35/163 of 10 = 2.15
    assert worst_count(163) == 35
    assert worst_count(10, proportion_of="US-TNBC") == 7  # 10/15 of 10 = 6.67
    assert worst_count(10, proportion_of="AD") == 1  # 5% of 10 = 0.5 rounds up to 1
    assert worst_count(10, worst=4) == 4 and worst_count(3, worst=10) == 3
    with pytest.raises(CompareError):
        worst_count(10, worst=0)


def test_per_case_score_is_the_mean_over_classes(tmp_path):
    folder = _write_metrics(tmp_path / "M", [("a", 1, 0.2, 0.1), ("a", 2, 0.4, 0.3), ("b", 1, 0.8, 0.6), ("b", 2, np.nan, np.nan)])
    scores = load_run(folder).per_case
    assert scores.loc["a", "dice"] == pytest.approx(0.3) and scores.loc["a", "iou"] == pytest.approx(0.2)
    assert scores.loc["b", "dice"] == pytest.approx(0.8)  # NaN class skipped


def test_identical_runs_have_zero_deltas_and_no_test(runs):
    folder_a, _, _, _ = runs
    result, _ = compare_runs(load_run(folder_a), load_run(folder_a))
    assert result["table1"]["all"]["delta_dice"] == 0.0
    assert result["wilcoxon"]["all"]["dice"]["p_value"] is None


def test_runs_without_shared_cases_are_refused(tmp_path):
    a = _write_metrics(tmp_path / "A", [("x", 1, 0.5, 0.3)])
    b = _write_metrics(tmp_path / "B", [("y", 1, 0.5, 0.3)])
    with pytest.raises(CompareError, match="share no"):
        compare_runs(load_run(a), load_run(b))
    with pytest.raises(CompareError, match="not found"):
        load_run(tmp_path / "nothing")


def test_outputs_with_and_without_l_fd(runs, tmp_path):
    folder_a, folder_b, _, dice_b = runs
    out = tmp_path / "cmp"
    result = write_comparison(load_run(folder_a), load_run(folder_b), out)
    assert result["l_fd_plot"] is None and not (out / "l_fd_vs_dice.png").exists()
    assert "No per-case L_fd" in (out / "comparison.md").read_text()
    # B logged L_fd, decreasing as Dice increases: Spearman rho -1
    pd.DataFrame({"case": [f"c{i}" for i in range(10)], "l_fd": [-float(i) for i in range(10)]}).to_csv(
        folder_b / "per_case_l_fd.csv", index=False)
    result = write_comparison(load_run(folder_a), load_run(folder_b), out)
    assert (out / "l_fd_vs_dice.png").stat().st_size > 0
    (correlation,) = result["l_fd_correlation"].values()
    assert correlation["spearman_rho"] == pytest.approx(-1.0) and correlation["n"] == 10
    stored = json.loads((out / "comparison.json").read_text())
    assert stored["table1"]["worst_off"]["n"] == 2 and "| Worst off | 2 |" in (out / "comparison.md").read_text()


def test_compare_command(runs, tmp_path):
    folder_a, folder_b, _, _ = runs
    assert main(["compare", str(folder_a), str(folder_b / "metrics.csv"), "--worst", "3", "--names", "Base", "FD"]) == 0
    stored = json.loads((folder_b / "compare_vs_A" / "comparison.json").read_text())
    assert stored["run_a"]["name"] == "Base" and stored["worst_off_count"] == 3
    assert main(["compare", str(folder_a), str(tmp_path / "missing")]) == 2
