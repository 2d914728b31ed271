"""The plans' DynUNet: native-resolution deep-supervision heads, eval output, feature taps."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DynUNet

from medseg_auto.training.network import (
    FeatureTaps, build_dynunet, cpu_bf16_is_safe, deep_supervision_heads, stage_shapes, tap_modules,
)

from tests.helpers.toy_home import toy_configuration


def test_deep_supervision_heads_skip_the_two_lowest_resolutions():
    assert [deep_supervision_heads(n) for n in (3, 4, 5, 6)] == [0, 1, 2, 3]


def test_3d_training_forward_returns_native_resolution_heads():
    network = build_dynunet(toy_configuration(3), in_channels=1, num_classes=3).train()
    heads = network(torch.randn(2, 1, 16, 32, 32))
    assert [tuple(h.shape) for h in heads] == [(2, 3, 16, 32, 32), (2, 3, 16, 16, 16)]
    network.eval()
    assert tuple(network(torch.randn(1, 1, 16, 32, 32)).shape) == (1, 3, 16, 32, 32)
    assert [tuple(h.shape) for h in network.forward_heads(torch.randn(1, 1, 16, 32, 32))] == [
        (1, 3, 16, 32, 32), (1, 3, 16, 16, 16)]


def test_2d_three_stages_have_no_deep_supervision():
    network = build_dynunet(toy_configuration(2), in_channels=1, num_classes=3).train()
    assert not network.deep_supervision
    assert tuple(network(torch.randn(2, 1, 16, 16)).shape) == (2, 3, 16, 16)


def test_weights_load_into_plain_dynunet_for_inference():
    network = build_dynunet(toy_configuration(3), in_channels=1, num_classes=3)
    plain = DynUNet(3, 1, 3, network.kernel_size, network.strides, network.upsample_kernel_size,
                    filters=network.filters, norm_name=("INSTANCE", {"affine": True}),
                    deep_supervision=True, deep_supr_num=1)
    plain.load_state_dict(network.state_dict())
    x = torch.randn(1, 1, 16, 32, 32)
    torch.testing.assert_close(plain.eval()(x), network.eval()(x))


def test_feature_taps_record_documented_shapes_only_when_requested():
    network = build_dynunet(toy_configuration(3), in_channels=1, num_classes=3).train()
    assert list(tap_modules(network)) == [
        "encoder.0", "encoder.1", "encoder.2", "bottleneck", "decoder.0", "decoder.1", "decoder.2"]
    taps = FeatureTaps(network, ["encoder.0", "bottleneck", "decoder.0", "decoder.2"])
    network(torch.randn(2, 1, 16, 32, 32))
    shapes = {name: tuple(t.shape) for name, t in taps.features.items()}
    assert shapes == {
        "encoder.0": (2, 4, 16, 32, 32), "bottleneck": (2, 32, 4, 4, 4),
        "decoder.0": (2, 16, 8, 8, 8), "decoder.2": (2, 4, 16, 32, 32),
    }
    taps.remove()
    taps.clear()
    network(torch.randn(1, 1, 16, 32, 32))
    assert taps.features == {}


def test_stage_shapes_follow_the_strides():
    assert stage_shapes(toy_configuration(3)) == [[16, 32, 32], [16, 16, 16], [8, 8, 8], [4, 4, 4]]
    assert stage_shapes(toy_configuration(2)) == [[16, 16], [8, 8], [4, 4]]


def test_unknown_tap_lists_the_available_ones():
    network = build_dynunet(toy_configuration(2), in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="available: encoder.0"):
        FeatureTaps(network, ["encoder.9"])


def test_bf16_is_refused_where_torch_computes_wrong_conv3d_weight_gradients():
    """torch 2.13 CPU: bf16 conv3d weight gradients are garbage when the input depth is 2.

    Seen as: the same backward of ``Conv3d(32, 32, 3, padding=1)`` on a ``(2, 32, 2, 4, 4)``
    input under bf16 autocast gives a different weight gradient each time (up to 1e35, or NaN);
    depth 1, 3 and more are fine. The trainer trains such plans in float32.
    """
    from dataclasses import replace

    configuration = toy_configuration(3)
    assert cpu_bf16_is_safe(configuration) and cpu_bf16_is_safe(toy_configuration(2))
    thin = replace(configuration, patch_size=[8, 32, 32])  # stages of depth 8, 8, 4, 2
    assert not cpu_bf16_is_safe(thin)
