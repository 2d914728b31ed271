"""``SiteBalanced``: Base's recipe with site-balanced batches (the sampling control)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_auto.training.hooks import DatasetInfo, TrainingSettings
from medseg_auto.training.registry import get_trainer
from medseg_auto.run.train import TrainRequest, train_fold


def test_site_balanced_changes_only_the_sampler():
    (method,) = get_trainer("SiteBalanced").create_methods()
    assert method.configure(TrainingSettings()) == TrainingSettings()  # Base's settings
    cases = [f"case_{i}" for i in range(8)]
    sites = {case: "big" if i < 7 else "small" for i, case in enumerate(cases)}
    sampler = method.make_sampler(DatasetInfo(cases, sites))
    rng = np.random.default_rng(0)
    for _ in range(20):
        batch = sampler.sample_batch(rng, 4)
        assert sum(sites[case] == "small" for case in batch) == 2  # the one small-site case fills half


@pytest.mark.slow
def test_site_balanced_trains_end_to_end(toy_home_factory):
    home = toy_home_factory(sites=["a", "a", "a", "a", "b", "b"])
    folder = train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="SiteBalanced", device="cpu", seed=0,
                                     final_validation=False,
                                     settings=dict(num_epochs=1, iterations_per_epoch=1, num_workers=0)))
    assert folder.parent.name == "SiteBalanced__plans__2d" and (folder / "checkpoint_final.pt").is_file()
