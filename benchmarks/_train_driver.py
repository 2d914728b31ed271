#!/usr/bin/env python3
"""Train a few iterations with our trainer or nnU-Net v2's, timing every training iteration.

Used by ``train_throughput.py``, ``profile_training.py`` and ``predict_speed.py``; not meant
to be run by hand, but it can be:

    .venv/bin/python benchmarks/_train_driver.py ours --home H --dataset Hippocampus \
        --configuration 3d_fullres --epochs 2 --iterations 5 --result out.json
    nnUNet_preprocessed=... nnUNet_results=... nnUNet_compile=f \
    .venv-nnunet/bin/python benchmarks/_train_driver.py nnunet --dataset Dataset004_Hippocampus \
        --configuration 3d_fullres --epochs 2 --iterations 5 --result out.json

One file serves both tools, so the two are timed by the same code: it runs inside the tool's
own virtual environment and imports only ``torch`` at module level; each tool's package is
imported by its adapter (:func:`run_ours`, :func:`run_nnunet`). Neither package is changed:
ours runs a timed subclass of its ``Trainer`` (``TrainRequest.trainer_class``); nnU-Net's
adapter wraps methods of its trainer class from the outside.

What is timed, per training iteration (``time.perf_counter``; on CPU every op is synchronous):

- ``wait_s``: the main loop waiting for the next augmented batch (``next(loader)``);
- ``step_s``: the trainer's ``train_step`` (transfer, forward, loss, backward, clip, SGD step);
- with ``--phases``, inside the step: ``forward_s`` (the network's forward, forward hooks),
  ``loss_s`` (the loss module, forward hooks), ``backward_s`` (``Tensor.backward``),
  ``clip_s`` (``torch.nn.utils.clip_grad_norm_``) and ``optimizer_s`` (``optimizer.step``,
  step hooks). The rest of the step (``zero_grad``, ``.to(device)``, bookkeeping) is what is left.

Validation batches, checkpoints, logging and start-up are not in any record. The JSON result
holds every record with its epoch; the caller drops the warm-up epoch. ``--torch-profiler-epoch E``
also records the training iterations of epoch ``E`` with ``torch.profiler`` and returns the
per-operator table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

PHASES = ("forward", "loss", "backward", "clip", "optimizer")
PROFILER_ROWS = 30


class IterationTimer:
    """Collects one record per training iteration: epoch, wait, step and (optionally) phases.

    The trainer's loop calls ``train_step(next(loader))``: the loader wrapper measures the
    wait and leaves it pending, the step wrapper opens the record, adds the pending wait and
    the step's duration, and phase hooks add to the open record while a step runs.
    """

    def __init__(self, phases: bool, profile_epoch: int | None) -> None:
        self.phases = phases
        self.records: list[dict[str, Any]] = []
        self.first_batch_shapes: dict[str, list[int]] = {}
        self._pending_wait = 0.0
        self._current: dict[str, Any] | None = None
        self._phase_started: dict[str, float] = {}
        self._profile_epoch = profile_epoch
        self._profiler: Any = None
        self.operator_table: str | None = None
        self.operators: list[dict[str, Any]] = []
        self._profiled_iterations = 0
        self.started = time.perf_counter()
        self.first_step_at: float | None = None

    # --- loader ---------------------------------------------------------------------------
    def timed_batches(self, loader: Any) -> "TimedBatches":
        return TimedBatches(loader, self)

    def add_wait(self, seconds: float) -> None:
        self._pending_wait += seconds

    # --- steps ----------------------------------------------------------------------------
    def wrap_train_step(self, train_step: Callable[..., Any]) -> Callable[..., Any]:
        """``train_step(self, batch)`` of either trainer, timed; the trainer's ``current_epoch``
        labels the record."""
        timer = self

        def timed_train_step(trainer: Any, batch: Any) -> Any:
            epoch = int(trainer.current_epoch)
            timer._maybe_start_profiler(epoch)
            if not timer.first_batch_shapes:
                timer.first_batch_shapes = _shapes(batch)
            record: dict[str, Any] = {"epoch": epoch, "wait_s": timer._pending_wait}
            if timer.phases:
                record.update({f"{phase}_s": 0.0 for phase in PHASES})
            timer._pending_wait = 0.0
            timer._current = record
            if timer.first_step_at is None:
                timer.first_step_at = time.perf_counter()
            start = time.perf_counter()
            try:
                return train_step(trainer, batch)
            finally:
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    torch.cuda.synchronize()  # GPU work is asynchronous: time it, not its launch
                record["step_s"] = time.perf_counter() - start
                timer._current = None
                timer.records.append(record)
                if timer._profiler is not None:
                    timer._profiled_iterations += 1

        return timed_train_step

    def wrap_validation_step(self, validation_step: Callable[..., Any]) -> Callable[..., Any]:
        """Validation ends a profiled stretch of training iterations."""
        timer = self

        def validation_step_after_profiler(trainer: Any, batch: Any) -> Any:
            timer.stop_profiler()
            return validation_step(trainer, batch)

        return validation_step_after_profiler

    # --- phases ---------------------------------------------------------------------------
    def instrument(self, network: torch.nn.Module, loss: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Install the phase timers (see the module docstring) on one trainer's objects."""
        if not self.phases:
            return
        for name, module in (("forward", network), ("loss", loss)):
            if not isinstance(module, torch.nn.Module):
                raise TypeError(f"cannot time the {name} phase: {type(module).__name__} is not a torch.nn.Module")
            module.register_forward_pre_hook(lambda _module, _inputs, phase=name: self._phase_start(phase))
            module.register_forward_hook(lambda _module, _inputs, _output, phase=name: self._phase_end(phase))
        optimizer.register_step_pre_hook(lambda _optimizer, _args, _kwargs: self._phase_start("optimizer"))
        optimizer.register_step_post_hook(lambda _optimizer, _args, _kwargs: self._phase_end("optimizer"))
        backward, clip = torch.Tensor.backward, torch.nn.utils.clip_grad_norm_

        def timed_backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            with self._phase("backward"):
                return backward(tensor, *args, **kwargs)

        def timed_clip(*args: Any, **kwargs: Any) -> Any:
            with self._phase("clip"):
                return clip(*args, **kwargs)

        # Both trainers call these through the module attribute, so replacing it is enough.
        torch.Tensor.backward = timed_backward  # type: ignore[method-assign]
        torch.nn.utils.clip_grad_norm_ = timed_clip

    def _phase_start(self, phase: str) -> None:
        if self._current is not None:
            self._phase_started[phase] = time.perf_counter()

    def _phase_end(self, phase: str) -> None:
        started = self._phase_started.pop(phase, None)
        if self._current is not None and started is not None:
            self._current[f"{phase}_s"] += time.perf_counter() - started

    @contextmanager
    def _phase(self, phase: str) -> Iterator[None]:
        self._phase_start(phase)
        try:
            yield
        finally:
            self._phase_end(phase)

    # --- torch.profiler -------------------------------------------------------------------
    def _maybe_start_profiler(self, epoch: int) -> None:
        if self._profile_epoch is None or self._profiler is not None or self.operator_table is not None:
            return
        if epoch == self._profile_epoch:
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self._profiler.__enter__()

    def stop_profiler(self) -> None:
        if self._profiler is None:
            return
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        averages = profiler.key_averages()
        self.operator_table = averages.table(sort_by="self_cpu_time_total", row_limit=PROFILER_ROWS)
        iterations = max(1, self._profiled_iterations)
        top = sorted(averages, key=lambda event: event.self_cpu_time_total, reverse=True)[:PROFILER_ROWS]
        self.operators = [{"operator": event.key, "calls_per_iteration": event.count / iterations,
                           "self_cpu_s_per_iteration": event.self_cpu_time_total / 1e6 / iterations}
                          for event in top]


