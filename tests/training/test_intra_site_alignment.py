"""AIVA: the alignment loss, the Hungarian matching, the PCA/t-SNE/k-means path, the target
image cache and the trainer end to end on toy data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg_auto.dataset.image_io import ImageGeometry, write_image
from medseg_auto.errors import MedsegError
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.cluster_alignment import ClusterMatch, alignment_loss, cluster_and_match, match_clusters
from medseg_auto.training.data.image_folder_cache import cache_image_folder
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.hooks import DatasetInfo, TrainingContext, TrainingSettings
from medseg_auto.training.network import build_dynunet, tap_channels
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.trainers.intra_site_alignment import (
    CLUSTERS_FILE, TARGET_CACHE_FOLDER, IntraSiteVariabilityAlignment,
)

from tests.helpers.toy_home import DATA_IDENTIFIER, TOY_DATASET, toy_configuration, toy_plans


def test_alignment_loss_is_zero_for_identical_clusters_and_the_squared_shift_otherwise():
    partners = torch.tensor([[0.0, 0.0], [1.0, 2.0], [5.0, -1.0]])
    clusters = torch.tensor([0, 1, 1, 2])
    features = partners[clusters].clone()
    assert float(alignment_loss(features, clusters, partners)) == pytest.approx(0.0)
    # spread around the right means still has the right cluster means
    spread = features + torch.tensor([[0, 0], [0.5, 0], [-0.5, 0], [0, 0]])
    assert float(alignment_loss(spread, clusters, partners)) == pytest.approx(0.0)
    shifted = features.clone()
    shifted[clusters == 1] += torch.tensor([3.0, 4.0])  # one cluster moved by (3, 4): |shift|^2 = 25
    assert float(alignment_loss(shifted, clusters, partners)) == pytest.approx(25.0)
    # clusters absent from the batch or without a valid partner add nothing
    valid = torch.tensor([True, False, True])
    assert float(alignment_loss(shifted, clusters, partners, valid)) == pytest.approx(0.0)
    only_first = torch.tensor([0, 0])
    assert float(alignment_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), only_first, partners)) == pytest.approx(1.0)


def test_alignment_loss_gradient_moves_target_features_towards_their_partner():
    partners = torch.tensor([[1.0, 1.0]])
    features = torch.zeros(2, 2, requires_grad=True)
    alignment_loss(features, torch.tensor([0, 0]), partners).backward()
    # d/dx of |mean - p|^2 = 2 (mean - p) / n per sample
    assert torch.allclose(features.grad, torch.full((2, 2), -1.0))


def test_hungarian_matching_recovers_a_known_permutation():
    rng = np.random.default_rng(0)
    target_centres = rng.normal(size=(12, 3)) * 10
    permutation = rng.permutation(12)
    source_centres = np.empty_like(target_centres)
    source_centres[permutation] = target_centres + rng.normal(scale=0.01, size=target_centres.shape)
    partner, cost = match_clusters(source_centres, target_centres)
    assert partner.tolist() == permutation.tolist()
    assert cost < 0.01


@pytest.mark.parametrize("embedding", ["pca", "tsne"])
def test_clustering_matches_shifted_sites_cluster_by_cluster(embedding):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 20
    source = np.concatenate([c + rng.normal(size=(10, 16)) for c in centres])
    target = np.concatenate([c + 0.5 + rng.normal(size=(8, 16)) for c in centres])  # a small site shift
    match = cluster_and_match(source, target, k=4, components=5, embedding=embedding, seed=0)
    assert match.k == 4
    for group in range(4):  # every target group's cluster is matched to the source cluster of that group
        target_cluster = match.target_labels[group * 8]
        source_cluster = match.source_labels[group * 10]
        assert np.all(match.target_labels[group * 8:(group + 1) * 8] == target_cluster)
        assert match.partner[target_cluster] == source_cluster
    partners, valid = match.partner_means()
    assert valid.all() and partners.shape == (4, 16)
    np.testing.assert_allclose(partners[match.target_labels[0]], source[:10].mean(axis=0), rtol=1e-5)


def test_fewer_cases_than_clusters_and_duplicate_points_still_give_finite_partners():
    rng = np.random.default_rng(2)
    match = cluster_and_match(rng.normal(size=(5, 8)), rng.normal(size=(3, 8)), k=12, components=20)
    assert match.k == 3 and sorted(match.partner.tolist()) == sorted(set(match.partner.tolist()))
    match = cluster_and_match(np.ones((6, 8)), rng.normal(size=(4, 8)), k=3, components=2)  # one distinct point
    partners, valid = match.partner_means()
    assert np.isfinite(partners).all() and valid.all()
    # a source cluster k-means left empty has no mean: its target partner is marked invalid
    empty = ClusterMatch(np.array([0, 0]), np.array([0, 1]), np.array([[1.0, 1.0], [np.nan, np.nan]]),
                         np.array([1, 0]), 0.0)
    partners, valid = empty.partner_means()
    assert valid.tolist() == [False, True] and partners.tolist() == [[0.0, 0.0], [1.0, 1.0]]


def write_target_images(folder, n=3, shape=(20, 36, 36), seed=5):
    """Unlabelled toy images in raw naming (``CASE_0000.nii.gz``), brighter than the source."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(n):
        image = (rng.normal(2.0, 1.5, size=shape)).astype(np.float32)
        write_image(image, ImageGeometry(spacing=(1.0, 1.0, 1.0)), folder / f"target_{index:02d}_0000.nii.gz")
    return folder


