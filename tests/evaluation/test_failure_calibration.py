"""A fold's failure rule learned from its validation cases (evaluation/failure_calibration.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medseg_auto.evaluation.failure_calibration import MIN_OUTCOMES, calibrate, calibrate_validation_folder, youden_threshold
from medseg_auto.inference.failure_rule import FAILURE_RULE_FILE, read_failure_rule
from medseg_auto.inference.uncertainty import DEFAULT_SIGNAL, DEFAULT_THRESHOLD


def _cases(n_failed: int, n_good: int, seed: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    """Cases whose entropy_foreground separates failures (0.6-0.9) from successes (0.1-0.4) while
    mirror_disagreement is noise below 0.3 (the fixed default flags nothing)."""
    rng = np.random.default_rng(seed)
    ids = [f"case_{i}" for i in range(n_failed + n_good)]
    failed = np.array([True] * n_failed + [False] * n_good)
    entropy = np.where(failed, rng.uniform(0.6, 0.9, failed.size), rng.uniform(0.1, 0.4, failed.size))
    signals = pd.DataFrame({"case_id": ids, "entropy_foreground": entropy,
                            "mirror_disagreement": rng.uniform(0.0, 0.25, failed.size),
                            "entropy_image": rng.uniform(0.0, 0.1, failed.size)})
    dice = {case: (0.2 if bad else 0.8) for case, bad in zip(ids, failed)}
    return signals, dice


def test_youden_threshold_separates_the_outcomes():
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    failed = np.array([False, False, False, True, True])
    threshold = youden_threshold(scores, failed)
    assert 0.3 <= threshold < 0.7
    assert ((scores > threshold) == failed).all()


def test_calibrate_picks_the_signal_that_predicts_failure_and_its_threshold():
    signals, dice = _cases(8, 12)
    rule = calibrate(signals, dice)
    assert rule.source == "calibrated" and rule.signal == "entropy_foreground"
    flagged = signals["entropy_foreground"].to_numpy() > rule.threshold
    assert (flagged == np.array([d < 0.5 for d in dice.values()])).all()
    assert rule.details["auroc"]["entropy_foreground"] == 1.0 and rule.details["failed"] == 8
    # the fixed default would have flagged none of the 8 failures
    assert not (signals[DEFAULT_SIGNAL] > DEFAULT_THRESHOLD).any()


@pytest.mark.parametrize("n_failed, n_good", [(MIN_OUTCOMES - 1, 20), (20, MIN_OUTCOMES - 1), (0, 12)])
def test_too_few_failures_or_successes_keep_the_default_and_say_why(n_failed, n_good):
    signals, dice = _cases(n_failed, n_good)
    rule = calibrate(signals, dice)
    assert (rule.signal, rule.threshold, rule.source) == (DEFAULT_SIGNAL, DEFAULT_THRESHOLD, "default")
    assert f"{n_failed} of {n_failed + n_good}" in rule.details["why"]


def test_a_signal_missing_for_some_cases_is_not_chosen():
    signals, dice = _cases(8, 12)
    signals.loc[0, "entropy_foreground"] = np.nan  # e.g. a case predicted without that signal
    rule = calibrate(signals, dice)
    assert rule.signal != "entropy_foreground"


def test_calibrate_validation_folder_writes_a_rule_predict_can_read(tmp_path):
    signals, dice = _cases(6, 6)
    validation, fold = tmp_path / "fold_0" / "validation", tmp_path / "fold_0"
    validation.mkdir(parents=True)
    signals.to_csv(validation / "failure_signals.csv", index=False)
    metrics = pd.DataFrame({"case": list(dice), "class": 1, "dice": list(dice.values())})
    metrics.to_csv(validation / "metrics.csv", index=False)
    written = calibrate_validation_folder(validation, fold)
    assert json.loads((fold / FAILURE_RULE_FILE).read_text())["signal"] == "entropy_foreground"
    assert read_failure_rule(fold / FAILURE_RULE_FILE) == written
