"""``--network disseg``: TeLU and its clamp, the blocks, forward shapes in 2D and 3D (heads and
taps as the plain DynUNet's), bf16 autocast, and a train -> predict round trip by name."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.helpers.toy_home import toy_configuration
from medseg_auto.inference.model_loading import load_fold
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.network import FeatureTaps, build_dynunet, tap_channels
from medseg_auto.training.network_registry import available_networks, build_registered_network
from medseg_auto.training.networks.disseg import DisSegDynUNet
from medseg_auto.training.networks.disseg_blocks import CBAT, ELAT, Refinement, telu
from medseg_auto.run.train import TrainRequest, train_fold


def test_telu_matches_its_formula_and_derivative_for_moderate_inputs():
    t = torch.linspace(-20, 8, 281, dtype=torch.float64, requires_grad=True)
    value = telu(t)
    torch.testing.assert_close(value, t * torch.tanh(torch.exp(t)))
    value.sum().backward()
    u = torch.exp(t.detach())
    derivative = torch.tanh(u) + t.detach() * u / torch.cosh(u).pow(2)  # App. A.1, Eq. 11
    torch.testing.assert_close(t.grad, derivative)
    assert float(telu(torch.tensor(8.5, dtype=torch.float64))) == 8.5  # beyond the clamp: tanh(e^8) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_telu_clamp_keeps_half_precision_finite(dtype):
    t = torch.tensor([-30.0, -1.0, 0.0, 5.0, 12.0, 100.0, 1e4], dtype=dtype, requires_grad=True)
    value = telu(t)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(t.grad).all()
    assert value[-3:].tolist() == t[-3:].tolist() and t.grad[-3:].tolist() == [1.0, 1.0, 1.0]
    naive = t.detach().clone().requires_grad_(True)
    (naive * torch.tanh(torch.exp(naive))).sum().backward()
    assert not torch.isfinite(naive.grad).all()  # what the clamp prevents: inf * sech^2(inf) = NaN


@pytest.mark.parametrize("dims", [2, 3])
def test_blocks_keep_the_shape(dims):
    x = torch.randn(2, 8, *([6] * dims))
    for block in (ELAT(dims, 8), CBAT(dims, 8), Refinement(dims, 8)):
        assert block(x).shape == x.shape
    assert torch.allclose(2 * torch.softmax(CBAT(dims, 8).balance_logits, 0), torch.ones(2))  # equal balance at start


@pytest.mark.parametrize("dims", [2, 3])
def test_forward_heads_and_taps_have_the_dynunet_shapes(dims):
    configuration = toy_configuration(dims)
    network = build_registered_network("disseg", configuration, 1, 3, True)
    plain = build_dynunet(configuration, 1, 3, True)
    assert isinstance(network, DisSegDynUNet) and "disseg" in available_networks()
    assert tap_channels(network) == tap_channels(plain)
    x = torch.randn(2, 1, *configuration.patch_size)
    taps = FeatureTaps(network, list(tap_channels(network)))
    plain_taps = FeatureTaps(plain, list(tap_channels(plain)))
    heads, plain_heads = network.train()(x), plain.train()(x)
    assert [h.shape for h in heads] == [h.shape for h in plain_heads]
    assert {k: v.shape for k, v in taps.features.items()} == {k: v.shape for k, v in plain_taps.features.items()}
    assert network.eval()(x).shape == (2, 3, *configuration.patch_size)
    assert len(network.scale_heads) == min(3, len(configuration.network.features_per_stage) - 1) - 1
    assert sum(p.numel() for p in network.parameters()) > sum(p.numel() for p in plain.parameters())


def test_the_coarse_scale_paths_reach_the_output():
    configuration = toy_configuration(3)
    network = build_registered_network("disseg", configuration, 1, 3, True).eval()
    x = torch.randn(1, 1, *configuration.patch_size)
    before = network(x)
    with torch.no_grad():
        network.scale_heads[0].bias.add_(1.0)  # D_M's head: a constant +1 on every fused logit
    torch.testing.assert_close(network(x), before + 1.0, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_forward_and_backward_are_finite():
    configuration = toy_configuration(3)
    network = build_registered_network("disseg", configuration, 1, 3, True).train()
    x = 50 * torch.randn(2, 1, *configuration.patch_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        heads = network(x)
        loss = sum(h.float().pow(2).mean() for h in heads)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)


@pytest.mark.slow
def test_train_then_predict_rebuilds_disseg_by_name(toy_home_factory):
    home = toy_home_factory(sites=["a", "b"] * 3)
    folder = train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="Dispersive", device="cpu", seed=0,
                                     network="disseg",
                                     settings=dict(num_epochs=1, iterations_per_epoch=1, num_workers=0)))
    assert folder.parent.name == "Dispersive-disseg__plans__2d"
    payload = load_checkpoint(folder / FINAL)
    assert payload["network_name"] == "disseg"
    model = load_fold(folder.parent, "0")
    assert isinstance(model.network, DisSegDynUNet)
    for name, tensor in model.network.state_dict().items():
        torch.testing.assert_close(tensor.cpu(), payload["network_weights"][name].cpu())
    with open(folder / "progress.csv") as handle:
        assert float(next(csv.DictReader(handle))["disp_weight"]) == 0.2  # the trainer saw the ELAT taps
    assert (folder / "validation" / "summary.json").is_file()
