"""Fixtures for the experiment tests: the toy data home (``tests/helpers/toy_home.py``), reused.

The toy home holds a preprocessed cache, plans with a tiny ``2d`` configuration and the raw
labels the evaluation reads, so a cell trains, predicts and scores in about a second.
"""

from __future__ import annotations

import pytest

from tests.helpers.toy_home import make_toy_home, toy_configuration


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
    return toy_configuration(2)
