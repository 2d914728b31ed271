"""The plug-in API: a :class:`DomainMethod` customises training only through these named hooks.

This page is all a method's author needs to read. The
:class:`~medseg_auto.training.trainer.Trainer` owns the loop (data, forward, loss, backward,
validation, checkpoints) and holds a list of methods; every hook has a do-nothing default, so a
method overrides only what its paper changes. A new method is one short file in
``training/trainers/``: a subclass, decorated with
:func:`~medseg_auto.training.registry.register_trainer` (found by name, no other wiring).

How several methods combine (a trainer may hold more than one):

=================================  ============================================================
hook                               combination
=================================  ============================================================
``add_cli_arguments`` (classmeth)  every method adds its own options to ``medseg-auto train``
``configure(settings)``            chained in order (settings -> settings)
``build_network(plans, config)``   the first non-``None`` wins over ``--network``; else the
                                   registered network ``--network`` names (default DynUNet)
``setup(context)``                 all, in order, once the network is on its device
``feature_taps()``                 union; forward hooks exist only for requested taps
``trainable_modules()``            all; their parameters join the default optimizer
``extra_loss(...)``                summed into the segmentation loss; logs merged; runs inside
                                   the step's autocast (see :meth:`DomainMethod.extra_loss`)
``make_sampler(info)``             the first non-``None`` wins; else uniform over cases
                                   (rebuilt every epoch if ``sampler_changes_per_epoch``)
``transform_batch(batch, epoch)``  chained in order on every training batch, before forward
``make_optimizer(params)``         the first non-``None`` wins; else SGD + poly LR
``on_epoch_start/end``             all, in order
``extra_checkpoint_state``         stored per method class name, restored to the same class
=================================  ============================================================

What a method declares (class attributes):

=================================  ============================================================
attribute                          meaning
=================================  ============================================================
``min_training_sites`` (int, 1)    the training sites its mechanism needs; with fewer it reduces
                                   to another trainer (say which in the docstring). ``train``
                                   warns once at the start; ``experiment methods --trainers
                                   all`` leaves the trainer out (a combination needs the most
                                   any of its methods needs)
``sampler_changes_per_epoch``      see ``make_sampler``
``control_arm`` (str or None)      the trainer that isolates the method's own contribution (the
                                   same sampler or augmentation without the method's loss);
                                   ``experiment methods`` reports the paired difference to it
                                   beside the difference to Base when both arms ran
=================================  ============================================================

What the network offers a method (the network contract; every registered network and the
default DynUNet keep it, see :mod:`~medseg_auto.training.network_registry`):

=================================  ============================================================
member                             meaning
=================================  ============================================================
``network(x)`` (train mode)        the deep-supervision heads ``[(B, K, *patch), ...]``, full
                                   resolution first (one tensor without deep supervision)
``network(x)`` (eval mode)         logits ``(B, K, *patch)``
``forward_heads(x)`` (optional)    the heads in eval mode (validation loss); else ``network(x)``
``pop_auxiliary_heads()`` (opt.)   further head lists of the last training forward (e.g.
                                   CateNorm's second branch); each is supervised like the heads
feature taps                       ``encoder.i``, ``bottleneck``, ``decoder.j`` (sizes in
                                   ``TrainingContext.tap_channels``; the full-resolution decoder
                                   stage is :meth:`TrainingContext.last_decoder_tap`)
=================================  ============================================================

``build_network`` or ``--network``? A network usable with any trainer is registered in
:mod:`~medseg_auto.training.network_registry` and chosen with ``--network``. ``build_network``
is for a network that belongs to the method (its loss needs the architecture, so ``-tr NAME``
alone must reproduce the paper); ``predict`` rebuilds it from the trainer name.

Precision and seeds: a method that runs the network itself (a second view, target images)
wraps the forward in ``context.autocast()``, the trainer's own precision decision, and draws
its random numbers from ``context.seed``, the run's seed (the same on ``--continue``).
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

import torch
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
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


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> ContextManager[Any]:
    """``torch.autocast`` on ``device`` in ``dtype``; no autocast (float32) when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class TrainingContext:
    """What :meth:`DomainMethod.setup` may read: the run's plans, network, device and settings.

    ``network`` is the bare module (not the DDP wrapper). ``tap_channels`` gives the channel
    count of every tap name (see :mod:`medseg_auto.training.network`), so a method can size a
    discriminator or projection head for the features it asked for. For a network that is not
    a DynUNet (from ``build_network``) taps are its ``named_modules()`` names and
    ``tap_channels`` is empty. ``settings`` are the final training settings. ``cache``,
    ``train_case_ids`` and ``sites`` let a method read training cases itself (e.g. to embed
    features once per epoch); ``output_folder`` is the fold's folder (for a method's own files);
    ``pretrained_checkpoint`` is ``--pretrained`` (e.g. to carry its optimizer state over).
    ``seed`` is the run's seed (the recorded one on ``--continue``). ``autocast_dtype`` is the
    trainer's precision decision (float16 on CUDA, bfloat16 on a CPU where it is native and
    safe, None: float32); use it through :meth:`autocast`.
    """

    plans: Plans
    configuration: ConfigurationPlan
    network: nn.Module
    device: torch.device
    num_classes: int
    tap_channels: dict[str, int]
    settings: TrainingSettings
    rank: int = 0
    world_size: int = 1
    cache: PreprocessedCache | None = None
    train_case_ids: list[str] = field(default_factory=list)
    sites: dict[str, str | None] = field(default_factory=dict)
    output_folder: Path | None = None
    pretrained_checkpoint: Path | None = None
    seed: int = 0
    autocast_dtype: torch.dtype | None = None

    def autocast(self) -> ContextManager[Any]:
        """The training step's autocast, for a forward pass a method runs itself."""
        return autocast_context(self.device, self.autocast_dtype)

    def last_decoder_tap(self) -> str:
        """``decoder.{n-2}``: the full-resolution decoder stage (the features the output head reads)."""
        decoders = [name for name in self.tap_channels if name.startswith("decoder.")]
        if not decoders:
            raise MedsegError(f"{type(self.network).__name__} has no decoder taps (decoder.j); use a DynUNet-based "
                              "network (see training/network_registry.py)")
        return max(decoders, key=lambda name: int(name.split(".")[1]))


