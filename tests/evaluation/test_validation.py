"""Final validation scores equal what ``medseg-auto evaluate`` reports on the same files."""

from __future__ import annotations

import pytest

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home
from medseg_auto.evaluation.evaluate import evaluate_folders
from medseg_auto.evaluation.validation import validate_cases
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.preprocessing.pipeline import plan_and_preprocess

from tests.helpers.known_networks import ThresholdNetwork


def test_validation_metrics_match_folder_evaluation(tmp_path):
    home = synthetic_home(tmp_path / "home")
    make_synthetic_dataset(home, "Syn2d", dimension=2, cases_per_site=2)
    plans = plan_and_preprocess(home, "Syn2d", num_processes=1, show_progress=False)
    config = plans.configurations["2d"]
    spec = DatasetSpec.load(home.raw_dataset("Syn2d"))
    cache = PreprocessedCache(home.preprocessed_dataset("Syn2d") / config.data_identifier)
    output = tmp_path / "validation"
    summary = validate_cases(ThresholdNetwork(), plans, config, cache, cache.case_ids(), spec, output,
                                       mirror_axes=[0, 1], show_progress=False)
    assert summary["num_cases"] == 4
    assert (output / "summary.json").is_file() and (output / "metrics.csv").is_file()
    assert set(summary["per_site"]) == {"siteA", "siteB"}
    folder = evaluate_folders(output, spec.folder / "labelsTr", spec, show_progress=False)
    assert folder.summary["foreground_mean"]["dice"] == pytest.approx(summary["foreground_mean"]["dice"])
    assert summary["foreground_mean"]["dice"] > 0.3  # thresholding at the mean finds the blob, with false positives
