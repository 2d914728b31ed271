"""The DART 2022 fine-tuning and optimizer trainers: MixedMinibatchTransfer (MMTL),
OptimizerCarryOver (OCTL), AvaGrad, and TrainOnSites (source-only / target-only training).

End-to-end runs use the two-site toy data (sites ``a`` and ``b``; fold 0 trains on
case_000..002 of site a and case_004 of site b) and the 2d configuration (batch 4)."""

from __future__ import annotations

import csv
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.training.checkpoint import FINAL, CheckpointError, load_checkpoint, save_checkpoint
from medseg_auto.training.hooks import DatasetInfo, DomainMethod, TrainingContext, TrainingSettings
from medseg_auto.training.network import build_dynunet
from medseg_auto.training.registry import register_trainer
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.trainers.avagrad import AvaGrad
from medseg_auto.training.trainers.mixed_minibatch_transfer import (
    MixedMinibatchSampler, MixedMinibatchTransfer, target_count,
)
from medseg_auto.training.trainers.optimizer_carry_over import OptimizerCarryOver
from medseg_auto.training.trainers.train_on_sites import TrainOnSites

from tests.helpers.toy_home import make_toy_home, toy_configuration, toy_plans

SITES = ["a", "a", "a", "b", "b", "b"]
FAST = dict(device="cpu", seed=0)
FAST_SETTINGS = dict(num_workers=0, iterations_per_epoch=2, val_iterations_per_epoch=1)


@register_trainer("SiteRecorderTest")
class SiteRecorder(DomainMethod):
    """Test only: records the sites of every training batch, per epoch."""

    batches: list[tuple[int, list[str]]] = []

    def transform_batch(self, batch, epoch):
        SiteRecorder.batches.append((epoch, list(batch["sites"])))
        return batch


@pytest.fixture(scope="module")
def two_site_home(tmp_path_factory):
    return make_toy_home(tmp_path_factory.mktemp("dart") / "home", sites=SITES)


@pytest.fixture(scope="module")
def source_checkpoint(two_site_home):
    """A source model: TrainOnSites on site a only (its batches are checked in the test below)."""
    SiteRecorder.batches.clear()
    folder = train_fold(TrainRequest(two_site_home, "Toy", "2d", 0, trainer_name="TrainOnSites+SiteRecorderTest",
                                     trainer_options={"train_sites": ["a"]},
                                     settings=dict(num_epochs=1, **FAST_SETTINGS), **FAST))
    source_batches = list(SiteRecorder.batches)
    return folder / FINAL, source_batches


def progress_rows(folder):
    with open(folder / "progress.csv") as handle:
        return list(csv.DictReader(handle))


# ----- MMTL --------------------------------------------------------------------------------------
def test_target_count_is_the_papers_floor_exactly():
    for epochs in (1, 3, 7, 50, 60):
        for batch in (1, 2, 10, 16):
            counts = [target_count(epoch, epochs, batch) for epoch in range(epochs)]
            assert counts == [math.floor(Fraction(epoch, epochs) * batch) for epoch in range(epochs)]
            assert counts[0] == 0 and counts == sorted(counts)
            assert counts[-1] == batch - math.ceil(Fraction(batch, epochs))  # a source case stays to the end
    assert [target_count(e, 5, 10) for e in range(5)] == [0, 2, 4, 6, 8]
    assert target_count(59, 60, 16) == 15


def test_mixed_sampler_counts_sites_and_shuffles():
    source, target = ["s0", "s1", "s2"], ["t0", "t1"]
    rng = np.random.default_rng(0)
    positions = set()
    for epoch in range(5):
        sampler = MixedMinibatchSampler(source, target, epoch, 5)
        for _ in range(100):
            batch = sampler.sample_batch(rng, 10)
            picked = [case for case in batch if case in target]
            assert len(batch) == 10 and len(picked) == 2 * epoch
            assert set(batch) <= set(source) | set(target)
            positions.update(i for i, case in enumerate(batch) if case in target)
    assert positions == set(range(10))  # target cases are not parked at one end of the batch