class DomainMethod:
    """Base class of every method; each hook's default leaves the nnU-Net recipe unchanged.

    ``options`` holds the values of the options the class added in :meth:`add_cli_arguments`
    (by their argparse ``dest``), with their defaults when the run was started from Python.
    They are stored in checkpoints (``init_args``), so keep them JSON-like.
    """

    #: Training sites the method's mechanism needs (sites to balance, unlearn or mix across);
    #: with fewer it reduces to another trainer. See the module docstring's table of declarations.
    min_training_sites: int = 1
    #: The trainer that isolates this method's contribution (e.g. Base with the same sampler);
    #: the method benchmark compares with it too. See the module docstring's table.
    control_arm: str | None = None

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
        """Return the method's own network (keeping the network contract above), or None for
        ``--network``'s. Only for a network that belongs to the method; see the module docstring."""
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
        """A case sampler (``sample_batch(rng, batch_size) -> list[case_id]``), or None for uniform.

        Ready-made ones in :mod:`medseg_auto.training.data.case_samplers`: ``UniformCaseSampler``
        (nnU-Net's) and ``SiteBalancedCaseSampler.from_sites(info.case_ids, info.sites)`` (equal
        shares of every site in every batch).
        """
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

        Runs inside the step's autocast, after the forward pass and before backward.
        ``features``: tap name -> ``(B, F, *s)`` (see :mod:`~medseg_auto.training.network`);
        ``logits``: the heads, full resolution first, ``[(B, K, *patch), ...]``. Both arrive in
        the autocast dtype (``context.autocast_dtype``: float16 on CUDA, bfloat16 on a CPU with
        bf16 autocast, float32 without): cast to ``.float()`` before sums of squares, variances
        or exponentials. ``target`` ``(B, 1, *patch)`` int64; ``batch``: the loader's dict
        (``case_ids``, ``sites``, ...). Returns ``(scalar loss, {name: float})``; the trainer
        adds ``loss.float()`` and logs the names per epoch (mean).
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
