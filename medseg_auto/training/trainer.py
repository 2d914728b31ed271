"""The training loop (nnU-Net v2's recipe); domain methods change it only through their hooks.

One :class:`Trainer` trains one fold: per epoch ``iterations_per_epoch`` SGD steps on
augmented patches, then ``validation_iterations`` batches of unaugmented patches for the
validation loss and the pseudo Dice, one poly-LR step, the progress files and the
checkpoints. What the hooks can change is listed in :mod:`.hooks`; the loop itself is not meant
to be overridden.

Precision. On CUDA: float16 autocast with a ``GradScaler`` and ``cudnn.benchmark`` (nnU-Net).
On CPU: bfloat16 autocast by default (``TrainingSettings.cpu_bf16``; ``--no-bf16`` turns it
off). Measured on this project's 2-core AVX-512-BF16 CPU, Hippocampus 3d_fullres (batch 9,
patch 40x56x40, 4 stages of 32-256 features), one full step (forward, loss, backward, clip,
SGD): 5.1 s float32 vs 2.6 s bf16 on an idle machine (one step each), 16.2 s vs 9.6 s
(medians of 24 steps) with other jobs running. On 25 real Hippocampus batches from the same
initialisation the bf16 and float32 losses agreed to three decimals (1.870 -> 1.092 both); on
the toy problem of the tests the curves matched over 200 steps. The loss itself is computed in
float32. A CPU without native bf16 (no AVX512-BF16/AMX) would be slower with it, so there it stays off. One torch bug is
avoided automatically (see :func:`~medseg_auto.training.network.cpu_bf16_is_safe`).

Data streams. Each loader is seeded from ``(seed, first epoch of this process)``, so a run is
reproducible, and a resumed run (``--continue``) restores weights, optimizer, scheduler, grad
scaler, curves and random states exactly but draws fresh batches from the resume point on.
"""

from __future__ import annotations

import gc
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ContextManager, Iterator, Mapping

import numpy as np
import torch

from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training import checkpoint as ckpt
from medseg_auto.training.data.loader import BatchLoader, make_training_loader, make_validation_loader
from medseg_auto.training.distributed import (
    DistributedContext, all_reduce_sum, average_gradients, rank_batch_size, unwrap_network, wrap_network,
)
from medseg_auto.training.hooks import (
    DatasetInfo, DomainMethod, OptimizerSetup, TrainingContext, TrainingSettings, autocast_context,
)
from medseg_auto.training.loss import build_loss
from medseg_auto.training.network import FeatureTaps, cpu_bf16_is_safe, tap_channels
from medseg_auto.training.network_registry import DEFAULT_NETWORK, build_registered_network
from medseg_auto.training.monitoring import TrainingMonitor
from medseg_auto.training.progress import (
    PROGRESS_CSV, PROGRESS_PNG, ProgressLog, confusion_counts, dice_from_counts, nanmean,
)
from medseg_auto.training.site_requirements import warn_if_too_few_sites
from medseg_auto.utils.cpu_features import cpu_has_native_bf16
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training")


@dataclass
class TrainingJob:
    """What one trainer trains: a fold of a configuration's cache, and where its files go."""

    plans: Plans
    configuration_name: str
    cache: PreprocessedCache
    train_case_ids: list[str]
    val_case_ids: list[str]
    sites: dict[str, str | None]
    output_folder: Path
    trainer_name: str = "Base"
    seed: int = 12345
    init_args: dict[str, Any] | None = None
    pretrained: Path | None = None
    network_name: str = DEFAULT_NETWORK

    @property
    def configuration(self) -> ConfigurationPlan:
        return self.plans.configuration(self.configuration_name)


