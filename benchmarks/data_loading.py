"""Data-loading throughput: batches per second of the training loader for 0, 1 and 2 workers.

Two configurations on synthetic caches written to a temporary folder:

* ``3d``: Hippocampus-like 3d_fullres (40 cases of about 36 x 50 x 36 voxels, patch 40 x 56 x 40,
  batch 9): the image is smaller than the patch, as in nnU-Net's Hippocampus plans.
* ``2d``: a 2D configuration of 3D data (12 cases of 20 x 280 x 240, patch 256 x 224, batch 12),
  sampling one z slice per patch, as nnU-Net's 2d configuration of Prostate or Heart does.

Method: one loader per row; a first window of ``prefetch + 2`` batches absorbs worker start-up
and the batches queued meanwhile, then ``--repeats`` windows of ``--batches`` batches are
timed back to back; the table gives the median and the best window, and the CPU time the
loader's processes spent per batch. On a shared machine other processes slow some windows down:
compare best windows, and CPU per batch, which contention changes least. The load average is
printed because it says how shared the machine was.

``--compare-mta`` adds rows for batchgenerators' ``NonDetMultiThreadedAugmenter`` (nnU-Net's
choice) driving the same producer, which is how the loader's backend was chosen.

Usage: ``python benchmarks/data_loading.py [--batches 20] [--repeats 5] [--compare-mta]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import psutil

from medseg_auto.training.data.augmentation import build_training_transforms, configure_spatial_augmentation
from medseg_auto.training.data.loader import BatchLoader, BatchProducer
from medseg_auto.training.data.patch_sampler import PatchSampler
from medseg_auto.training.data.synthetic_cache import write_synthetic_cache

CONFIGS: dict[str, dict[str, Any]] = {
    "3d": {"patch": (40, 56, 40), "batch": 9, "cases": 40, "low": (30, 44, 30), "high": (42, 56, 42)},
    "2d": {"patch": (256, 224), "batch": 12, "cases": 12, "low": (20, 280, 240), "high": (21, 281, 241)},
}


class _MTAProducer(BatchProducer):
    """The producer as batchgenerators' augmenters expect it (``set_thread_id`` per worker)."""

    def set_thread_id(self, worker_index: int) -> None:
        self.reseed(worker_index)


def _make_sampler(folder: Path, name: str) -> tuple[PatchSampler, Callable[..., dict[str, Any]]]:
    config = CONFIGS[name]
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in rng.integers(config["low"], config["high"])) for _ in range(config["cases"])]
    cache = write_synthetic_cache(folder / name, shapes, max_locations=10000)
    params = configure_spatial_augmentation(config["patch"])
    sampler = PatchSampler(
        cache, cache.case_ids(), config["patch"], config["batch"], initial_patch_size=params.initial_patch_size
    )
    return sampler, build_training_transforms(params)


def _tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children (the workers)."""
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _measure(
    batches: Iterator[dict[str, Any]], warmup: int, window: int, repeats: int
) -> tuple[list[float], float]:
    """Batches per second of each window, and CPU milliseconds per batch over all windows."""
    for _ in range(warmup):
        next(batches)
    rates = []
    cpu_start = _tree_cpu_seconds()
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(window):
            next(batches)
        rates.append(window / (time.perf_counter() - start))
    return rates, 1000 * (_tree_cpu_seconds() - cpu_start) / (window * repeats)


def _run_loader(
    sampler: PatchSampler, transform: Callable, workers: int, args: argparse.Namespace
) -> tuple[list[float], float]:
    with BatchLoader(sampler, transform, num_workers=workers) as loader:
        return _measure(loader, loader.prefetch_batches + 2, args.batches, args.repeats)


def _run_mta(
    sampler: PatchSampler, transform: Callable, workers: int, args: argparse.Namespace
) -> tuple[list[float], float]:
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    cached = max(6, workers // 2)
    augmenter = NonDetMultiThreadedAugmenter(_MTAProducer(sampler, transform, 12345, 0), None, workers, cached)
    try:
        return _measure(augmenter, cached + 2, args.batches, args.repeats)
    finally:
        augmenter._finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per row")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--compare-mta", action="store_true", help="also time NonDetMultiThreadedAugmenter")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cores: {cores}   load average at start: {os.getloadavg()[0]:.2f}")
    header = (
        f"{'config':<6} {'backend':<20} {'workers':>7} {'median b/s':>10} {'best b/s':>9} {'best patches/s':>14} "
        f"{'CPU ms/batch':>12}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as temp:
        for name in args.configs:
            sampler, transform = _make_sampler(Path(temp), name)
            rows = [("BatchLoader (torch)", _run_loader, workers) for workers in args.workers]
            if args.compare_mta:
                rows += [("NonDetMTA", _run_mta, workers) for workers in args.workers if workers > 0]
            for backend, run, workers in rows:
                rates, cpu_ms = run(sampler, transform, workers, args)
                print(
                    f"{name:<6} {backend:<20} {workers:>7} {statistics.median(rates):>10.2f} "
                    f"{max(rates):>9.2f} {max(rates) * sampler.batch_size:>14.1f} {cpu_ms:>12.0f}",
                    flush=True,
                )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
