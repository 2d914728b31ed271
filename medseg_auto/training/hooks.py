"""The plug-in API: a :class:`DomainMethod` customises training only through these named hooks.

The :class:`~medseg_auto.training.trainer.Trainer` owns the loop (data, forward, loss, backward,
validation, checkpoints) and holds a list of methods; every hook has a do-nothing default, so a
method overrides only what its paper changes. A new method is one short file: a subclass,
decorated with :func:`~medseg_auto.training.registry.register_trainer`.

How several methods combine (a trainer may hold more than one):

=================================  ============================================================
hook                               combination
=================================  ============================================================
``add_cli_arguments`` (classmeth)  every method adds its own options to ``medseg-auto train``
``configure(settings)``            chained in order (settings -> settings)
``build_network(plans, config)``   the first non-``None`` wins; else the plans' DynUNet
``setup(context)``                 all, in order, once the network is on its device
``feature_taps()``                 union; forward hooks exist only for requested taps
``trainable_modules()``            all; their parameters join the default optimizer
``extra_loss(...)``                summed into the segmentation loss; logs merged
``make_sampler(info)``             the first non-``None`` wins; else uniform over cases
                                   (rebuilt every epoch if ``sampler_changes_per_epoch``)
``transform_batch(batch, epoch)``  chained in order on every training batch, before forward
``make_optimizer(params)``         the first non-``None`` wins; else SGD + poly LR
``on_epoch_start/end``             all, in order
``extra_checkpoint_state``         stored per method class name, restored to the same class
=================================  ============================================================
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.training.data.case_samplers import CaseSampler

SchedulerFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
NNUNET_ITERATIONS_PER_EPOCH = 250
NNUNET_VAL_ITERATIONS_PER_EPOCH = 50


@dataclass
class TrainingSettings:
    """The recipe's numbers; defaults are nnU-Net v2's (reference notes 2.1, 2.5).

    ``val_iterations_per_epoch=None`` scales nnU-Net's 50 with ``iterations_per_epoch``
    (50 of 250: one validation batch per five training batches, at least one).
    ``mirror_axes``: ``"all"``, a list of spatial axes, or ``None`` (no mirroring in training
    and none allowed for test-time augmentation). ``save_every``: epochs between
    ``checkpoint_latest.pt`` writes; 1 because a checkpoint costs well under 1% of an epoch
    even on a GPU (30 M parameters + momentum: ~250 MB), while nnU-Net's 50 could lose hours on
    a CPU. ``cpu_bf16``: bfloat16 autocast on CPU (see :mod:`.trainer` for the measurement).
    ``tensorboard``: also write TensorBoard curves and overlays (:mod:`.monitoring`).
    """

    num_epochs: int = 1000
    iterations_per_epoch: int = NNUNET_ITERATIONS_PER_EPOCH
    val_iterations_per_epoch: int | None = None
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    poly_exponent: float = 0.9
    grad_clip_norm: float = 12.0
    deep_supervision: bool = True
    mirror_axes: list[int] | str | None = "all"
    oversample_foreground_percent: float = 0.33
    save_every: int = 1
    cpu_bf16: bool = True
    batch_size: int | None = None
    num_workers: int | None = None
    tensorboard: bool = False

    @property
    def validation_iterations(self) -> int:
        if self.val_iterations_per_epoch is not None:
            return max(1, int(self.val_iterations_per_epoch))
        scaled = round(self.iterations_per_epoch * NNUNET_VAL_ITERATIONS_PER_EPOCH / NNUNET_ITERATIONS_PER_EPOCH)
        return max(1, scaled)


@dataclass(frozen=True)
class DatasetInfo:
    """What a sampler may know: the fold's training case ids, their sites, and (for samplers
    whose method sets ``sampler_changes_per_epoch``) the epoch it is built for."""

    case_ids: list[str]
    sites: dict[str, str | None]
    epoch: int = 0
    num_epochs: int = 1

    def cases_by_site(self) -> dict[str | None, list[str]]:
        groups: dict[str | None, list[str]] = {}
        for case in self.case_ids:
            groups.setdefault(self.sites.get(case), []).append(case)
        return groups


@dataclass
class OptimizerSetup:
    """An optimizer and, optionally, how to build its epoch-stepped LR scheduler.

    ``make_scheduler(optimizer, total_epochs)``; ``None`` keeps nnU-Net's poly decay.
    """

    optimizer: torch.optim.Optimizer
    make_scheduler: SchedulerFactory | None = None


@dataclass
class TrainingContext:
    """What :meth:`DomainMethod.setup` may read: the run's plans, network and device.

    ``network`` is the bare module (not the DDP wrapper). ``tap_channels`` gives the channel
    count of every tap name (see :mod:`medseg_auto.training.network`), so a method can size a
    discriminator or projection head for the features it asked for. For a network that is not
    a DynUNet (from ``build_network``) taps are its ``named_modules()`` names and
    ``tap_channels`` is empty. ``cache`` (a :class:`~medseg_auto.preprocessing.cache.PreprocessedCache`),
    ``train_case_ids`` and ``sites`` let a method read training cases itself (e.g. to embed
    features once per epoch); ``pretrained_checkpoint`` is ``--pretrained`` (e.g. to carry its
    optimizer state over); ``settings`` are the final training settings.
    """

    plans: Plans
    configuration: ConfigurationPlan
    network: nn.Module
    device: torch.device
    num_classes: int
    tap_channels: dict[str, int]
    rank: int = 0
    world_size: int = 1
    cache: Any = None
    train_case_ids: list[str] = field(default_factory=list)
    sites: dict[str, str | None] = field(default_factory=dict)
    output_folder: Path | None = None
    pretrained_checkpoint: Path | None = None
    settings: TrainingSettings | None = None


class DomainMethod:
    """Base class of every method; each hook's default leaves the nnU-Net recipe unchanged.

    ``options`` holds the values of the options the class added in :meth:`add_cli_arguments`
    (by their argparse ``dest``), with their defaults when the run was started from Python.
    They are stored in checkpoints (``init_args``), so keep them JSON-like.
    """

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: dict[str, Any] = {**self.default_options(), **dict(options or {})}

    # ----- options ---------------------------------------------------------------------------
    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this method's options to ``medseg-auto train`` (called once ``-tr`` is known)."""

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        """The defaults of the options :meth:`add_cli_arguments` declares."""
        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        cls.add_cli_arguments(parser)
        return vars(parser.parse_args([]))

    # ----- set-up ----------------------------------------------------------------------------
    def configure(self, settings: TrainingSettings) -> TrainingSettings:
        """Return changed training settings (epochs, mirroring, deep supervision, ...)."""
        return settings

    def build_network(self, plans: Plans, configuration: ConfigurationPlan) -> nn.Module | None:
        """Return a network ``(B, C, *patch) -> logits`` to replace the plans' DynUNet, or None."""
        return None

    def setup(self, context: TrainingContext) -> None:
        """Build the method's own modules (on ``context.device``) once the network exists."""

    def feature_taps(self) -> Sequence[str]:
        """Tap names whose outputs :meth:`extra_loss` receives (e.g. ``("bottleneck",)``); asked
        after :meth:`setup`, so the names may depend on the network (e.g. its last decoder stage)."""
        return ()

    def trainable_modules(self) -> Iterable[nn.Module]:
        """The method's own modules to train with the network (e.g. a discriminator)."""
        return ()

    #: True when :meth:`make_sampler` depends on ``info.epoch``: the trainer then rebuilds the
    #: training loader (and its workers) at the start of every epoch.
    sampler_changes_per_epoch: bool = False

    def make_sampler(self, info: DatasetInfo) -> CaseSampler | None:
        """A case sampler (``sample_batch(rng, batch_size) -> list[case_id]``), or None for uniform."""
        return None

    def transform_batch(self, batch: dict[str, Any], epoch: int) -> dict[str, Any]:
        """Change an augmented training batch in the main process, before it reaches the device.

        ``batch``: ``data`` float32 tensor ``(B, C, *patch)``, ``target`` int tensor
        ``(B, 1, *patch)``, ``case_ids`` and ``sites`` lists. For augmentations that need the
        whole batch (e.g. mixing amplitudes across sites). Validation batches are never passed.
        """
        return batch

    def make_optimizer(self, params: list[nn.Parameter]) -> OptimizerSetup | None:
        """An optimizer over ``params`` (network + trainable modules), or None for SGD + poly."""
        return None

    # ----- every step --------------------------------------------------------------------------
    def extra_loss(
        self,
        features: Mapping[str, torch.Tensor],
        logits: Sequence[torch.Tensor],
        target: torch.Tensor,
        batch: Mapping[str, Any],
    ) -> tuple[torch.Tensor, dict[str, float]] | None:
        """An extra loss term for this training step, or None.

        ``features``: tap name -> ``(B, F, *s)`` (see :mod:`~medseg_auto.training.network`);
        ``logits``: the heads, full resolution first, ``[(B, K, *patch), ...]``; ``target``
        ``(B, 1, *patch)`` int64; ``batch``: the loader's dict (``case_ids``, ``sites``, ...).
        Returns ``(scalar loss, {name: float})``; the names are logged per epoch (mean).
        """
        return None

    # ----- every epoch -------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called before the epoch's first step; ``logs`` holds the previous epochs' curves."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called after validation; ``logs`` is this epoch's row (may be extended, numbers only)."""

    # ----- checkpoints -------------------------------------------------------------------------
    def extra_checkpoint_state(self) -> dict[str, Any]:
        """Tensors, numbers, strings, lists and dicts to store (``torch.load(weights_only=True)``)."""
        return {}

    def load_extra_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_checkpoint_state` returned."""
