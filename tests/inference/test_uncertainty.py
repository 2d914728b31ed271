"""Per-case uncertainty signals: entropy, mirrored views' and folds' disagreement, and predict's table."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medseg_auto.inference.sliding_window import MirroredPredictor, predict_logits
from medseg_auto.inference.uncertainty import UNCERTAINTY_SIGNALS, CaseSignals, normalised_entropy, one_hot


def _probabilities(foreground: np.ndarray) -> np.ndarray:
    """``(2, *spatial)`` softmax from a foreground probability map."""
    return np.stack([1.0 - foreground, foreground]).astype(np.float32)


def test_a_certain_prediction_has_no_uncertainty():
    foreground = np.zeros((1, 8, 8), dtype=np.float32)
    foreground[0, 2:6, 2:6] = 1.0
    probabilities = _probabilities(foreground)
    signals = CaseSignals()
    signals.add(0, probabilities, one_hot(probabilities.argmax(axis=0), 2))
    result = signals.finish(probabilities)
    assert result == {"entropy_image": 0.0, "entropy_foreground": 0.0, "soft_dice_deficit": 0.0,
                      "mirror_disagreement": 0.0}


def test_signals_grow_with_doubt_and_disagreement():
    foreground = np.zeros((1, 8, 8), dtype=np.float32)
    foreground[0, 2:6, 2:6] = 0.6  # predicted, but hardly
    probabilities = _probabilities(foreground)
    assert normalised_entropy(probabilities)[0, 3, 3] == pytest.approx(0.971, abs=1e-3)
    votes = np.zeros((2, 1, 8, 8), dtype=np.float32)
    votes[0] = 1.0
    votes[:, :, 2:6, 2:4] = [[[[0.0]]], [[[1.0]]]]  # the views agree on half of the lesion only
    signals = CaseSignals()
    signals.add(0, probabilities, votes)
    result = signals.finish(probabilities)
    assert result["soft_dice_deficit"] == pytest.approx(1 - 2 * 16 * 0.6 / (16 * 0.6 + 16), abs=1e-4)
    assert result["mirror_disagreement"] == pytest.approx(1 - 2 * 8 / (8 + 16), abs=1e-4)
    assert result["entropy_foreground"] > result["entropy_image"] > 0


def test_an_empty_prediction_counts_as_fully_uncertain_foreground():
    probabilities = _probabilities(np.full((1, 4, 4), 0.2, dtype=np.float32))
    result = CaseSignals().finish(probabilities)
    assert result["entropy_foreground"] == 1.0 and result["soft_dice_deficit"] == 1.0
    assert "mirror_disagreement" not in result and "fold_disagreement" not in result


def test_fold_disagreement_compares_each_models_labels_with_the_ensembles():
    left, right = np.zeros((1, 4, 8), dtype=np.float32), np.zeros((1, 4, 8), dtype=np.float32)
    left[..., :4], right[..., :6] = 0.9, 0.9  # the second model predicts 8 more voxels
    signals = CaseSignals()
    for index, foreground in enumerate([left, right]):
        signals.add(index, _probabilities(foreground), None)
    ensemble = (_probabilities(left) + _probabilities(right)) / 2  # 0.9 on :4 and 0.45 on 4:6 -> labels :4
    result = signals.finish(ensemble)
    # votes: 1 on the 16 voxels of :4, 0.5 on the 8 of 4:6; labels: the 16 voxels of :4
    assert result["fold_disagreement"] == pytest.approx(1 - 2 * 16 / (16 + 4 + 16), abs=1e-4)


def test_votes_leave_the_logits_unchanged_and_sum_to_one():
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 3, 3, padding=1)
    data = np.random.default_rng(0).normal(size=(1, 2, 12, 10)).astype(np.float32)
    plain = predict_logits(network, data, [8, 8], True, [0, 1])
    logits, votes = predict_logits(network, data, [8, 8], True, [0, 1], return_votes=True)
    torch.testing.assert_close(logits, plain)
    assert votes.shape == logits.shape
    torch.testing.assert_close(votes.sum(dim=0), torch.ones(2, 12, 10), rtol=1e-4, atol=1e-4)
    batch = torch.from_numpy(data).permute(1, 0, 2, 3)
    with torch.no_grad():
        mean_logits, window_votes = MirroredPredictor(network, [0, 1], return_votes=True)(batch)
    assert set(np.unique(window_votes.numpy() * 4).round(4)) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def test_predict_writes_the_signals_per_case(trained_syn2d_home, tmp_path):
    from medseg_auto.cli.main import main

    raw = trained_syn2d_home.raw_dataset("Syn2d") / "imagesTr"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for image in sorted(raw.iterdir())[:3]:
        (inputs / image.name).write_bytes(image.read_bytes())
    args = ["predict", "-i", str(inputs), "-d", "Syn2d", "-c", "2d", "--home", str(trained_syn2d_home.root),
            "--no-progress"]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "ood_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for row in rows:
        for name in ("entropy_image", "entropy_foreground", "soft_dice_deficit", "mirror_disagreement"):
            assert 0.0 <= float(row[name]) <= 1.0
        assert row["fold_disagreement"] == ""  # one model
    assert set(UNCERTAINTY_SIGNALS) <= set(rows[0])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    case = rows[0]["case_id"]
    assert summary["ood"]["cases"][case]["signals"]["soft_dice_deficit"] == float(rows[0]["soft_dice_deficit"])
    failure = summary["ood"]["cases"][case]["failure"]
    assert failure["signal"] == summary["ood"]["failure"]["signal"] and failure["value"] == float(rows[0]["failure_score"])
    assert failure["flagged"] == (rows[0]["failure_flagged"] == "1") == (case in summary["ood"]["failure"]["likely_failed"])
