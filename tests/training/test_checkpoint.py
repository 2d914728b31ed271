"""Checkpoints load with weights_only=True; random states round-trip; pretrained weights by shape."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from medseg_auto.training.checkpoint import (
    BEST, FINAL, LATEST, CheckpointError, capture_rng_states, find_resume_checkpoint, load_checkpoint,
    load_pretrained_weights, restore_rng_states, save_checkpoint,
)
from medseg_auto.training.network import build_dynunet

from tests.helpers.toy_home import toy_configuration


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng_states": capture_rng_states()})
    expected = (random.random(), np.random.normal(), torch.rand(1).item())
    restore_rng_states(load_checkpoint(tmp_path / "rng.pt")["rng_states"])
    assert (random.random(), np.random.normal(), torch.rand(1).item()) == expected


def test_arbitrary_objects_are_refused(tmp_path):
    torch.save({"object": object()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="plain-data"):
        load_checkpoint(tmp_path / "evil.pt")


def test_resume_prefers_final_then_latest_then_best(tmp_path):
    assert find_resume_checkpoint(tmp_path) is None
    for name in (BEST, LATEST, FINAL):
        save_checkpoint(tmp_path / name, {})
        assert find_resume_checkpoint(tmp_path).name == name


def test_pretrained_loads_matching_shapes_and_reports_the_rest(tmp_path):
    source = build_dynunet(toy_configuration(3), in_channels=1, num_classes=2)
    save_checkpoint(tmp_path / "source.pt", {"network_weights": {f"module.{k}": v for k, v in source.state_dict().items()}})
    target = build_dynunet(toy_configuration(3), in_channels=1, num_classes=3)
    report = load_pretrained_weights(target, tmp_path / "source.pt")
    heads = ("output_block", "deep_supervision_heads", "super_head")  # the class-dependent 1x1 convolutions
    assert report["skipped"] and all(any(part in n for part in heads) for n in report["skipped"])
    assert set(report["missing"]) == {n[len("module."):] for n in report["skipped"]}
    torch.testing.assert_close(target.state_dict()["input_block.conv1.conv.weight"],
                               source.state_dict()["input_block.conv1.conv.weight"])
