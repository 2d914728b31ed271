"""The segmentation network of a configuration: MONAI ``DynUNet`` built from the plans.

nnU-Net's ``PlainConvUNet`` and MONAI's ``DynUNet`` build the same topology (conv - instance
norm - leaky ReLU, twice per stage; strided convs down, transposed convs up); the plans'
``kernel_sizes`` and ``strides`` map onto DynUNet's arguments one to one, with
``upsample_kernel_size = strides[1:]`` (reference notes 4.2).

Deep supervision. nnU-Net supervises every decoder stage but gives the lowest-resolution head
weight 0, so the heads that count are the full-resolution output and stages ``1 .. n_stages-3``:
``deep_supr_num = n_stages - 3`` in DynUNet terms (none for a 3-stage network).

DynUNet's own training forward upsamples every head to full resolution (nearest) and stacks
them, ``(B, 1 + deep_supr_num, K, *patch)``; the loss is then evaluated ``1 + deep_supr_num``
times at full resolution. :class:`DeepSupervisedDynUNet` instead returns the heads at their
native resolution, ``[(B, K, *patch), (B, K, *patch / 2), ...]``, and the loss downsamples the
*target* (nearest, see :mod:`.loss`), as nnU-Net does. Measured on this project's 2-core CPU
(loss forward + backward only, 2 threads, busy machine): Hippocampus 3d_fullres (batch 9,
40x56x40, 2 supervised heads) 0.47 s native vs 0.63 s upsampled; a 6-stage 3D net (batch 2,
128^3, 4 heads) 1.1 s vs 3.6 s; a 7-stage 2D net (batch 12, 256^2, 5 heads) 1.0 s vs 1.8 s.
The native form is always cheaper, and it is nnU-Net's semantics, so it is what we use.
The state dict keys are DynUNet's, so a checkpoint loads into a plain ``DynUNet`` built with
``deep_supervision=True`` and the same ``deep_supr_num``.

Feature taps (for domain methods, see :mod:`.hooks`): forward hooks are registered only on
the submodules a method asks for, so an unused tap costs nothing. With ``n = n_stages``,
``f = features_per_stage`` and ``s_i`` the spatial size after stage ``i`` (``patch`` divided
by the product of ``strides[0..i]``):

==================  ===================================  ==========================
tap                 DynUNet submodule                    shape
==================  ===================================  ==========================
``encoder.0``       ``input_block``                      ``(B, f[0], *s_0)``
``encoder.i``       ``downsamples[i-1]``, 1 <= i <= n-2  ``(B, f[i], *s_i)``
``bottleneck``      ``bottleneck``                       ``(B, f[n-1], *s_{n-1})``
``decoder.j``       ``upsamples[j]``, 0 <= j <= n-2      ``(B, f[n-2-j], *s_{n-2-j})``
==================  ===================================  ==========================

``decoder.0`` is the deepest decoder stage (right after the bottleneck), ``decoder.{n-2}`` the
full-resolution one, whose output feeds the final 1x1 convolution.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from monai.networks.nets import DynUNet
from torch import nn

from medseg_auto.errors import PlansError
from medseg_auto.planning.plans import ConfigurationPlan
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.network")

NORM = ("INSTANCE", {"affine": True})
ACTIVATION = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})
LOWEST_UNSUPERVISED_STAGES = 2  # nnU-Net: the bottleneck has no head, the next one has weight 0


def deep_supervision_heads(n_stages: int) -> int:
    """Extra (lower-resolution) heads nnU-Net's weights keep: ``max(0, n_stages - 3)``."""
    return max(0, n_stages - 1 - LOWEST_UNSUPERVISED_STAGES)


class DeepSupervisedDynUNet(DynUNet):
    """DynUNet whose training forward returns the heads at native resolution.

    ``forward(x)`` with ``x`` ``(B, C, *patch)``: in training mode with deep supervision a list
    ``[(B, K, *patch), (B, K, *s_1), ..., (B, K, *s_h)]`` (full resolution first); otherwise
    the plain logits ``(B, K, *patch)``, as ``DynUNet`` in eval mode (what inference expects).
    :meth:`forward_heads` always returns the list (validation loss uses it in eval mode).
    """

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.output_block(self.skip_layers(x))
        if not self.deep_supervision:
            return [out]
        return [out, *self.heads]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        if self.training and self.deep_supervision:
            return self.forward_heads(x)
        return self.output_block(self.skip_layers(x))