class Trainer:
    """Trains one fold with the nnU-Net recipe plus the hooks of ``methods``."""

    def __init__(
        self,
        job: TrainingJob,
        methods: list[DomainMethod],
        settings: TrainingSettings | None = None,
        device: torch.device | str = "cpu",
        distributed: DistributedContext | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        """``settings`` pass through every method's ``configure``; ``overrides`` (explicit user
        choices such as ``--epochs``) are applied after, so they win over a method's preset."""
        self.job = job
        self.methods = list(methods)
        self.device = torch.device(device)
        self.distributed = distributed or DistributedContext()
        settings = settings or TrainingSettings()
        for method in self.methods:
            settings = method.configure(settings)
        self.settings = replace(settings, **dict(overrides or {}))
        self.current_epoch = 0
        self.sampled_case_ids: list[str] | None = None  # set with the training loader
        self.best_ema = -math.inf
        self.progress = ProgressLog()
        self._set_up()
        self.monitor = (TrainingMonitor(job.output_folder, self.settings.num_epochs, self.settings.tensorboard)
                        if self.distributed.is_main else None)

    # ----- set-up ------------------------------------------------------------------------------
    def _set_up(self) -> None:
        plans, configuration = self.job.plans, self.job.configuration
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        random.seed(self.job.seed)
        np.random.seed(self.job.seed % 2**32)
        torch.manual_seed(self.job.seed)
        network = _first(m.build_network(plans, configuration) for m in self.methods)
        if network is None:
            network = build_registered_network(self.job.network_name, configuration, plans.num_input_channels,
                                               plans.num_classes, self.settings.deep_supervision)
        self.network = network.to(self.device)
        self.cpu_bf16 = (self.device.type == "cpu" and self.settings.cpu_bf16 and cpu_has_native_bf16()
                         and cpu_bf16_is_safe(configuration))  # emulated bf16 is slower than float32
        self.autocast_dtype = torch.float16 if self.device.type == "cuda" else (torch.bfloat16 if self.cpu_bf16 else None)
        context = TrainingContext(
            plans=plans, configuration=configuration, network=self.network, device=self.device,
            num_classes=plans.num_classes, tap_channels=tap_channels(self.network), settings=self.settings,
            rank=self.distributed.rank, world_size=self.distributed.world_size,
            cache=self.job.cache, train_case_ids=list(self.job.train_case_ids), sites=dict(self.job.sites),
            output_folder=self.job.output_folder, pretrained_checkpoint=self.job.pretrained, seed=self.job.seed,
            autocast_dtype=self.autocast_dtype,
        )
        if self.distributed.is_main:
            warn_if_too_few_sites(self.job.trainer_name, self.methods, self.job.train_case_ids, self.job.sites)
        for method in self.methods:
            method.setup(context)
        # asked after setup, so a method can choose its taps from the network it was shown
        taps = sorted({name for m in self.methods for name in m.feature_taps()})
        self.taps = FeatureTaps(self.network, taps) if taps else None
        self.method_parameters = [p for m in self.methods for module in m.trainable_modules() for p in module.parameters()]
        self.parameters = [*self.network.parameters(), *self.method_parameters]
        setup = _first(m.make_optimizer(self.parameters) for m in self.methods) or self._default_optimizer()
        self.optimizer = setup.optimizer
        make_scheduler = setup.make_scheduler or self._poly_scheduler
        self.scheduler = make_scheduler(self.optimizer, self.settings.num_epochs)
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.device.type == "cuda" else None
        self.loss = build_loss(configuration.batch_dice)
        self.model = wrap_network(self.network, self.device, self.distributed)

    def release_distributed(self) -> None:
        """Drop the DDP wrapper before the process group is destroyed (after :meth:`fit`).

        DDP's reducer holds the process group and with it gloo's worker threads; if it outlives
        ``destroy_process_group`` they are torn down at interpreter exit, which now and then
        aborted a rank that finished early ("terminate called without an active exception")."""
        self.model = unwrap_network(self.model)
        gc.collect()

    def _default_optimizer(self) -> OptimizerSetup:
        s = self.settings
        optimizer = torch.optim.SGD(self.parameters, lr=s.initial_lr, momentum=s.momentum,
                                    weight_decay=s.weight_decay, nesterov=True)
        return OptimizerSetup(optimizer)

    def _poly_scheduler(self, optimizer: torch.optim.Optimizer, total_epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        """nnU-Net's ``lr = lr0 * (1 - epoch / total) ** 0.9``, stepped once per epoch."""
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_epochs,
                                                     power=self.settings.poly_exponent)

    @property
    def mirror_axes(self) -> list[int] | None:
        """Spatial axes mirrored in training, and therefore allowed for test-time mirroring."""
        axes = self.settings.mirror_axes
        if axes is None or axes == []:
            return None
        if axes == "all":
            return list(range(self.job.configuration.spatial_dims))
        return [int(a) for a in axes]

    def autocast(self) -> ContextManager[Any]:
        """The precision of every step (module docstring); methods get the same as ``context.autocast()``."""
        return autocast_context(self.device, self.autocast_dtype)

    # ----- data --------------------------------------------------------------------------------
    def _loader_arguments(self) -> dict[str, Any]:
        job, s = self.job, self.settings
        batch_size = rank_batch_size(s.batch_size or job.configuration.batch_size, self.distributed)
        seed = int(np.random.SeedSequence([job.seed, self.current_epoch]).generate_state(1)[0] % 2**31)
        return dict(batch_size=batch_size, oversample_foreground_percent=s.oversample_foreground_percent,
                    num_workers=s.num_workers, seed=seed, rank=self.distributed.rank,
                    world_size=self.distributed.world_size)

    def _training_loader(self) -> BatchLoader:
        job = self.job
        info = DatasetInfo(list(job.train_case_ids), {c: job.sites.get(c) for c in job.train_case_ids},
                           epoch=self.current_epoch, num_epochs=self.settings.num_epochs)
        sampler = _first(m.make_sampler(info) for m in self.methods)
        # the cases batches are drawn from: the OOD reference keeps to their sites (training/sampled_sites.py)
        self.sampled_case_ids = list(getattr(sampler, "case_ids", None) or job.train_case_ids)
        return make_training_loader(job.cache, job.train_case_ids, job.configuration, case_sampler=sampler,
                                    mirror_axes=self.mirror_axes, **self._loader_arguments())

    def loaders(self) -> tuple[BatchLoader, BatchLoader]:
        """The fold's training and validation loaders, seeded for this epoch (what :meth:`fit` draws from)."""
        train = self._training_loader()
        val = make_validation_loader(self.job.cache, self.job.val_case_ids, self.job.configuration,
                                     **self._loader_arguments())
        return train, val

    @property
    def sampler_changes_per_epoch(self) -> bool:
        return any(m.sampler_changes_per_epoch for m in self.methods)

    # ----- steps -------------------------------------------------------------------------------
    def train_step(self, batch: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        """One SGD step on ``batch`` (``data`` (B, C, *patch), ``target`` (B, 1, *patch)); returns losses."""
        for method in self.methods:
            batch = method.transform_batch(dict(batch), self.current_epoch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        with self.autocast():
            outputs = self.model(data)
            heads = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
            loss = self.loss(heads, target)
            for auxiliary in _pop_auxiliary_heads(self.network):
                auxiliary_loss = self.loss(auxiliary, target)
                loss = loss + auxiliary_loss
                logs["auxiliary_seg_loss"] = logs.get("auxiliary_seg_loss", 0.0) + float(auxiliary_loss.detach())
            # a copy: a method that runs the network itself (a second view, target images) must
            # not overwrite the taps of this batch for the methods after it
            features = dict(self.taps.features) if self.taps is not None else {}
            for method in self.methods:
                extra = method.extra_loss(features, heads, target, batch)
                if extra is not None:
                    loss = loss + extra[0].float()
                    logs.update(extra[1])
            _pop_auxiliary_heads(self.network)  # drop those of the methods' own forward passes
        if self.taps is not None:
            self.taps.clear()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            average_gradients(self.method_parameters, self.distributed)
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.grad_clip_norm)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            average_gradients(self.method_parameters, self.distributed)
            torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.grad_clip_norm)
            self.optimizer.step()
        return float(loss.detach()), logs

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Any]) -> tuple[float, torch.Tensor]:
        """Loss and ``(K-1, 3)`` ``[TP, FP, FN]`` counts on one unaugmented batch (network in eval mode)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        with self.autocast():
            forward_heads = getattr(self.network, "forward_heads", None)
            outputs = forward_heads(data) if forward_heads is not None else self.network(data)
            heads = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
            loss = self.loss(heads, target)
        if self.taps is not None:
            self.taps.clear()
        return float(loss), confusion_counts(heads[0], target)

    # ----- epochs ------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from ``current_epoch`` to ``num_epochs``; write ``checkpoint_final.pt`` at the end."""
        train_loader, val_loader = self.loaders()
        first_epoch = self.current_epoch
        try:
            while self.current_epoch < self.settings.num_epochs:
                if self.sampler_changes_per_epoch and self.current_epoch > first_epoch:
                    train_loader.close()  # the sampler's schedule moved on: new workers, new sampler
                    train_loader = self._training_loader()
                self.run_epoch(train_loader, val_loader)
        finally:
            train_loader.close()
            val_loader.close()
            if getattr(self, "monitor", None) is not None:
                self.monitor.close()
        if self.distributed.is_main:
            self.save_checkpoint(ckpt.FINAL)
            (self.job.output_folder / ckpt.LATEST).unlink(missing_ok=True)
        log.info("training done: %d epochs", self.current_epoch)

    def run_epoch(self, train_loader: Iterator[dict], val_loader: Iterator[dict]) -> dict[str, float]:
        epoch, started = self.current_epoch, time.perf_counter()
        for method in self.methods:
            method.on_epoch_start(epoch, self.progress.curves)
        lr = float(self.optimizer.param_groups[0]["lr"])
        log.info("")
        log.info("Epoch %d", epoch)
        log.info("Current learning rate: %.5f", lr)
        self.network.train()
        train_losses, method_logs = [], []
        for _ in range(self.settings.iterations_per_epoch):
            value, logs = self.train_step(next(train_loader))
            train_losses.append(value)
            method_logs.append(logs)
        self.network.eval()
        val_losses, counts, val_batch = [], None, None
        for _ in range(self.settings.validation_iterations):
            val_batch = next(val_loader)
            value, batch_counts = self.validation_step(val_batch)
            val_losses.append(value)
            counts = batch_counts if counts is None else counts + batch_counts
        self.scheduler.step()
        row = self._epoch_row(epoch, lr, train_losses, val_losses, counts, method_logs, started)
        for method in self.methods:
            method.on_epoch_end(epoch, row)
        self.progress.append(row)
        self.current_epoch = epoch + 1
        self._after_epoch(row)
        if getattr(self, "monitor", None) is not None:
            self.monitor.epoch_end(row, self.progress.curves.get("epoch_time", []),
                                   self.settings.num_epochs - self.current_epoch, lambda: self._overlay(val_batch))
        return row

    @torch.no_grad()
    def _overlay(self, batch: Mapping[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(data, target, logits)`` of a validation batch, for TensorBoard's overlay pictures."""
        if batch is None:
            return None
        data = batch["data"].to(self.device)
        with self.autocast():
            outputs = self.network(data)
        logits = outputs if isinstance(outputs, torch.Tensor) else list(outputs)[0]
        _pop_auxiliary_heads(self.network)
        if self.taps is not None:
            self.taps.clear()
        return data, batch["target"], logits

    def _epoch_row(self, epoch: int, lr: float, train_losses: list[float], val_losses: list[float],
                   counts: torch.Tensor, method_logs: list[dict[str, float]], started: float) -> dict[str, float]:
        """This epoch's progress row (losses and counts summed over ranks), also logged."""
        totals = torch.tensor([sum(train_losses), len(train_losses), sum(val_losses), len(val_losses)],
                              dtype=torch.float64, device=self.device)
        all_reduce_sum(totals, self.distributed)
        counts = all_reduce_sum(counts.to(self.device), self.distributed)
        per_class = dice_from_counts(counts)
        pseudo_dice = nanmean(per_class)
        row: dict[str, float] = {
            "epoch": epoch, "train_loss": float(totals[0] / totals[1]), "val_loss": float(totals[2] / totals[3]),
            "pseudo_dice": pseudo_dice, "ema_pseudo_dice": self.progress.next_ema(pseudo_dice), "lr": lr,
            "epoch_time": time.perf_counter() - started,
        }
        row.update({f"pseudo_dice_{label}": value for label, value in enumerate(per_class, start=1)})
        for key in sorted({k for logs in method_logs for k in logs}):
            values = [logs[key] for logs in method_logs if key in logs]
            row[key] = float(np.mean(values))
        log.info("train_loss %.4f", row["train_loss"])
        log.info("val_loss %.4f", row["val_loss"])
        log.info("Pseudo dice %s", [round(v, 4) for v in per_class])
        log.info("Epoch time: %.2f s", row["epoch_time"])
        return row

    def _after_epoch(self, row: Mapping[str, float]) -> None:
        """Rank 0: progress files, best checkpoint (EMA improved), latest checkpoint (every ``save_every``)."""
        if not self.distributed.is_main:
            return
        folder = self.job.output_folder
        self.progress.write_csv(folder / PROGRESS_CSV)
        self.progress.plot(folder / PROGRESS_PNG)
        ema = row["ema_pseudo_dice"]
        if not math.isnan(ema) and ema > self.best_ema:
            self.best_ema = ema
            log.info("Yayy! New best EMA pseudo Dice: %.4f", ema)
            self.save_checkpoint(ckpt.BEST)
        if self.current_epoch % max(1, self.settings.save_every) == 0 and self.current_epoch < self.settings.num_epochs:
            self.save_checkpoint(ckpt.LATEST)

    # ----- checkpoints -------------------------------------------------------------------------
    def checkpoint_payload(self) -> dict[str, Any]:
        job = self.job
        return {
            "format_version": ckpt.CHECKPOINT_FORMAT_VERSION,
            "network_weights": ckpt.network_state(self.network),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "current_epoch": self.current_epoch,
            "logging": self.progress.state(),
            "best_ema": self.best_ema,
            "rng_states": ckpt.capture_rng_states(),
            "trainer_name": job.trainer_name,
            "network_name": job.network_name,
            "init_args": {**(job.init_args or {}), "settings": asdict(self.settings), "seed": job.seed,
                          "method_options": {type(m).__name__: dict(m.options) for m in self.methods}},
            "plans_name": job.plans.plans_name,
            "configuration": job.configuration_name,
            "inference_allowed_mirroring_axes": self.mirror_axes,
            "methods_state": {type(m).__name__: m.extra_checkpoint_state() for m in self.methods},
        }

    def _fit_poly_schedule_to_epochs(self) -> None:
        """A resumed poly schedule follows the *current* epoch count: ``--continue --epochs 30``
        after a 10-epoch run continues at ``lr0 (1 - 10/30) ** 0.9``, not at the 0 the old
        schedule ended on (nnU-Net cannot extend a run at all, issue #1422)."""
        scheduler, total = self.scheduler, self.settings.num_epochs
        if not isinstance(scheduler, torch.optim.lr_scheduler.PolynomialLR) or scheduler.total_iters == total:
            return
        log.warning("poly schedule stretched from %d to %d epochs", scheduler.total_iters, total)
        scheduler.total_iters = total
        factor = (1 - min(self.current_epoch, total) / total) ** scheduler.power if total > 0 else 0.0
        for group, base_lr in zip(self.optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * factor

    def save_checkpoint(self, name: str) -> Path:
        path = self.job.output_folder / name
        ckpt.save_checkpoint(path, self.checkpoint_payload())
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Resume from ``path``: weights, optimizer, scheduler, scaler, curves, epoch, random states."""
        payload = ckpt.load_checkpoint(path)
        if payload.get("trainer_name") != self.job.trainer_name:
            raise ckpt.CheckpointError(
                f"{path}: was written by trainer '{payload.get('trainer_name')}', not '{self.job.trainer_name}'"
            )
        self.network.load_state_dict(payload["network_weights"])
        self.optimizer.load_state_dict(payload["optimizer_state"])
        self.scheduler.load_state_dict(payload["scheduler_state"])
        if self.grad_scaler is not None and payload.get("grad_scaler_state"):
            self.grad_scaler.load_state_dict(payload["grad_scaler_state"])
        self.current_epoch = int(payload["current_epoch"])
        self._fit_poly_schedule_to_epochs()
        self.job.seed = int(payload.get("init_args", {}).get("seed", self.job.seed))
        self.progress = ProgressLog(payload["logging"])
        self.best_ema = float(payload["best_ema"])
        ckpt.restore_rng_states(payload["rng_states"])
        states = payload.get("methods_state", {})
        for method in self.methods:
            method.load_extra_checkpoint_state(states.get(type(method).__name__, {}))
        log.info("resumed from %s at epoch %d", path, self.current_epoch)


def _pop_auxiliary_heads(network: torch.nn.Module) -> list[list[torch.Tensor]]:
    """Further head lists of the last training forward that the segmentation loss supervises
    too (weight 1 each): a network with two branches per forward (``networks/catenorm.py``)
    hands the other branch's heads over through ``pop_auxiliary_heads()``; others have none."""
    pop = getattr(network, "pop_auxiliary_heads", None)
    return list(pop()) if callable(pop) else []


def _first(values: Iterator[Any]) -> Any:
    """The first value that is not None (each hook is called until one answers)."""
    for value in values:
        if value is not None:
            return value
    return None