class TimedBatches:
    """The trainer's batch iterator, timing each ``next``; everything else is passed through."""

    def __init__(self, loader: Any, timer: IterationTimer) -> None:
        self.loader = loader
        self._timer = timer

    def __iter__(self) -> "TimedBatches":
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self.loader)
        finally:
            self._timer.add_wait(time.perf_counter() - start)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def _shapes(batch: Any) -> dict[str, list[int]]:
    """Shapes of the batch's tensors (nnU-Net's deep-supervision target is a list: first one)."""
    shapes = {}
    for key in ("data", "target"):
        value = batch.get(key) if isinstance(batch, dict) else None
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        if hasattr(value, "shape"):
            shapes[key] = [int(size) for size in value.shape]
    return shapes


# --- the two adapters ----------------------------------------------------------------------

def run_ours(args: argparse.Namespace, timer: IterationTimer) -> dict[str, Any]:
    """Our ``train_fold`` (what ``medseg-auto train`` calls) running a :class:`Trainer` subclass
    with the timers around its loaders and steps (``TrainRequest.trainer_class``). The final
    validation is skipped unless ``--final-validation``: it is not training throughput, and on
    all validation cases it would outlast a short run."""
    from medseg_auto.run.train import TrainRequest, train_fold
    from medseg_auto.training.trainer import Trainer
    from medseg_auto.utils.logging_setup import configure_logging

    configure_logging(None)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # what train_fold's configure_threads obeys
    info: dict[str, Any] = {}
    timed_train_step = timer.wrap_train_step(Trainer.train_step)
    timed_validation_step = timer.wrap_validation_step(Trainer.validation_step)

    class TimedTrainer(Trainer):
        def loaders(self) -> tuple[Any, Any]:
            train_loader, val_loader = super().loaders()
            timer.instrument(self.model, self.loss, self.optimizer)
            precision = "fp16 AMP" if args.device == "cuda" else "bf16 autocast" if self.cpu_bf16 else "fp32"
            info.update(precision=precision, threads=torch.get_num_threads(), workers=self.settings.num_workers)
            return timer.timed_batches(train_loader), val_loader

        def train_step(self, batch: Any) -> Any:
            return timed_train_step(self, batch)

        def validation_step(self, batch: Any) -> Any:
            return timed_validation_step(self, batch)

    named = {"num_epochs": args.epochs, "iterations_per_epoch": args.iterations,
             "val_iterations_per_epoch": args.val_iterations, "num_workers": args.num_workers,
             "cpu_bf16": False if args.no_bf16 else None, "batch_size": args.batch_size or None}
    folder = train_fold(TrainRequest(
        args.home, args.dataset, args.configuration, args.fold, device=args.device, seed=args.seed,
        settings={name: value for name, value in named.items() if value is not None},
        final_validation=args.final_validation, trainer_class=TimedTrainer,
    ))
    return {**info, "output_folder": str(folder)}


