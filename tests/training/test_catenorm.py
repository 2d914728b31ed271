"""``--network catenorm``: shapes in 2D and 3D, the two-branch forward, which parameters each
branch trains, warm start from a plain DynUNet, and training / prediction end to end."""

from __future__ import annotations

import pytest
import torch

from medseg_auto.inference.model_loading import load_fold
from medseg_auto.training.checkpoint import FINAL, load_checkpoint, load_pretrained_weights
from medseg_auto.training.loss import build_loss
from medseg_auto.training.network import build_dynunet, tap_channels, tapped
from medseg_auto.training.network_registry import available_networks, build_registered_network
from medseg_auto.training.networks.catenorm import CategoricalNorm, CateNormDynUNet
from medseg_auto.run.train import TrainRequest, train_fold

from tests.helpers.toy_home import toy_configuration


@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_and_stages(dims):
    config = toy_configuration(dims)
    network = build_registered_network("catenorm", config, 1, 3)
    assert isinstance(network, CateNormDynUNet)
    n_stages = config.network.n_stages
    assert len(network.categorical_norms) == 2 * min(4, n_stages - 1)  # never the bottleneck
    assert not any(isinstance(m, CategoricalNorm) for m in network.bottleneck.modules())
    x = torch.randn(2, 1, *config.patch_size)
    network.train()
    out = network(x)
    plain = build_dynunet(config, 1, 3).train()(x)
    if isinstance(plain, list):  # 3D toy: deep supervision, heads at native resolution
        assert [h.shape for h in out] == [h.shape for h in plain]
    else:
        assert out.shape == plain.shape == (2, 3, *config.patch_size)
    assert len(network.pop_auxiliary_heads()) == 1 and network.pop_auxiliary_heads() == []
    network.eval()
    assert network(x).shape == (2, 3, *config.patch_size)
    assert network.pop_auxiliary_heads() == []  # eval forwards hand nothing to a loss
    assert tap_channels(network) == tap_channels(build_dynunet(config, 1, 3))
    one = build_registered_network("catenorm1", config, 1, 3)
    assert len(one.categorical_norms) == 2 and {"catenorm", "catenorm1"} <= set(available_networks())


def test_two_passes_bn_then_catenorm_with_the_detached_softmax_mask():
    config = toy_configuration(3)
    network = build_registered_network("catenorm", config, 1, 3).train()
    x = torch.randn(2, 1, *config.patch_size)
    torch.manual_seed(0)
    bn_heads, cn_heads = network.forward_both(x)
    assert torch.allclose(bn_heads[0], network._pass(x, None)[0], atol=1e-6)
    mask = torch.softmax(bn_heads[0].detach(), 1)
    assert torch.allclose(cn_heads[0], network._pass(x, mask)[0], atol=1e-6)
    assert not torch.allclose(cn_heads[0], bn_heads[0])
    assert not torch.allclose(network._pass(x, torch.roll(mask, 1, dims=1))[0], cn_heads[0])  # the mask matters
    assert all(norm.mask is None for norm in network.categorical_norms)  # cleared after each pass
    network.eval()
    with torch.no_grad():
        assert torch.allclose(network(x), cn_heads[0], atol=1e-5)  # inference: the same two passes


def test_each_branch_trains_its_own_normalization_parameters():
    config = toy_configuration(3)
    network = build_registered_network("catenorm", config, 1, 3).train()
    x, target = torch.randn(2, 1, *config.patch_size), torch.randint(0, 3, (2, 1, *config.patch_size))
    loss = build_loss(False)
    cn_heads = network(x)
    bn_heads = network.pop_auxiliary_heads()[0]
    norm = network.categorical_norms[0]
    shared = network.input_block.conv1.conv.weight
    loss(bn_heads, target).backward(retain_graph=True)
    assert norm.weight.grad.abs().sum() > 0 and shared.grad.abs().sum() > 0
    assert all(p.grad is None for p in norm.categorical_parameters())  # L(y_B) leaves theta_NC alone
    network.zero_grad(set_to_none=True)
    loss(cn_heads, target).backward()
    assert norm.weight.grad is None and norm.bias.grad is None  # L(y_C) leaves theta_NB alone
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in norm.categorical_parameters())
    assert shared.grad.abs().sum() > 0


def test_warm_start_from_a_plain_dynunet_reproduces_it_in_the_bn_branch(tmp_path):
    config = toy_configuration(3)
    plain = build_dynunet(config, 1, 3)
    path = tmp_path / "plain.pt"
    torch.save({"network_weights": plain.state_dict()}, path)
    network = build_registered_network("catenorm", config, 1, 3)
    report = load_pretrained_weights(network, path)
    assert report["skipped"] == []
    assert report["missing"] and all(any(part in name for part in (".shared.", ".gamma.", ".beta."))
                                     for name in report["missing"])
    x = torch.randn(1, 1, *config.patch_size)
    plain.eval(), network.eval()
    with torch.no_grad():
        assert torch.allclose(network._pass(x, None)[0], plain(x), atol=1e-5)


def test_aiva_sees_the_catenorm_pass_bottleneck():
    config = toy_configuration(2)
    network = build_registered_network("catenorm", config, 1, 3).eval()
    x = torch.randn(2, 1, *config.patch_size)
    with torch.no_grad(), tapped(network, "bottleneck") as taps:
        network(x)
        last = taps.features["bottleneck"]
        mask = torch.softmax(network._pass(x, None)[0], 1)
        network._pass(x, mask)
        assert torch.allclose(last, taps.features["bottleneck"], atol=1e-6)


@pytest.mark.slow
def test_base_trainer_with_catenorm_trains_and_predict_rebuilds_it(toy_home):
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0, device="cpu", seed=0, network="catenorm",
                                     settings=dict(num_epochs=2, iterations_per_epoch=2, num_workers=0)))
    assert folder.parent.name == "Base-catenorm__plans__2d"
    assert load_checkpoint(folder / FINAL)["network_name"] == "catenorm"
    rows = (folder / "progress.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "auxiliary_seg_loss" in header
    last = dict(zip(header, rows[-1].split(",")))
    assert 0 < float(last["auxiliary_seg_loss"]) < float(last["train_loss"])  # the BN branch's share of the loss
    model = load_fold(folder.parent, "0")
    assert isinstance(model.network, CateNormDynUNet) and not model.network.training


@pytest.mark.slow
def test_catenorm_combines_with_a_method_that_runs_the_network_itself(toy_home):
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0, trainer_name="Consistency", device="cpu", seed=0,
                                     network="catenorm1",
                                     settings=dict(num_epochs=1, iterations_per_epoch=2, num_workers=0)))
    header = (folder / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"auxiliary_seg_loss", "consistency_kl", "reconstruction_mse"} <= set(header)
