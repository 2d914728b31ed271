"""Out-of-distribution score: Mahalanobis distance, feature statistics hooks, references, predict end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from medseg_auto.cli.main import main
from medseg_auto.dataset.image_io import ImageGeometry, write_image
from medseg_auto.dataset.synthetic import make_case
from medseg_auto.errors import MedsegError
from medseg_auto.inference.feature_statistics import FeatureStatistics, tap_signature, views_per_window
from medseg_auto.inference.ood import (
    OOD_REFERENCE_FILE, GaussianModel, OodReference, leave_one_out_distances, mahalanobis_distance,
)
from medseg_auto.inference.sliding_window import MirroredPredictor
from medseg_auto.training.network import build_dynunet

from tests.helpers.known_networks import make_plans


def test_mahalanobis_distance_known_values():
    mean = np.array([1.0, 2.0])
    precision = np.linalg.inv(np.diag([4.0, 1.0]))
    assert mahalanobis_distance(np.array([3.0, 3.0]), mean, precision) == pytest.approx(np.sqrt(2.0))
    covariance = np.array([[2.0, 0.8], [0.8, 1.0]])
    points = np.array([[0.0, 0.0], [2.5, -1.0], [1.0, 2.0]])
    expected = [scipy_mahalanobis(p, mean, np.linalg.inv(covariance)) for p in points]
    np.testing.assert_allclose(mahalanobis_distance(points, mean, np.linalg.inv(covariance)), expected)


def test_gaussian_model_recovers_distances_of_hand_made_gaussian_features():
    rng = np.random.default_rng(0)
    mean, sigma = np.array([5.0, -2.0, 0.5]), np.array([2.0, 0.5, 1.0])
    features = mean + sigma * rng.normal(size=(20000, 3))
    model = GaussianModel.fit(features)
    # three standard deviations along the first axis: distance 3; the mean itself: 0
    assert float(model.distance(mean + np.array([3 * sigma[0], 0, 0]))) == pytest.approx(3.0, abs=0.1)
    assert float(model.distance(mean)) == pytest.approx(0.0, abs=0.05)


def test_leave_one_out_threshold_matches_the_chi_quantile():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 3))
    distances = leave_one_out_distances(features)
    # the 95th percentile of a chi distribution with 3 degrees of freedom is sqrt(7.815) = 2.80
    assert np.percentile(distances, 95) == pytest.approx(2.80, abs=0.3)


def test_reference_round_trip_and_too_few_cases(tmp_path):
    rng = np.random.default_rng(2)
    reference = OodReference(["encoder.0"], [f"c{i}" for i in range(8)], rng.normal(size=(8, 4)), "abc", "test")
    reference.save(tmp_path / OOD_REFERENCE_FILE)
    loaded = OodReference.load(tmp_path / OOD_REFERENCE_FILE)
    assert loaded.threshold(99) == pytest.approx(reference.threshold(99), rel=1e-5)
    assert float(loaded.distance(np.zeros(4))) == pytest.approx(float(reference.distance(np.zeros(4))), rel=1e-5)
    with pytest.raises(MedsegError, match="at least"):
        OodReference(["encoder.0"], ["a", "b"], rng.normal(size=(2, 4)), "abc", "test")
    (tmp_path / "bad.json").write_text('{"version": 1}')
    with pytest.raises(MedsegError, match="bad.json"):
        OodReference.load(tmp_path / "bad.json")


@pytest.fixture
def tiny_network():
    torch.manual_seed(0)
    return build_dynunet(make_plans([1.0, 1.0], is_2d=True, patch=[16, 16]).configuration("2d"), 1, 2).eval()


def test_feature_statistics_are_the_first_convolutions_channel_moments(tiny_network):
    batch = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        expected_conv = tiny_network.input_block.conv1(batch)
        with FeatureStatistics(tiny_network, ["encoder.0"]) as statistics:
            tiny_network(batch)
            vector = statistics.vector()
    channels = expected_conv.transpose(0, 1).reshape(4, -1).double()
    np.testing.assert_allclose(vector[:4], channels.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vector[4:], np.log(channels.std(dim=1, unbiased=False).numpy()), rtol=1e-4)
    assert not tiny_network.input_block.norm1._forward_hooks  # removed on leaving the context


def test_statistics_use_the_identity_view_only_and_leave_the_prediction_unchanged(tiny_network):
    batch = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        plain_logits = MirroredPredictor(tiny_network, [0, 1])(batch)
        with FeatureStatistics(tiny_network, views=1) as statistics:
            tiny_network(batch)
            unmirrored = statistics.vector()
        views = views_per_window([0, 1], use_mirroring=True)
        with FeatureStatistics(tiny_network, views=views) as statistics:
            hooked_logits = MirroredPredictor(tiny_network, [0, 1])(batch)
            mirrored = statistics.vector()
    assert views == 4
    np.testing.assert_allclose(mirrored, unmirrored, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hooked_logits, plain_logits)
    assert len(tap_signature(tiny_network)) == 16


def _write_inputs(folder, rng):
    """Four fresh in-distribution cases from the synthetic generator, and two obviously shifted ones."""
    folder.mkdir()
    geometry = ImageGeometry(spacing=(999.0, 1.0, 1.0), dimension=2, file_ending=".png")  # type: ignore[arg-type]
    for index, site in enumerate(["siteA", "siteB", "siteA", "siteB"]):
        image, _ = make_case((64, 56), rng, site, with_core=False)
        write_image(np.clip(image, 0, 255).astype(np.uint8)[None], geometry, folder / f"indist_{index}_0000.png")
    write_image(rng.integers(0, 256, size=(1, 64, 56)).astype(np.uint8), geometry, folder / "noise_0000.png")
    rows, columns = np.mgrid[:64, :56]
    checkerboard = (((rows // 4 + columns // 4) % 2) * 200).astype(np.uint8)
    write_image(checkerboard[None], geometry, folder / "checkerboard_0000.png")


@pytest.mark.slow
def test_predict_scores_shifted_inputs_above_the_threshold(trained_syn2d_home, tmp_path):
    root = str(trained_syn2d_home.root)
    fold = trained_syn2d_home.results_dataset("Syn2d") / "Base__plans__2d" / "fold_all"
    assert json.loads((fold / OOD_REFERENCE_FILE).read_text())["source"] == "final validation"
    inputs = tmp_path / "inputs"
    _write_inputs(inputs, np.random.default_rng(123))
    base = ["-i", str(inputs), "-d", "Syn2d", "-c", "2d", "--home", root, "--no-progress", "--save-probabilities"]
    assert main(["predict", "-o", str(tmp_path / "scored"), *base]) == 0
    summary = json.loads((tmp_path / "scored" / "summary.json").read_text())
    ood = summary["ood"]
    assert ood["flagged"] == ["checkerboard", "noise"]
    assert set(ood["cases"]) == set(summary["predicted"]) and ood["percentile"] == 99.0
    for case, entry in ood["cases"].items():
        assert set(entry) >= {"score", "threshold", "flagged", "per_fold"}
        assert entry["flagged"] == (entry["score"] > entry["threshold"]) == (not case.startswith("indist"))
    with open(tmp_path / "scored" / "ood_scores.csv", newline="") as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    assert rows["noise"]["flagged"] == "1" and rows["indist_0"]["flagged"] == "0"

    # --no-ood: no scores, and the hooks never changed the prediction (torch pinned: without the OOD
    # score --engine auto may pick another engine, whose numbers differ in the last bits)
    assert main(["predict", "-o", str(tmp_path / "unscored"), "--no-ood", "--engine", "torch", *base]) == 0
    assert json.loads((tmp_path / "unscored" / "summary.json").read_text())["ood"] == {"skipped": "--no-ood"}
    assert not (tmp_path / "unscored" / "ood_scores.csv").exists()
    for case in ("indist_0", "noise"):
        scored = np.load(tmp_path / "scored" / f"{case}.npz")["probabilities"]
        unscored = np.load(tmp_path / "unscored" / f"{case}.npz")["probabilities"]
        np.testing.assert_array_equal(scored, unscored)


@pytest.mark.slow
def test_predict_makes_a_missing_or_stale_reference_from_the_training_cache(trained_syn2d_home, tmp_path):
    root = str(trained_syn2d_home.root)
    reference_file = trained_syn2d_home.results_dataset("Syn2d") / "Base__plans__2d" / "fold_all" / OOD_REFERENCE_FILE
    original = json.loads(reference_file.read_text())
    inputs = tmp_path / "inputs"
    _write_inputs(inputs, np.random.default_rng(7))
    base = ["-i", str(inputs), "-d", "Syn2d", "-c", "2d", "--home", root, "--no-progress"]
    try:
        reference_file.unlink()
        assert main(["predict", "-o", str(tmp_path / "lazy"), *base]) == 0
        remade = json.loads(reference_file.read_text())
        assert remade["source"].startswith("predict") and remade["case_ids"] == original["case_ids"]
        # the same statistics as the final validation's (identity view there, no mirroring here)
        np.testing.assert_allclose(remade["features"], original["features"], rtol=1e-3, atol=1e-3)

        remade["signature"] = "stale"
        reference_file.write_text(json.dumps(remade))
        assert main(["predict", "-o", str(tmp_path / "stale"), *base]) == 0
        assert json.loads(reference_file.read_text())["signature"] == original["signature"]
        summary = json.loads((tmp_path / "stale" / "summary.json").read_text())
        assert "noise" in summary["ood"]["flagged"]
    finally:
        reference_file.write_text(json.dumps(original))


@pytest.mark.slow
def test_reference_cases_come_from_the_runs_own_split_or_the_datasets_splits(trained_syn2d_home, tmp_path):
    from medseg_auto.inference.ood_references import reference_case_ids
    from medseg_auto.preprocessing.cache import PreprocessedCache
    from medseg_auto.utils.atomic import read_json, write_json_atomic

    preprocessed = trained_syn2d_home.preprocessed_dataset("Syn2d")
    cache = PreprocessedCache(preprocessed / "plans_2d")
    fold_0 = tmp_path / "fold_0"
    assert reference_case_ids(fold_0, preprocessed, cache) == sorted(read_json(preprocessed / "splits.json")[0]["val"])
    tagged = tmp_path / "fold_busi"
    write_json_atomic(tagged / "split.json", {"train": ["siteA_000", "siteB_000"],
                                              "val": ["siteB_002", "siteB_001", "gone"]})
    assert reference_case_ids(tagged, preprocessed, cache) == ["siteB_001", "siteB_002"]
    assert len(reference_case_ids(tmp_path / "fold_all", preprocessed, cache, max_cases=5)) == 5
