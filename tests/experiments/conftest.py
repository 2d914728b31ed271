"""Fixtures for the experiment tests: the training tests' toy data home, reused.

The toy home (``tests/training/conftest.py``) holds a preprocessed cache, plans with a tiny
``2d`` configuration and the raw labels the evaluation reads, so a cell trains, predicts and
scores in about a second. It is loaded by path because ``tests/`` is not a package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_TRAINING_CONFTEST = Path(__file__).resolve().parents[1] / "training" / "conftest.py"
_spec = importlib.util.spec_from_file_location("medseg_training_fixtures", _TRAINING_CONFTEST)
training_fixtures = importlib.util.module_from_spec(_spec)
assert _spec.loader is not None
_spec.loader.exec_module(training_fixtures)
make_toy_home = training_fixtures.make_toy_home

FAST = dict(device="cpu")
FAST_SETTINGS = dict(num_workers=0)


@pytest.fixture(autouse=True)
def one_thread_per_process(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def two_site_home(tmp_path):
    """Twelve toy cases: ``case_000``..``case_007`` at site ``busi``, ``case_008``..``case_011`` at ``stu``."""
    return make_toy_home(tmp_path / "home", n_cases=12, sites=["busi"] * 8 + ["stu"] * 4)


@pytest.fixture
def toy_2d_configuration():
    """The toy plans' ``2d`` configuration: patch (16, 16), 3 stages of 4, 8, 16 features."""
    return training_fixtures.toy_configuration(2)