def test_image_folder_is_preprocessed_like_training_cases_and_kept(tmp_path):
    folder = write_target_images(tmp_path / "images", n=2)
    plans = toy_plans()
    cache = cache_image_folder(folder, plans, toy_configuration(3), tmp_path / "cache")
    assert cache.case_ids() == ["target_00", "target_01"]
    data, seg, properties = cache.load_case("target_00", mmap=False)
    assert data.shape == (1, 20, 36, 36) and seg.shape == (1, 20, 36, 36)
    assert abs(float(data.mean())) < 1e-3 and float(data.std()) == pytest.approx(1.0, abs=1e-3)  # z-scored
    stamp = cache.data_path("target_00").stat().st_mtime_ns
    cache_image_folder(folder, plans, toy_configuration(3), tmp_path / "cache")
    assert cache.data_path("target_00").stat().st_mtime_ns == stamp  # kept, not redone
    with pytest.raises(MedsegError, match="not a folder"):
        cache_image_folder(tmp_path / "missing", plans, toy_configuration(3), tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_aiva_trains_end_to_end_and_keeps_lambda(toy_home_factory, tmp_path, configuration):
    home = toy_home_factory("home", sites=["a", "a", "a", "b", "b", "b"])
    target = write_target_images(tmp_path / "target", n=3)
    options = {"target_images": str(target), "source_sites": ["a"], "aiva_clusters": 12,
               "aiva_calibration_steps": 2, "aiva_target_batch": 2}
    folder = train_fold(TrainRequest(home, "Toy", configuration, 0, trainer_name="IntraSiteVariabilityAlignment",
                                     device="cpu", seed=0, trainer_options=options,
                                     settings=dict(num_epochs=2, iterations_per_epoch=3, num_workers=0)))
    state = load_checkpoint(folder / FINAL)["methods_state"]["IntraSiteVariabilityAlignment"]
    assert state["lambda"] > 0 and len(state["calibration"]) == 2
    assert state["lambda"] == pytest.approx(1 / np.mean(state["calibration"]))
    clusters = json.loads((folder / CLUSTERS_FILE).read_text())
    assert clusters["epoch"] == 1 and 1 <= clusters["k"] <= 3  # capped by the 3 target images
    assert sorted(clusters["target_case_clusters"]) == ["target_00", "target_01", "target_02"]
    assert (folder / TARGET_CACHE_FOLDER).is_dir()
    progress = (folder / "progress.csv").read_text().splitlines()
    header = progress[0].split(",")
    assert {"aiva_alignment", "aiva_loss", "aiva_clusters", "aiva_matching_cost"} <= set(header)
    last = dict(zip(header, progress[-1].split(",")))
    assert float(last["aiva_loss"]) > 0  # the second epoch has lambda and a weighted loss


def test_aiva_refuses_missing_target_images_and_unknown_sites(toy_home_factory, tmp_path):
    home = toy_home_factory("home", sites=["a", "a", "a", "b", "b", "b"])
    with pytest.raises(MedsegError, match="--target-images"):
        train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="IntraSiteVariabilityAlignment", device="cpu",
                                seed=0, settings=dict(num_epochs=1, iterations_per_epoch=1, num_workers=0)))
    target = write_target_images(tmp_path / "target", n=1)
    with pytest.raises(MedsegError, match="--source-sites: no training case .* site\\(s\\) zz"):
        train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="IntraSiteVariabilityAlignment", device="cpu",
                                seed=0, trainer_options={"target_images": str(target), "source_sites": ["zz"]},
                                settings=dict(num_epochs=1, iterations_per_epoch=1, num_workers=0)))


