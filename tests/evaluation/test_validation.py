"""Final validation scores equal what ``medseg-auto evaluate`` reports on the same files."""

from __future__ import annotations

import pytest

from medseg_auto.evaluation.evaluate import evaluate_folders
from medseg_auto.evaluation.validation import validate_cases

from tests.helpers.known_networks import ThresholdNetwork


def test_validation_metrics_match_folder_evaluation(tmp_path, preprocessed_syn2d):
    data = preprocessed_syn2d
    plans, config, spec, cache = data.plans, data.config, data.spec, data.cache
    output = tmp_path / "validation"
    summary = validate_cases(ThresholdNetwork(), plans, config, cache, cache.case_ids(), spec, output,
                                       mirror_axes=[0, 1], show_progress=False)
    assert summary["num_cases"] == 4
    assert (output / "summary.json").is_file() and (output / "metrics.csv").is_file()
    assert set(summary["per_site"]) == {"siteA", "siteB"}
    folder = evaluate_folders(output, spec.folder / "labelsTr", spec, show_progress=False)
    assert folder.summary["foreground_mean"]["dice"] == pytest.approx(summary["foreground_mean"]["dice"])
    assert summary["foreground_mean"]["dice"] > 0.3  # thresholding at the mean finds the blob, with false positives
