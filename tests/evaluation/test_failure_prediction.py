"""Failure prediction: AUROC of a per-case score for Dice < 0.5, per site, with flag rates."""

from __future__ import annotations

import pandas as pd
import pytest

from medseg_auto.evaluation.failure_prediction import case_dice, failure_auroc, failure_table, load_cases


def test_auroc_of_a_perfect_a_reversed_and_an_undefined_score():
    dice = [0.9, 0.8, 0.3, 0.1]
    assert failure_auroc([0.1, 0.2, 0.7, 0.9], dice) == 1.0
    assert failure_auroc([0.9, 0.7, 0.2, 0.1], dice) == 0.0
    assert failure_auroc([0.5, 0.5, 0.5, 0.5], dice) == 0.5
    assert failure_auroc([0.1, 0.2], [0.9, 0.8]) is None  # no failure: undefined


def test_case_dice_averages_classes_and_counts_correctly_empty_cases_as_success():
    metrics = pd.DataFrame({"case": ["a", "a", "b", "c"], "class": [1, 2, 1, 1],
                            "dice": [0.2, 0.6, None, 0.0]})
    assert case_dice(metrics).to_dict() == {"a": pytest.approx(0.4), "b": 1.0, "c": 0.0}


def test_failure_table_per_site_with_flag_rates():
    cases = pd.DataFrame({
        "case": list("abcdef"), "site": ["x", "x", "x", "y", "y", "y"], "dice": [0.9, 0.2, 0.8, 0.1, 0.3, 0.7],
        "score": [0.1, 0.9, 0.2, 0.8, 0.7, 0.3], "flagged": [0, 1, 0, 1, 0, 0],
    })
    table = failure_table(cases).set_index("site")
    assert list(table.index) == ["all", "x", "y"]
    assert table.loc["all", "auroc_score"] == 1.0 and table.loc["x", "failures"] == 1
    assert table.loc["y", "failure_rate"] == pytest.approx(0.6667, abs=1e-4)
    assert table.loc["y", "flagged_rate"] == pytest.approx(0.3333, abs=1e-4)


def test_load_cases_joins_predict_scores_with_evaluation_dice(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "eval").mkdir()
    pd.DataFrame({"case_id": ["a", "b"], "ood_score": [1.0, 3.0], "flagged": [0, 1],
                  "soft_dice_deficit": [0.1, 0.8]}).to_csv(tmp_path / "pred" / "ood_scores.csv", index=False)
    pd.DataFrame({"case": ["a", "b"], "site": [None, None], "class": [1, 1], "dice": [0.9, 0.2]}).to_csv(
        tmp_path / "eval" / "metrics.csv", index=False)
    cases = load_cases(tmp_path / "pred", tmp_path / "eval", site="stu")
    assert cases.set_index("case")["dice"].to_dict() == {"a": 0.9, "b": 0.2}
    table = failure_table(cases).set_index("site")
    assert table.loc["stu", "auroc_soft_dice_deficit"] == 1.0 and table.loc["stu", "flagged_rate"] == 0.5