def build_dynunet(
    configuration: ConfigurationPlan,
    in_channels: int,
    num_classes: int,
    deep_supervision: bool = True,
    network_class: type[DeepSupervisedDynUNet] = DeepSupervisedDynUNet,
) -> DeepSupervisedDynUNet:
    """The plans' network: kernel sizes, strides and features per stage from ``configuration.network``.

    ``deep_supervision`` is honoured only when the network has at least 4 stages (a 3-stage
    network has no head nnU-Net would weight). ``network_class``: a subclass that replaces
    blocks (see :mod:`.networks`) gets the same arguments.
    """
    network = configuration.network
    if network.network_class != "DynUNet":
        raise PlansError(f"network_class '{network.network_class}' is not supported (only DynUNet)")
    if any(n != 2 for n in [*network.n_conv_per_stage, *network.n_conv_per_stage_decoder]):
        raise PlansError(
            "DynUNet has two convolutions per stage; the plans ask for "
            f"{network.n_conv_per_stage} / {network.n_conv_per_stage_decoder}. Edit the plans or use another network."
        )
    if network.n_stages < 3:
        raise PlansError(f"DynUNet needs at least 3 stages, the plans have {network.n_stages}")
    heads = deep_supervision_heads(network.n_stages) if deep_supervision else 0
    return network_class(
        spatial_dims=configuration.spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        kernel_size=[list(k) for k in network.kernel_sizes],
        strides=[list(s) for s in network.strides],
        upsample_kernel_size=[list(s) for s in network.strides[1:]],
        filters=list(network.features_per_stage),
        norm_name=NORM,
        act_name=ACTIVATION,
        deep_supervision=heads > 0,
        deep_supr_num=max(1, heads),
    )


def stage_shapes(configuration: ConfigurationPlan) -> list[list[int]]:
    """Spatial size of every stage's output for one patch: ``s_i = patch / prod(strides[0..i])``."""
    size = list(configuration.patch_size)
    shapes = []
    for stride in configuration.network.strides:
        size = [-(-edge // step) for edge, step in zip(size, stride)]
        shapes.append(list(size))
    return shapes


def tap_modules(network: DynUNet) -> dict[str, nn.Module]:
    """Every tap name of :func:`network` (see the module docstring) and the submodule behind it."""
    modules: dict[str, nn.Module] = {"encoder.0": network.input_block}
    for index, block in enumerate(network.downsamples, start=1):
        modules[f"encoder.{index}"] = block
    modules["bottleneck"] = network.bottleneck
    for index, block in enumerate(network.upsamples):
        modules[f"decoder.{index}"] = block
    return modules


class FeatureTaps:
    """Records the outputs of the requested submodules during each forward pass.

    ``features`` maps tap name to the latest output (gradients flow through it). Hooks are
    registered only for ``names``; :meth:`clear` drops the references after a step so the
    activations are freed, :meth:`remove` unregisters the hooks.
    """

    def __init__(self, network: nn.Module, names: Sequence[str]) -> None:
        available = tap_modules(network) if isinstance(network, DynUNet) else dict(network.named_modules())
        unknown = [name for name in names if name not in available]
        if unknown:
            raise ValueError(f"unknown feature tap(s) {unknown}; available: {', '.join(available)}")
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [available[name].register_forward_hook(self._recorder(name)) for name in dict.fromkeys(names)]

    def _recorder(self, name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def record(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            self.features[name] = output

        return record

    def clear(self) -> None:
        self.features = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextlib.contextmanager
def tapped(network: nn.Module, name: str) -> Iterator[FeatureTaps]:
    """Record tap ``name`` while the block runs (``.features[name]`` holds its last output), for a
    method that runs the network itself (a second view, target images) and must not rely on the
    trainer's taps of the training batch."""
    taps = FeatureTaps(network, [name])
    try:
        yield taps
    finally:
        taps.remove()


def cpu_bf16_is_safe(configuration: ConfigurationPlan) -> bool:
    """False where torch's CPU bf16 convolution is known to compute wrong weight gradients.

    torch 2.13 (oneDNN) returns garbage, sometimes NaN, for the weight gradient of a bf16 3D
    convolution whose input depth is 2 (found with this project's toy plans; described in
    ``tests/training/test_network.py``). nnU-Net-style plans pool an axis only while it is at
    least 8, so this needs a patch with a very thin axis; there we fall back to float32.
    """
    if configuration.spatial_dims != 3:
        return True
    if any(shape[0] == 2 for shape in stage_shapes(configuration)):
        log.warning("bf16 autocast disabled on CPU: a stage of depth 2 hits a torch bf16 conv3d gradient bug")
        return False
    return True


def tap_channels(network: nn.Module) -> dict[str, int]:
    """Output channels ``F`` of each DynUNet tap (see the table above; empty for other networks)."""
    filters = getattr(network, "filters", None)
    if filters is None or not hasattr(network, "input_block"):
        return {}
    names = list(tap_modules(network))
    n = len(filters)
    channels = {f"encoder.{i}": filters[i] for i in range(n - 1)}
    channels["bottleneck"] = filters[-1]
    channels.update({f"decoder.{j}": filters[n - 2 - j] for j in range(n - 1)})
    return {name: int(channels[name]) for name in names}