def run_nnunet(args: argparse.Namespace, timer: IterationTimer) -> dict[str, Any]:
    """nnU-Net v2's ``nnUNetTrainer.run_training`` as ``nnUNetv2_train -device cpu`` sets it up
    (all cores for torch unless ``--threads``, ``torch.compile`` off unless ``nnUNet_compile`` says otherwise), with
    the plans' batch size replaced when asked. The trainer class is imported directly: looking
    it up by name would import every trainer module, and some need torchvision."""
    os.environ.setdefault("nnUNet_compile", "f")
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    if nnUNet_preprocessed is None:
        raise SystemExit("nnUNet_preprocessed is not set")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    seed_everything(args.seed)  # nnU-Net has no seed option; its data-augmentation workers stay unseeded
    folder = Path(nnUNet_preprocessed) / args.dataset
    plans = load_json(str(folder / f"{args.plans}.json"))
    plans["continue_training"] = False  # nnUNetTrainer.__init__ pops it (run_training.py sets it)
    if args.batch_size:
        plans["configurations"][args.configuration]["batch_size"] = args.batch_size
    dataset_json = load_json(str(folder / "dataset.json"))
    fold = args.fold if args.fold == "all" else int(args.fold)
    trainer = nnUNetTrainer(plans, args.configuration, fold, dataset_json, device=torch.device(args.device))
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = args.val_iterations or max(1, round(args.iterations / 5))

    on_train_start, on_train_end = nnUNetTrainer.on_train_start, nnUNetTrainer.on_train_end

    def timed_on_train_start(self: nnUNetTrainer) -> None:
        on_train_start(self)
        timer.instrument(self.network, self.loss, self.optimizer)
        self.dataloader_train = timer.timed_batches(self.dataloader_train)

    def untimed_on_train_end(self: nnUNetTrainer) -> None:
        # nnU-Net stops its augmenter workers only if it recognises the augmenter's type.
        if isinstance(self.dataloader_train, TimedBatches):
            self.dataloader_train = self.dataloader_train.loader
        on_train_end(self)

    nnUNetTrainer.on_train_start = timed_on_train_start  # type: ignore[method-assign]
    nnUNetTrainer.on_train_end = untimed_on_train_end  # type: ignore[method-assign]
    nnUNetTrainer.train_step = timer.wrap_train_step(nnUNetTrainer.train_step)  # type: ignore[method-assign]
    nnUNetTrainer.validation_step = timer.wrap_validation_step(  # type: ignore[method-assign]
        nnUNetTrainer.validation_step)
    trainer.run_training()
    logged = trainer.logger.local_logger.my_fantastic_logging
    epoch_times = [end - start for start, end in zip(logged["epoch_start_timestamps"], logged["epoch_end_timestamps"])]
    if args.final_validation:  # what nnUNetv2_train does after training: predict the fold's validation cases
        trainer.perform_actual_validation(False)
    return {"precision": "fp16 AMP" if args.device == "cuda" else "fp32", "threads": torch.get_num_threads(), "workers": get_allowed_n_proc_DA(),
            "output_folder": trainer.output_folder, "epoch_times_s": epoch_times}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators of the training process."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tool", choices=("ours", "nnunet"))
    parser.add_argument("--dataset", required=True, help="ours: name or id; nnU-Net: DatasetNNN_Name")
    parser.add_argument("--configuration", required=True)
    parser.add_argument("--fold", default="0")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=1, help="validation batches per epoch")
    parser.add_argument("--batch-size", type=int, default=None, help="replace the plans' batch size")
    parser.add_argument("--home", default=None, help="ours: the data home")
    parser.add_argument("--num-workers", type=int, default=None, help="ours: data-loading processes "
                        "(nnU-Net reads $nnUNet_n_proc_DA)")
    parser.add_argument("--no-bf16", action="store_true", help="ours: float32 on CPU")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="both tools: where to train (cuda: AMP in both)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: each tool's, all cores)")
    parser.add_argument("--seed", type=int, default=12345, help="random seed (nnU-Net: of random, numpy and torch "
                        "in the training process)")
    parser.add_argument("--plans", default="nnUNetPlans", help="nnU-Net: plans identifier")
    parser.add_argument("--final-validation", action="store_true", help="run the final validation too (nnU-Net: "
                        "perform_actual_validation, as nnUNetv2_train does)")
    parser.add_argument("--phases", action="store_true", help="time forward, loss, backward, clip, optimizer")
    parser.add_argument("--torch-profiler-epoch", type=int, default=None, metavar="EPOCH",
                        help="record the training iterations of this epoch with torch.profiler")
    parser.add_argument("--result", type=Path, required=True, help="JSON file to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timer = IterationTimer(args.phases, profile_epoch=args.torch_profiler_epoch)
    run = run_ours if args.tool == "ours" else run_nnunet
    info = run(args, timer)
    timer.stop_profiler()
    finished = time.perf_counter()
    result = {
        "tool": args.tool, "configuration": args.configuration, "epochs": args.epochs,
        "iterations_per_epoch": args.iterations, "batch_size_override": args.batch_size,
        "batch_shapes": timer.first_batch_shapes, "torch_version": torch.__version__,
        "startup_s": None if timer.first_step_at is None else timer.first_step_at - timer.started,
        "driver_s": finished - timer.started, "records": timer.records, "operators": timer.operators,
        "operator_table": timer.operator_table, **info,
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    print(f"driver: {len(timer.records)} training iterations timed -> {args.result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