def test_mixed_sampler_refuses_bad_sites():
    info = DatasetInfo(["x1", "x2", "y1"], {"x1": "x", "x2": "x", "y1": "y"}, epoch=1, num_epochs=4)
    assert isinstance(MixedMinibatchTransfer({"target_site": "y"}).make_sampler(info), MixedMinibatchSampler)
    with pytest.raises(MedsegError, match="needs --target-site .*x, y"):
        MixedMinibatchTransfer().make_sampler(info)
    with pytest.raises(MedsegError, match="--target-site z: no training case"):
        MixedMinibatchTransfer({"target_site": "z"}).make_sampler(info)
    only_target = DatasetInfo(["y1"], {"y1": "y"})
    with pytest.raises(MedsegError, match="no source"):
        MixedMinibatchTransfer({"target_site": "y"}).make_sampler(only_target)


@pytest.mark.slow
def test_mmtl_end_to_end_follows_the_schedule(two_site_home, source_checkpoint):
    checkpoint, _ = source_checkpoint
    SiteRecorder.batches.clear()
    folder = train_fold(TrainRequest(two_site_home, "Toy", "2d", 0,
                                     trainer_name="MixedMinibatchTransfer+SiteRecorderTest", pretrained=checkpoint,
                                     trainer_options={"target_site": "b"},
                                     settings=dict(num_epochs=3, **FAST_SETTINGS), **FAST))
    assert (folder / FINAL).is_file()
    assert len(SiteRecorder.batches) == 6
    for epoch, sites in SiteRecorder.batches:  # batch 4, 3 epochs: 0, 1, 2 target cases
        assert len(sites) == 4 and sites.count("b") == target_count(epoch, 3, 4) == [0, 1, 2][epoch]


# ----- TrainOnSites ------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_on_sites_draws_only_those_sites(source_checkpoint):
    checkpoint, batches = source_checkpoint
    assert checkpoint.is_file() and batches and all(set(sites) == {"a"} for _, sites in batches)
    info = DatasetInfo(["x1", "y1"], {"x1": "x", "y1": "y"})
    assert TrainOnSites({"train_sites": ["y"]}).make_sampler(info).case_ids == ["y1"]
    with pytest.raises(MedsegError, match="site\\(s\\) z"):
        TrainOnSites({"train_sites": ["z"]}).make_sampler(info)
    with pytest.raises(MedsegError, match="needs --train-sites"):
        TrainOnSites().make_sampler(info)


# ----- OCTL --------------------------------------------------------------------------------------
def octl_for(network: nn.Module, pretrained, settings: TrainingSettings | None = None, **options) -> OptimizerCarryOver:
    plans = toy_plans()
    method = OptimizerCarryOver(options)
    method.setup(TrainingContext(plans=plans, configuration=plans.configuration("2d"), network=network,
                                 device=torch.device("cpu"), num_classes=3, tap_channels={},
                                 pretrained_checkpoint=pretrained, settings=settings or TrainingSettings()))
    return method


@pytest.mark.slow
def test_octl_carries_the_source_momentum_buffers(source_checkpoint):
    checkpoint, _ = source_checkpoint
    source = load_checkpoint(checkpoint)["optimizer_state"]
    network = build_dynunet(toy_configuration(2), 1, 3)
    params = list(network.parameters())
    setup = octl_for(network, checkpoint).make_optimizer(params)
    optimizer = setup.optimizer
    assert isinstance(optimizer, torch.optim.SGD) and setup.make_scheduler is None
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.99 and group["nesterov"] is True and group["lr"] == TrainingSettings().initial_lr
    order = source["param_groups"][0]["params"]
    assert len(order) == len(params)
    for index, param in zip(order, params):
        buffer = source["state"][index]["momentum_buffer"]
        assert buffer.abs().sum() > 0  # a real history, not zeros
        assert torch.equal(optimizer.state[param]["momentum_buffer"], buffer)
        assert optimizer.state[param]["momentum_buffer"].data_ptr() != buffer.data_ptr()


