"""Fixtures of the evaluation tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.preprocessing.pipeline import plan_and_preprocess


@pytest.fixture
def preprocessed_syn2d(tmp_path):
    """A planned and preprocessed 2D synthetic dataset (2 cases per site): ``plans``,
    ``config`` (2d), ``spec`` (raw) and ``cache``, what ``validate_cases`` takes."""
    home = synthetic_home(tmp_path / "home")
    make_synthetic_dataset(home, "Syn2d", dimension=2, cases_per_site=2)
    plans = plan_and_preprocess(home, "Syn2d", num_processes=1, show_progress=False)
    config = plans.configurations["2d"]
    spec = DatasetSpec.load(home.raw_dataset("Syn2d"))
    cache = PreprocessedCache(home.preprocessed_dataset("Syn2d") / config.data_identifier)
    return SimpleNamespace(plans=plans, config=config, spec=spec, cache=cache)
