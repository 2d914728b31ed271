"""Fixtures of the prediction tests: the threshold network (``tests/helpers/known_networks.py``)
and a trained two-site 2D home shared by the FDA and OOD tests."""

from __future__ import annotations

import pytest

from tests.helpers.known_networks import ThresholdNetwork


@pytest.fixture
def threshold_network():
    return ThresholdNetwork()


@pytest.fixture(scope="session")
def trained_syn2d_home(tmp_path_factory):
    """A data home with a 2D two-site synthetic dataset (6 cases per site) and fold ``all`` of the
    Base trainer trained for 2 iterations; its final validation wrote ``ood_reference.json``.
    Shared by the FDA and OOD tests (training once takes a few seconds)."""
    from medseg_auto.cli.main import main
    from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home

    home = synthetic_home(tmp_path_factory.mktemp("syn2d_home"))
    make_synthetic_dataset(home, "Syn2d", dimension=2, cases_per_site=6)
    root = str(home.root)
    assert main(["plan_and_preprocess", "Syn2d", "-np", "1", "--home", root, "--no-progress"]) == 0
    assert main(["train", "Syn2d", "2d", "all", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters-per-epoch",
                 "1", "--num-workers", "0", "--home", root, "--device", "cpu", "--seed", "0", "--no-progress"]) == 0
    return home
