"""Networks by name (``medseg-auto train ... --network NAME``), usable with any trainer.

A network builder is ``builder(configuration, in_channels, num_classes, deep_supervision) ->
nn.Module``. The module must behave like
:class:`~medseg_auto.training.network.DeepSupervisedDynUNet`: in training mode with deep
supervision it returns the heads (full resolution first), in eval mode the logits
``(B, K, *patch)``. Subclassing ``DeepSupervisedDynUNet`` and replacing blocks keeps the
feature taps of :mod:`.network` working, so every domain method can use the new network.
A network that computes several predictions per training forward (e.g. CateNorm's two
branches) may also define ``pop_auxiliary_heads() -> list[list[Tensor]]``: the trainer adds
the segmentation loss of each returned head list to the step's loss.

The name is stored in each checkpoint (``network_name``), so ``predict`` rebuilds the same
network. Built-in variants live in :mod:`medseg_auto.training.networks`, imported on first
lookup by the same :class:`~medseg_auto.utils.plugins.PluginDiscovery` as the trainers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.planning.plans import ConfigurationPlan
from medseg_auto.training.network import build_dynunet
from medseg_auto.utils.plugins import PluginDiscovery

DEFAULT_NETWORK = "dynunet"
BUILTIN_PACKAGE = "medseg_auto.training.networks"
NetworkBuilder = Callable[[ConfigurationPlan, int, int, bool], nn.Module]


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    description: str
    builder: NetworkBuilder


_NETWORKS: dict[str, NetworkSpec] = {}
DISCOVERY = PluginDiscovery(BUILTIN_PACKAGE)


def register_network(name: str, description: str) -> Callable[[NetworkBuilder], NetworkBuilder]:
    """Function decorator: register ``builder`` as ``--network name``."""

    def decorate(builder: NetworkBuilder) -> NetworkBuilder:
        existing = _NETWORKS.get(name)
        if existing is not None and existing.builder is not builder:
            raise MedsegError(f"network name '{name}' is registered twice")
        _NETWORKS[name] = NetworkSpec(name, description, builder)
        return builder

    return decorate


register_network(DEFAULT_NETWORK, "MONAI DynUNet from the plans (nnU-Net's PlainConvUNet)")(build_dynunet)


def available_networks() -> dict[str, NetworkSpec]:
    DISCOVERY()
    return dict(sorted(_NETWORKS.items()))


def build_registered_network(name: str, configuration: ConfigurationPlan, in_channels: int, num_classes: int,
                             deep_supervision: bool = True) -> nn.Module:
    """Build network ``name``; an unknown name lists the known ones."""
    networks = available_networks()
    if name not in networks:
        raise MedsegError(f"unknown network '{name}'; available: {', '.join(networks)}")
    return networks[name].builder(configuration, in_channels, num_classes, deep_supervision)
