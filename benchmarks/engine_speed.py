"""Pieces of ``predict_speed.py`` for our inference engines: agreement and CPU throughput.

- :func:`dice_agreement`: per-case Dice between two folders of label files (mean over the
  foreground labels present in either; 1 when both are empty), against our float32 torch
  prediction, which is the reference every engine must reproduce (>= 0.99 per case).
- :func:`network_gflop_per_case`: the network's floating-point work per case, counted by torch's
  ``FlopCounterMode`` on one window (multiply-adds count 2) times the windows MONAI's sliding
  window puts on each case's preprocessed shape times the mirrored views.
- :func:`matmul_peak_gflops`: what this CPU reaches on a large matrix product in bf16 and in
  float32 through torch (oneDNN / MKL), all cores: the practical bound for convolution
  throughput. ``achieved / peak`` is the fraction of the CPU a prediction uses.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def dice_agreement(reference: Path, other: Path, ending: str) -> dict[str, Any]:
    """``{"per_case": {case: dice}, "min": .., "mean": ..}`` over the reference's label files."""
    from medseg_auto.dataset.image_io import read_segmentation

    per_case = {}
    for path in sorted(reference.glob(f"*{ending}")):
        counterpart = other / path.name
        if not counterpart.is_file():
            per_case[path.name[: -len(ending)]] = None
            continue
        ours, _ = read_segmentation(path)
        theirs, _ = read_segmentation(counterpart)
        labels = sorted((set(np.unique(ours)) | set(np.unique(theirs))) - {0})
        scores = [2.0 * np.sum((ours == label) & (theirs == label)) / (np.sum(ours == label) + np.sum(theirs == label))
                  for label in labels]
        per_case[path.name[: -len(ending)]] = float(np.mean(scores)) if scores else 1.0
    values = [value for value in per_case.values() if value is not None]
    return {"per_case": per_case, "min": min(values) if values else None,
            "mean": float(np.mean(values)) if values else None, "missing": sum(v is None for v in per_case.values())}


def network_gflop_per_case(plans_file: Path, configuration: str, cache_cases: Sequence[Path], step: float,
                           mirroring: bool) -> dict[str, float]:
    """GFLOP of network forward passes per case (mean over ``cache_cases``, preprocessed ``.npy``)."""
    import torch
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices
    from torch.utils.flop_counter import FlopCounterMode

    from medseg_auto.inference.sliding_window import mirror_combinations
    from medseg_auto.planning.plans import Plans
    from medseg_auto.training.network import build_dynunet

    plans = Plans.load(plans_file)
    config = plans.configuration(configuration)
    network = build_dynunet(config, plans.num_input_channels, plans.num_classes, deep_supervision=False).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(torch.zeros(1, plans.num_input_channels, *config.patch_size))
    per_window = counter.get_total_flops() / 1e9
    views = 1 + (len(mirror_combinations(range(len(config.patch_size)))) if mirroring else 0)
    windows = []
    for case in cache_cases:
        shape = np.load(case, mmap_mode="r").shape[1:]
        size = [max(s, p) for s, p in zip(shape, config.patch_size)]  # padded up to the patch
        interval = _get_scan_interval(size, config.patch_size, len(size), [1.0 - step] * len(size))
        windows.append(len(dense_patch_slices(size, config.patch_size, interval)))
    mean_windows = float(np.mean(windows)) if windows else float("nan")
    return {"gflop_per_window_view": per_window, "views": views, "windows_per_case": mean_windows,
            "gflop_per_case": per_window * views * mean_windows}


def matmul_peak_gflops(size: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """GFLOP/s of ``size x size`` matrix products in bf16 and float32 (best of a few timed batches)."""
    import torch

    results = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)
        best, started = 0.0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            tick = time.perf_counter()
            for _ in range(3):
                torch.mm(a, b)
            best = max(best, 3 * 2 * size**3 / (time.perf_counter() - tick) / 1e9)
        results[f"peak_{name}_gflops"] = best
    results["threads"] = torch.get_num_threads()
    return results