@pytest.mark.slow
def test_octl_refuses_mismatched_networks_and_bare_weights(source_checkpoint, tmp_path):
    checkpoint, _ = source_checkpoint
    other_count = build_dynunet(toy_configuration(3), 1, 3)
    with pytest.raises(CheckpointError, match="parameter tensors, this run trains"):
        octl_for(other_count, checkpoint).make_optimizer(list(other_count.parameters()))
    other_classes = build_dynunet(toy_configuration(2), 1, 4)  # same count, different output shapes
    with pytest.raises(CheckpointError, match="has shape .* this network's has"):
        octl_for(other_classes, checkpoint).make_optimizer(list(other_classes.parameters()))
    weights_only = tmp_path / "weights.pt"
    save_checkpoint(weights_only, {"network_weights": load_checkpoint(checkpoint)["network_weights"]})
    network = build_dynunet(toy_configuration(2), 1, 3)
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        octl_for(network, weights_only).make_optimizer(list(network.parameters()))


def test_octl_adam_uses_step_offset_100_in_the_bias_correction(tmp_path):
    torch.manual_seed(0)
    source_model = nn.Linear(3, 2)
    adam = torch.optim.Adam(source_model.parameters(), lr=1e-2)
    for _ in range(5):
        adam.zero_grad()
        source_model(torch.randn(4, 3)).pow(2).sum().backward()
        adam.step()
    path = tmp_path / "adam_source.pt"
    save_checkpoint(path, {"optimizer_state": adam.state_dict()})

    model = nn.Linear(3, 2)
    params = list(model.parameters())
    optimizer = octl_for(model, path).make_optimizer(params).optimizer
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["betas"] == (0.99, 0.999)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    before = [p.detach().clone() for p in params]
    moments = [(optimizer.state[p]["exp_avg"].clone(), optimizer.state[p]["exp_avg_sq"].clone()) for p in params]
    for p, source_param in zip(params, source_model.parameters()):
        assert torch.equal(optimizer.state[p]["exp_avg"], adam.state[source_param]["exp_avg"])
        assert torch.equal(optimizer.state[p]["exp_avg_sq"], adam.state[source_param]["exp_avg_sq"])
        assert float(optimizer.state[p]["step"]) == 100
    model(torch.randn(4, 3)).pow(2).sum().backward()
    optimizer.step()
    for p, w0, (m0, v0) in zip(params, before, moments):  # Algorithm 3, t = 1, with g_t (not g_t^2) in M
        g = p.grad
        m1 = 0.99 * m0 + 0.01 * g
        v1 = 0.999 * v0 + 0.001 * g * g
        expected = w0 - 1e-3 * (m1 / (1 - 0.99 ** 101)) / ((v1 / (1 - 0.999 ** 101)).sqrt() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_octl_end_to_end_needs_pretrained_and_resumes(two_site_home, source_checkpoint):
    checkpoint, _ = source_checkpoint
    with pytest.raises(MedsegError, match="needs --pretrained"):
        train_fold(TrainRequest(two_site_home, "Toy", "2d", 1, trainer_name="OptimizerCarryOver",
                                settings=dict(num_epochs=1, **FAST_SETTINGS), **FAST))
    folder = train_fold(TrainRequest(two_site_home, "Toy", "2d", 0, trainer_name="OptimizerCarryOver",
                                     pretrained=checkpoint, settings=dict(num_epochs=1, **FAST_SETTINGS), **FAST))
    state = load_checkpoint(folder / FINAL)
    assert state["methods_state"]["OptimizerCarryOver"]["carried_parameters"] == len(
        state["optimizer_state"]["param_groups"][0]["params"])
    train_fold(TrainRequest(two_site_home, "Toy", "2d", 0, trainer_name="OptimizerCarryOver",
                            continue_training=True, settings=dict(num_epochs=2, **FAST_SETTINGS), **FAST))
    assert [int(row["epoch"]) for row in progress_rows(folder)] == [0, 1]


# ----- AvaGrad -----------------------------------------------------------------------------------
def avagrad_by_hand(weights, gradient, steps, lr, eps, betas=(0.9, 0.999)):
    """The printed equations (m_t; eta_t from v_{t-1}; w -= lr eta/||eta/sqrt(d)|| m_t; v_t) with
    beta_{1,t}, beta_{2,t} as Adam's bias correction, step 1 only filling the moments, and the
    normaliser ||eta/sqrt(d)|| taken over all parameters at the previous step (as the reference
    code computes it in its single pass). Float64 numpy; ``gradient(weights) -> list``."""
    beta1, beta2 = betas
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    d = sum(w.size for w in weights)
    gamma = None
    history = []
    for t in range(1, steps + 1):
        g = gradient(weights)
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g)]
        if t > 1:
            eta = [1.0 / (np.sqrt(vi / (1 - beta2 ** (t - 1))) + eps) for vi in v]
            weights = [w - lr * gamma * eta_i * mi / (1 - beta1 ** t) for w, eta_i, mi in zip(weights, eta, m)]
        eta_next = [1.0 / (np.sqrt(vi / (1 - beta2 ** t)) + eps) for vi in v]
        gamma = 1.0 / math.sqrt(sum(float((e ** 2).sum()) for e in eta_next) / d)
        v = [beta2 * vi + (1 - beta2) * gi ** 2 for vi, gi in zip(v, g)]
        history.append([w.copy() for w in weights])
    return history


