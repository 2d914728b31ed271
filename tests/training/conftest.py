"""Fixtures of the training tests: the toy data home (``tests/helpers/toy_home.py``) per test,
and one intra-op thread per process."""

from __future__ import annotations

from typing import Callable

import pytest

from medseg_auto.paths import DataHome
from tests.helpers.toy_home import make_toy_home


@pytest.fixture(autouse=True)
def one_thread_per_process(monkeypatch):
    """Training here runs one intra-op thread (``configure_threads`` honours OMP_NUM_THREADS):
    tiny convolutions gain nothing from two, and on a busy machine two threads spin at every
    barrier. Subprocesses inherit the setting."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def toy_home(tmp_path) -> DataHome:
    """Six toy cases in ``tmp_path/home``."""
    return make_toy_home(tmp_path / "home")


@pytest.fixture
def toy_home_factory(tmp_path) -> Callable[..., DataHome]:
    """``toy_home_factory(name, n_cases=6, sites=None, seed=0)`` for tests needing several homes."""

    def factory(name: str = "home", **kwargs) -> DataHome:
        return make_toy_home(tmp_path / name, **kwargs)

    return factory
