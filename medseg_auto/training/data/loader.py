"""Batch loaders: patch sampling plus augmentation, in background worker processes.

A loader is an endless iterator of batches ``{"data": torch.float32 (B, C, *patch),
"target": torch.int64 (B, 1, *patch) with values >= 0, "case_ids": list[str],
"sites": list[str | None], "padding": torch.bool (B, 1, *patch)}`` (padding: outside the
image or its non-zero region, seg -1 before it became background). With ``num_workers > 0`` batches are produced by that many
processes while the network trains, so the training step rarely waits; with 0 everything runs
in the calling process (tests, debugging).

Randomness: each producer (one per worker, or the in-process one) owns a numpy ``Generator``
for sampling and private copies of numpy's and Python's *global* random states, which it swaps
in around each batch because batchgenerators' transforms draw from the global states. Streams
are seeded from ``(seed, rank, worker_index)``: runs repeat, DDP ranks and workers differ, and
the caller's global random state is never touched. Batches come from the workers round-robin,
so a run repeats exactly for the same worker count, and one worker repeats the in-process run.

Worker processes are torch's ``DataLoader`` over an ``IterableDataset``. nnU-Net uses
batchgenerators' ``NonDetMultiThreadedAugmenter`` instead; ``benchmarks/data_loading.py
--compare-mta`` measured both within noise of each other on a shared 2-core machine (3D
Hippocampus-like batch of 9, best windows: 5.6-5.8 vs 6.1-6.3 batches/s with one worker,
13.8-14.6 vs 12.3-12.7 with two; the same 177-182 vs 178 CPU ms per batch), so the choice rests
on behaviour: torch re-raises a worker's exception here with its type and traceback (the augmenter
prints it in the worker and raises a generic "workers are no longer alive"), and its shutdown
is the well-trodden one.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from threadpoolctl import ThreadpoolController
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from medseg_auto.planning.plans import ConfigurationPlan
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.data.augmentation import (
    build_training_transforms,
    build_validation_transforms,
    configure_spatial_augmentation,
)
from medseg_auto.training.data.case_samplers import CaseSampler, SiteBalancedCaseSampler, UniformCaseSampler
from medseg_auto.training.data.patch_sampler import DEFAULT_OVERSAMPLE_FOREGROUND, PatchSampler

__all__ = [
    "BatchLoader",
    "BatchProducer",
    "CaseSampler",
    "SiteBalancedCaseSampler",
    "UniformCaseSampler",
    "default_num_workers",
    "make_training_loader",
    "make_validation_loader",
]

WORKERS_ENV = "MEDSEG_AUTO_WORKERS"
MAX_DEFAULT_WORKERS = 12  # nnU-Net's default nnUNet_n_proc_DA
BATCH_KEYS = ("data", "target", "case_ids", "sites", "padding")  # padding: bool (B, 1, *patch), seg < 0
DEFAULT_SEED = 12345

Transform = Callable[..., dict[str, Any]]


def default_num_workers(validation: bool = False) -> int:
    """``$MEDSEG_AUTO_WORKERS`` if set, else one core fewer than available (the training loop
    needs one), at most 12; validation gets half, at least 1 (as nnU-Net). 0 means in-process.
    """
    value = os.environ.get(WORKERS_ENV)
    if value is not None and value.strip() != "":
        try:
            workers = int(value)
        except ValueError:
            raise ValueError(f"${WORKERS_ENV} must be a whole number of worker processes, got {value!r}") from None
        if workers < 0:
            raise ValueError(f"${WORKERS_ENV} must be >= 0, got {workers}")
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = max(1, min(cores - 1, MAX_DEFAULT_WORKERS))
    if validation and workers > 0:
        return max(1, workers // 2)
    return workers


class BatchProducer:
    """Samples and augments batches with its own random streams; runs in a worker or in-process.

    Each batch runs with BLAS and OpenMP limited to one thread: parallelism comes from the
    workers, and two OpenBLAS threads spinning against each other doubled the CPU time of a 3D
    batch (measured: 255 -> 137 ms per Hippocampus-like batch of 9 on 2 cores).
    """

    def __init__(self, sampler: PatchSampler, transform: Transform, seed: int, rank: int) -> None:
        self.sampler = sampler
        self.transform = transform
        self.seed = int(seed)
        self.rank = int(rank)
        self._thread_limiter: ThreadpoolController | None = None
        self.reseed(0)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_thread_limiter"] = None  # holds library handles of this process; rebuilt where used
        return state

    def reseed(self, worker_index: int) -> None:
        """Independent streams per ``(seed, rank, worker_index)``."""
        sequence = np.random.SeedSequence([self.seed, self.rank, int(worker_index)])
        sampling_seq, numpy_seq, python_seq = sequence.spawn(3)
        self._rng = np.random.default_rng(sampling_seq)
        self._numpy_state = np.random.RandomState(numpy_seq.generate_state(4)).get_state()
        self._python_state = random.Random(int(python_seq.generate_state(1)[0])).getstate()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._thread_limiter is None:
            self._thread_limiter = ThreadpoolController()
        with self._thread_limiter.limit(limits=1), self._own_global_random_state():
            batch = self.transform(**self.sampler.sample_batch(self._rng))
        return {key: batch[key] for key in BATCH_KEYS if key in batch}

    @contextmanager
    def _own_global_random_state(self) -> Iterator[None]:
        outer_numpy, outer_python = np.random.get_state(), random.getstate()
        np.random.set_state(self._numpy_state)
        random.setstate(self._python_state)
        try:
            yield
        finally:
            self._numpy_state, self._python_state = np.random.get_state(), random.getstate()
            np.random.set_state(outer_numpy)
            random.setstate(outer_python)


class _ProducerStream(IterableDataset):
    """An endless stream of batches; each worker reseeds its copy of the producer by its id."""

    def __init__(self, producer: BatchProducer) -> None:
        super().__init__()
        self.producer = producer

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        if worker is not None:
            self.producer.reseed(worker.id)
        return iter(self.producer)


class BatchLoader:
    """Endless iterator of augmented batches (see the module docstring for the batch layout).

    ``transform`` maps the sampler's enlarged batch to the network batch (see :mod:`.augmentation`).
    ``seed`` and ``rank`` seed the random streams (DDP ranks must differ; ``world_size`` only
    checks ``rank``); ``prefetch_batches`` is the number of batches kept ready in total. Use as a
    context manager or call :meth:`close` to stop the workers. Workers start at the first
    ``next()``, so building a loader is cheap.
    """

    def __init__(
        self,
        sampler: PatchSampler,
        transform: Transform,
        num_workers: int = 0,
        seed: int = DEFAULT_SEED,
        rank: int = 0,
        world_size: int = 1,
        prefetch_batches: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.sampler = sampler
        self.num_workers = int(num_workers)
        self.rank, self.world_size = int(rank), int(world_size)
        # nnU-Net keeps max(6, workers // 2) batches in flight in total.
        self.prefetch_batches = prefetch_batches or max(6, self.num_workers // 2)
        self._producer = BatchProducer(sampler, transform, seed, rank)
        self._workers: Iterator[dict[str, Any]] | None = None
        self._closed = False

    def __iter__(self) -> "BatchLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            raise RuntimeError("this BatchLoader was closed; build a new one")
        if self.num_workers == 0:
            return next(self._producer)
        if self._workers is None:
            self._workers = self._start_workers()
        return next(self._workers)

    def _start_workers(self) -> Iterator[dict[str, Any]]:
        per_worker = max(1, -(-self.prefetch_batches // self.num_workers))
        loader = DataLoader(
            _ProducerStream(self._producer),
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=per_worker,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
        return iter(loader)

    def close(self) -> None:
        """Stop and join the worker processes (idempotent)."""
        self._closed = True
        workers, self._workers = self._workers, None
        shutdown = getattr(workers, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the workers are being torn down anyway
            pass


def make_training_loader(
    cache: PreprocessedCache,
    case_ids: Sequence[str],
    configuration: ConfigurationPlan,
    *,
    case_sampler: CaseSampler | None = None,
    mirror_axes: Sequence[int] | None | str = "all",
    batch_size: int | None = None,
    oversample_foreground_percent: float = DEFAULT_OVERSAMPLE_FOREGROUND,
    num_workers: int | None = None,
    seed: int = DEFAULT_SEED,
    rank: int = 0,
    world_size: int = 1,
) -> BatchLoader:
    """nnU-Net's training loader for one configuration: enlarged crops, the full augmentation.

    ``batch_size`` defaults to the plan's (DDP trainers pass their per-rank share, and the
    per-rank ``oversample_foreground_percent`` that keeps a third of the global batch forced);
    ``case_sampler`` defaults to uniform over ``case_ids``; ``mirror_axes=None`` disables mirroring.
    """
    params = configure_spatial_augmentation(configuration.patch_size, mirror_axes)
    sampler = PatchSampler(
        cache,
        case_ids,
        configuration.patch_size,
        batch_size or configuration.batch_size,
        initial_patch_size=params.initial_patch_size,
        oversample_foreground_percent=oversample_foreground_percent,
        case_sampler=case_sampler,
    )
    transform = build_training_transforms(params, configuration.use_mask_for_norm)
    workers = default_num_workers() if num_workers is None else num_workers
    return BatchLoader(sampler, transform, workers, seed=seed, rank=rank, world_size=world_size)


def make_validation_loader(
    cache: PreprocessedCache,
    case_ids: Sequence[str],
    configuration: ConfigurationPlan,
    *,
    batch_size: int | None = None,
    oversample_foreground_percent: float = DEFAULT_OVERSAMPLE_FOREGROUND,
    num_workers: int | None = None,
    seed: int = DEFAULT_SEED,
    rank: int = 0,
    world_size: int = 1,
) -> BatchLoader:
    """nnU-Net's validation loader: same sampling and oversampling, crops at the network patch
    size, no augmentation. Seeded apart from the training loader so the two streams differ.
    """
    sampler = PatchSampler(
        cache,
        case_ids,
        configuration.patch_size,
        batch_size or configuration.batch_size,
        oversample_foreground_percent=oversample_foreground_percent,
    )
    workers = default_num_workers(validation=True) if num_workers is None else num_workers
    return BatchLoader(
        sampler, build_validation_transforms(), workers, seed=seed + 1, rank=rank, world_size=world_size
    )