def test_avagrad_update_matches_a_hand_computation():
    target = [np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([0.25, -1.5, 2.0])]
    start = [np.array([[0.1, 0.2], [-0.3, 0.4]]), np.array([0.0, 0.5, -0.5])]
    scale = [np.array([[1.0, 4.0], [0.25, 2.0]]), np.array([3.0, 0.5, 1.0])]

    def gradient(weights):  # loss = sum(scale * (w - target)^2 / 2), different curvature per entry
        return [s * (w - c) for w, c, s in zip(weights, target, scale)]

    lr, eps, steps = 0.05, 0.1, 6
    expected = avagrad_by_hand(start, gradient, steps, lr, eps)
    method = AvaGrad({"avagrad_lr": lr, "avagrad_eps": eps})
    params = [nn.Parameter(torch.tensor(w, dtype=torch.float64)) for w in start]
    optimizer = method.make_optimizer(params).optimizer
    for step in range(steps):
        optimizer.zero_grad()
        loss = sum((torch.tensor(s) * (p - torch.tensor(c)) ** 2 / 2).sum() for p, c, s in zip(params, target, scale))
        loss.backward()
        optimizer.step()
        for p, w in zip(params, expected[step]):
            np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-10, atol=1e-12)
    assert not np.allclose(expected[-1][0], start[0])  # it moved


@pytest.mark.slow
def test_avagrad_trainer_settings_and_checkpoint(two_site_home):
    settings = AvaGrad().configure(TrainingSettings())
    assert settings.num_epochs == 50 and settings.initial_lr == 10.0
    folder = train_fold(TrainRequest(two_site_home, "Toy", "2d", 0, trainer_name="AvaGrad",
                                     settings=dict(num_epochs=2, **FAST_SETTINGS), **FAST))
    rows = progress_rows(folder)
    assert [float(row["lr"]) for row in rows] == pytest.approx([10.0, 10.0 * 0.5 ** 0.9])  # poly over 2 epochs
    state = load_checkpoint(folder / FINAL)["optimizer_state"]  # weights_only=True
    group = state["param_groups"][0]
    assert group["eps"] == 0.1 and group["step"] == 4 and group["gamma"] > 0 and group["weight_decay"] == 0.0


@pytest.mark.slow
def test_fine_tune_on_sites_with_octl_trains_on_the_target_only(two_site_home, source_checkpoint):
    """The paper's OCTL setting: target cases only, source optimizer state; its own results folder."""
    checkpoint, _ = source_checkpoint
    SiteRecorder.batches.clear()
    name = "FineTuneOnSites+OptimizerCarryOver+SiteRecorderTest"
    folder = train_fold(TrainRequest(two_site_home, "Toy", "2d", 0, trainer_name=name, pretrained=checkpoint,
                                     trainer_options={"train_sites": ["b"]},
                                     settings=dict(num_epochs=1, **FAST_SETTINGS), **FAST))
    assert folder.parent.name.startswith("FineTuneOnSites+OptimizerCarryOver")
    assert SiteRecorder.batches and all(set(sites) == {"b"} for _, sites in SiteRecorder.batches)
    assert load_checkpoint(folder / FINAL)["methods_state"]["OptimizerCarryOver"]["carried_parameters"] > 0
