"""Consistency (after Stain-AgLr): the jitter, the per-voxel KL, the reconstruction head's
gradients, and the trainer end to end (the head is kept for --continue, never in the network)."""

from __future__ import annotations

import pytest
import torch

from medseg_auto.inference.model_loading import load_fold
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.hooks import TrainingContext, TrainingSettings
from medseg_auto.training.network import build_dynunet, tap_channels
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.trainers.consistency import (
    BRIGHTNESS_RANGE, Consistency, intensity_jitter, voxel_kl,
)

from tests.helpers.toy_home import DATA_IDENTIFIER, TOY_DATASET, toy_plans


def test_jitter_changes_every_sample_and_keeps_shape_dtype_and_finiteness():
    images = torch.randn(4, 2, 8, 12)
    generator = torch.Generator().manual_seed(0)
    jittered = intensity_jitter(images, generator)
    assert jittered.shape == images.shape and jittered.dtype == images.dtype and torch.isfinite(jittered).all()
    assert all(not torch.allclose(jittered[i, c], images[i, c]) for i in range(4) for c in range(2))
    again = intensity_jitter(images, torch.Generator().manual_seed(0))
    assert torch.equal(jittered, again)  # reproducible from the generator
    # a constant image stays constant apart from the brightness shift (std 0: no shift at all)
    flat = torch.full((1, 1, 4, 4), 3.0)
    assert torch.allclose(intensity_jitter(flat, generator), flat)
    assert BRIGHTNESS_RANGE[0] < 0 < BRIGHTNESS_RANGE[1]


def test_voxel_kl_is_zero_for_identical_views_and_positive_otherwise():
    logits = torch.randn(2, 3, 5, 6)
    assert float(voxel_kl(logits, logits.clone())) == pytest.approx(0.0, abs=1e-6)
    other = logits + torch.randn_like(logits)
    assert float(voxel_kl(logits, other)) > 1e-3
    # against the formula: sum_k p (log p - log q), averaged over voxels and batch
    p, q = torch.softmax(logits, 1), torch.softmax(other, 1)
    expected = (p * (p.log() - q.log())).sum(1).mean()
    assert float(voxel_kl(logits, other)) == pytest.approx(float(expected), rel=1e-5)
    # the clean view is a fixed target: no gradient through it
    clean = logits.clone().requires_grad_(True)
    jittered = other.clone().requires_grad_(True)
    voxel_kl(clean, jittered).backward()
    assert clean.grad is None and jittered.grad.abs().sum() > 0


def _context(home, configuration="2d"):
    plans = toy_plans()
    config = plans.configuration(configuration)
    network = build_dynunet(config, 1, plans.num_classes)
    cache = PreprocessedCache(home.preprocessed / TOY_DATASET / DATA_IDENTIFIER)
    return TrainingContext(plans=plans, configuration=config, network=network, device=torch.device("cpu"),
                           num_classes=plans.num_classes, tap_channels=tap_channels(network), cache=cache,
                           settings=TrainingSettings())


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_reconstruction_head_and_network_get_gradients(toy_home, configuration):
    context = _context(toy_home, configuration)
    method = Consistency({"consistency_rampup": 0.0, "consistency_weight": 10.0})  # the paper's weights from step 1
    method.setup(context)
    network = context.network.train()
    data = torch.randn(2, 1, *context.configuration.patch_size)
    outputs = network(data)
    heads = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    loss, logs = method.extra_loss({}, heads, torch.zeros(1), {"data": data})
    assert logs["consistency_kl"] > 0 and logs["reconstruction_mse"] > 0
    assert float(loss.detach()) == pytest.approx(10 * logs["consistency_kl"] + 0.1 * logs["reconstruction_mse"], rel=1e-5)
    loss.backward()
    head_grads = [p.grad for p in method.head.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in head_grads)
    assert network.input_block.conv1.conv.weight.grad.abs().sum() > 0
    assert [m for m in method.trainable_modules()] == [method.head]
    assert not any(p is q for p in method.head.parameters() for q in network.parameters())


def test_reconstruction_weight_zero_turns_the_head_off(toy_home):
    context = _context(toy_home)
    method = Consistency({"reconstruction_weight": 0.0, "consistency_rampup": 0.0, "consistency_weight": 10.0})
    method.setup(context)
    data = torch.randn(2, 1, 16, 16)
    loss, logs = method.extra_loss({}, [context.network.train()(data)], torch.zeros(1), {"data": data})
    assert "reconstruction_mse" not in logs and float(loss.detach()) == pytest.approx(10 * logs["consistency_kl"], rel=1e-5)


@pytest.mark.slow
def test_consistency_trains_end_to_end_and_the_head_stays_out_of_the_network(toy_home):
    folder = train_fold(TrainRequest(toy_home, "Toy", "3d_fullres", 0, trainer_name="Consistency", device="cpu",
                                     seed=0, settings=dict(num_epochs=2, iterations_per_epoch=2, num_workers=0)))
    payload = load_checkpoint(folder / FINAL)
    head = payload["methods_state"]["Consistency"]["reconstruction_head"]
    assert set(head) == {"layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"}
    plain = build_dynunet(toy_plans().configuration("3d_fullres"), 1, 3).state_dict()
    assert set(payload["network_weights"]) == set(plain)  # the network saved is the plain one
    header = (folder / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"consistency_kl", "reconstruction_mse"} <= set(header)
    model = load_fold(folder.parent, "0")  # prediction rebuilds the plain network, no head
    assert set(model.network.state_dict()) == set(plain)


def test_head_round_trips_through_checkpoint_state(toy_home):
    first, second = Consistency(), Consistency()
    torch.manual_seed(1)
    first.setup(_context(toy_home))
    torch.manual_seed(2)
    second.setup(_context(toy_home))
    assert not torch.equal(first.head.layers[0].weight, second.head.layers[0].weight)
    second.load_extra_checkpoint_state(first.extra_checkpoint_state())
    assert all(torch.equal(a, b) for a, b in zip(first.head.state_dict().values(), second.head.state_dict().values()))
