"""The failure rule predict applies: read from the folds (untrusted files), combined over an
ensemble, and used for the per-case flags of predict's outputs."""

from __future__ import annotations

import csv
import json

import pytest

from medseg_auto.inference.failure_rule import (
    DEFAULT_RULE, FAILURE_RULE_FILE, FailureRule, combine_rules, read_failure_rule, rule_for_folds,
)


def _write(path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))


@pytest.mark.parametrize("payload", [
    "{not json", {"threshold": 0.2}, {"signal": "os.system", "threshold": 0.2},
    {"signal": "entropy_image", "threshold": 7.0}, {"signal": "entropy_image", "threshold": "x"},
])
def test_a_bad_rule_file_is_ignored_with_a_warning(tmp_path, payload, caplog):
    _write(tmp_path / FAILURE_RULE_FILE, payload)
    assert read_failure_rule(tmp_path / FAILURE_RULE_FILE) is None
    assert FAILURE_RULE_FILE in caplog.text


def test_folds_without_rules_get_the_default(tmp_path):
    assert rule_for_folds(tmp_path, ["fold_0", "fold_1"]) == DEFAULT_RULE


def test_an_ensemble_takes_the_majority_signal_and_the_median_threshold(tmp_path):
    rules = [FailureRule("entropy_foreground", 0.5, "calibrated"), None,
             FailureRule("entropy_foreground", 0.7, "calibrated"), FailureRule("entropy_image", 0.1, "calibrated")]
    for index, rule in enumerate(rules):
        if rule is not None:
            _write(tmp_path / f"fold_{index}" / FAILURE_RULE_FILE, rule.to_json())
    combined = rule_for_folds(tmp_path, [f"fold_{index}" for index in range(4)])
    assert combined.signal == "entropy_foreground" and combined.threshold == pytest.approx(0.6)
    assert combined.source == "calibrated (2 of 4 folds)"
    single = combine_rules([rules[3]])
    assert single == rules[3]


def test_predict_flags_cases_with_the_folds_rule(trained_syn2d_home, tmp_path):
    from medseg_auto.cli.main import main

    fold = trained_syn2d_home.results_dataset("Syn2d") / "Base__plans__2d" / "fold_all"
    written = read_failure_rule(fold / FAILURE_RULE_FILE)  # the fixture's final validation wrote it
    assert written is not None and written.source == "default" and "validation cases failed" in written.details["why"]
    original = (fold / FAILURE_RULE_FILE).read_text()
    raw = trained_syn2d_home.raw_dataset("Syn2d") / "imagesTr"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for image in sorted(raw.iterdir())[:2]:
        (inputs / image.name).write_bytes(image.read_bytes())
    try:  # a rule every case breaks: entropy over the image is above 0 for any softmax
        _write(fold / FAILURE_RULE_FILE, FailureRule("entropy_image", 0.0, "calibrated").to_json())
        assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-d", "Syn2d", "-c", "2d", "-f", "all",
                     "--home", str(trained_syn2d_home.root), "--no-progress"]) == 0
    finally:
        (fold / FAILURE_RULE_FILE).write_text(original)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    failure = summary["ood"]["failure"]
    assert (failure["signal"], failure["threshold"], failure["source"]) == ("entropy_image", 0.0, "calibrated")
    assert len(failure["likely_failed"]) == 2
    with open(tmp_path / "out" / "ood_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["failure_score"] for row in rows] == [row["entropy_image"] for row in rows]
    assert {row["failure_flagged"] for row in rows} == {"1"}
