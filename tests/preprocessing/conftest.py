"""Fixtures: tiny synthetic raw datasets in a temporary data home."""

from __future__ import annotations

import pytest

from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home


@pytest.fixture
def home_3d(tmp_path):
    home = synthetic_home(tmp_path / "home")
    make_synthetic_dataset(home, "Syn3d", dimension=3, cases_per_site=3)
    return home


@pytest.fixture
def home_2d(tmp_path):
    home = synthetic_home(tmp_path / "home")
    make_synthetic_dataset(home, "Syn2d", dimension=2, cases_per_site=3)
    return home
