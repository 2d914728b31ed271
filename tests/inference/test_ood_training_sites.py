"""The OOD reference holds validation cases of the sites the fold trained on, never a held-out site's."""

from __future__ import annotations

import json

import pytest

from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home
from medseg_auto.inference.ood import OOD_REFERENCE_FILE
from medseg_auto.training.registry import get_trainer
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.sampled_sites import fold_training_sites, in_sites, sampled_sites

SITES = {"a0": "siteA", "a1": "siteA", "b0": "siteB", "n0": None}


def test_sampled_sites_follow_the_trainers_sampler():
    train = list(SITES)
    assert sampled_sites(get_trainer("Base").create_methods({}), train, SITES) == ["siteA", "siteB", None]
    only_a = get_trainer("TrainOnSites").create_methods({"train_sites": ["siteA"]})
    assert sampled_sites(only_a, train, SITES) == ["siteA"]
    assert in_sites(["b0", "a1", "n0"], SITES, ["siteA"]) == ["a1"]


def test_a_fold_without_a_checkpoint_counts_every_training_site(tmp_path):
    assert fold_training_sites(tmp_path / "fold_0", ["a0", "b0"], SITES) == ["siteA", "siteB"]


@pytest.fixture(scope="module")
def train_on_site_a(tmp_path_factory):
    """TrainOnSites --train-sites siteA on a split whose validation cases cover both sites."""
    home = synthetic_home(tmp_path_factory.mktemp("sites_home"))
    make_synthetic_dataset(home, "Syn2dSites", dimension=2, cases_per_site=10)
    from medseg_auto.cli.main import main

    assert main(["plan_and_preprocess", "Syn2dSites", "-np", "1", "--home", str(home.root), "--no-progress"]) == 0
    train = [f"site{s}_{i:03d}" for s in "AB" for i in range(4)]
    val = [f"site{s}_{i:03d}" for s in "AB" for i in range(4, 10)]
    folder = train_fold(TrainRequest(
        home, "Syn2dSites", "2d", "onlyA", trainer_name="TrainOnSites", device="cpu", seed=0, split=(train, val),
        settings={"num_epochs": 1, "iterations_per_epoch": 1, "val_iterations_per_epoch": 1, "num_workers": 0},
        trainer_options={"train_sites": ["siteA"]}))
    return home, folder, val


def test_final_validation_reference_leaves_out_the_sites_not_trained_on(train_on_site_a):
    _, folder, val = train_on_site_a
    reference = json.loads((folder / OOD_REFERENCE_FILE).read_text())
    assert reference["case_ids"] == [case for case in val if case.startswith("siteA")]
    assert reference["training_sites"] == ["siteA"]


def test_predict_time_reference_leaves_out_the_sites_not_trained_on(train_on_site_a):
    from medseg_auto.inference.model_loading import load_fold
    from medseg_auto.inference.ood_references import load_or_create_reference
    import torch

    home, folder, val = train_on_site_a
    (folder / OOD_REFERENCE_FILE).unlink()
    model = load_fold(folder.parent, "onlyA")
    reference = load_or_create_reference(model.network, folder, model.config,
                                         home.preprocessed_dataset("Syn2dSites"), torch.device("cpu"))
    assert reference is not None and reference.case_ids == [case for case in val if case.startswith("siteA")]
    assert json.loads((folder / OOD_REFERENCE_FILE).read_text())["training_sites"] == ["siteA"]


def test_a_sampler_that_cannot_be_rebuilt_counts_every_training_site():
    needs_options = get_trainer("TrainOnSites").create_methods({})  # no --train-sites: its sampler refuses
    assert sampled_sites(needs_options, list(SITES), SITES) == ["siteA", "siteB", None]