def _context(home, tmp_path, configuration="2d"):
    plans = toy_plans()
    config = plans.configuration(configuration)
    cache = PreprocessedCache(home.preprocessed / TOY_DATASET / DATA_IDENTIFIER)
    cases = cache.case_ids()
    sites = {case: cache.load_properties(case).site for case in cases}
    network = build_dynunet(config, 1, plans.num_classes)
    return TrainingContext(plans=plans, configuration=config, network=network, device=torch.device("cpu"),
                           num_classes=plans.num_classes, tap_channels=tap_channels(network), cache=cache,
                           train_case_ids=cases, sites=sites, output_folder=tmp_path, settings=TrainingSettings())


def test_alignment_gradient_reaches_the_encoder_only_and_sampler_keeps_source_sites(toy_home_factory, tmp_path):
    home = toy_home_factory("home", sites=["a", "a", "a", "b", "b", "b"])
    target = write_target_images(tmp_path / "target", n=3)
    method = IntraSiteVariabilityAlignment({"target_images": str(target), "source_sites": ["a"], "aiva_target_batch": 3})
    context = _context(home, tmp_path)
    method.setup(context)
    assert len(method.source_cases) == 3 and all(context.sites[c] == "a" for c in method.source_cases)
    sampler = method.make_sampler(DatasetInfo(context.train_case_ids, context.sites))
    assert set(sampler.sample_batch(np.random.default_rng(0), 50)) == set(method.source_cases)
    method.options["aiva_source_patches"] = 2
    method.on_epoch_start(0, {})
    assert method.epoch_logs["aiva_clusters"] == 2  # capped by the 2 source crops embedded
    method.options["aiva_source_patches"] = None
    method.on_epoch_start(0, {})
    assert method.epoch_logs["aiva_clusters"] == 3
    loss, logs = method.extra_loss({}, [], torch.zeros(1), {})
    assert not loss.requires_grad and logs["aiva_loss"] == 0.0  # calibrating: no alignment loss yet
    method.lam = 1.0
    context.network.train()
    loss, logs = method.extra_loss({}, [], torch.zeros(1), {})
    assert float(loss.detach()) == pytest.approx(logs["aiva_alignment"]) and float(loss.detach()) > 0
    loss.backward()
    assert context.network.input_block.conv1.conv.weight.grad.abs().sum() > 0
    assert context.network.output_block.conv.conv.weight.grad is None  # the decoder is not involved


def test_lambda_survives_a_checkpoint_round_trip():
    method = IntraSiteVariabilityAlignment()
    assert method.extra_checkpoint_state() == {"lambda": -1.0, "calibration": []}  # not calibrated yet
    method.calibration = [0.5, 1.5]
    method.options["aiva_calibration_steps"] = 2
    method._set_lambda()
    assert method.lam == pytest.approx(1.0)
    resumed = IntraSiteVariabilityAlignment()
    resumed.load_extra_checkpoint_state(method.extra_checkpoint_state())
    assert resumed.lam == pytest.approx(1.0) and resumed.calibration == [0.5, 1.5]
    fresh = IntraSiteVariabilityAlignment()
    fresh.load_extra_checkpoint_state({"lambda": -1.0, "calibration": [0.2]})
    assert fresh.lam is None and fresh.calibration == [0.2]  # resumes calibrating
