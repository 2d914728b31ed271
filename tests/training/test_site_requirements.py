"""Trainers that need several training sites declare it (``min_training_sites``), and ``train``
warns once at the start when such a trainer trains on one site."""

from __future__ import annotations

import logging

import pytest

from medseg_auto.training.registry import get_trainer
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.site_requirements import count_sites, trainers_needing_more_sites, warn_if_too_few_sites

NEED_TWO_SITES = ("SiteBalanced", "SiteAdversarial", "ExchangeableFeatureDiscrepancy", "RandomAmplitudeMixup",
                  "SemanticGuidedContrastiveRAM", "MixedMinibatchTransfer")


@pytest.mark.parametrize("name", NEED_TWO_SITES)
def test_site_mechanisms_declare_two_sites(name):
    assert get_trainer(name).min_training_sites == 2


@pytest.mark.parametrize("name", ["Base", "FeatureDiscrepancy", "Dispersive", "SemanticGuidedContrastive"])
def test_other_trainers_need_one_site(name):
    assert get_trainer(name).min_training_sites == 1


def test_a_combination_needs_what_its_most_demanding_method_needs():
    assert get_trainer("Dispersive+SiteBalanced").min_training_sites == 2
    assert trainers_needing_more_sites(["Base", "SiteBalanced", "Dispersive"], 1) == {"SiteBalanced": 2}
    assert trainers_needing_more_sites(["SiteBalanced"], 2) == {}


def test_ram_within_site_needs_one_site():
    (method,) = get_trainer("RandomAmplitudeMixup").create_methods({"ram_within_site": True})
    assert method.min_training_sites == 1


def test_warning_names_the_trainer_and_counts_only_recorded_sites(caplog):
    methods = get_trainer("SiteBalanced").create_methods()
    sites = {"a": "busi", "b": "busi", "c": None}
    assert count_sites(sites, sites) == 1
    with caplog.at_level(logging.WARNING):
        assert warn_if_too_few_sites("SiteBalanced", methods, list(sites), sites)
        assert not warn_if_too_few_sites("SiteBalanced", methods, ["a", "x"], {"a": "busi", "x": "stu"})
    (record,) = [r for r in caplog.records if "at least 2 sites" in r.message]
    assert "SiteBalanced" in record.message and "this run has 1" in record.message


def test_train_warns_once_when_a_site_trainer_trains_on_one_site(toy_home_factory, caplog):
    home = toy_home_factory(sites=["a"] * 6)
    with caplog.at_level(logging.WARNING):
        train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="SiteBalanced", device="cpu", seed=0,
                                final_validation=False,
                                settings=dict(num_epochs=1, iterations_per_epoch=1, num_workers=0)))
    assert sum("needs training cases from at least 2 sites" in r.message for r in caplog.records) == 1


def test_no_warning_for_a_trainer_that_needs_one_site_when_no_site_is_recorded():
    """Base needs one site; a dataset without site records (count 0) must not warn that it
    'needs at least 1 sites' (seen in the 2-rank training's log)."""
    from medseg_auto.training.site_requirements import warn_if_too_few_sites

    class OneSiteMethod:
        min_training_sites = 1

    assert warn_if_too_few_sites("Base", [OneSiteMethod()], ["a", "b"], {}) is False
