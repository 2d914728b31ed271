"""Batch loaders: batch layout in-process and with workers, clean shutdown, seeding, site balance."""

from __future__ import annotations

import multiprocessing
from collections import Counter

import numpy as np
import pytest
import torch

from medseg_auto.training.data.loader import (
    BatchLoader,
    SiteBalancedCaseSampler,
    UniformCaseSampler,
    default_num_workers,
    make_training_loader,
    make_validation_loader,
)

PATCH = [8, 12, 10]


def _check_batch(batch, batch_size, patch, channels=1):
    assert set(batch) == {"data", "target", "case_ids", "sites", "padding"}
    assert batch["padding"].shape == batch["target"].shape and batch["padding"].dtype == torch.bool
    assert batch["data"].shape == (batch_size, channels, *patch) and batch["data"].dtype == torch.float32
    assert batch["target"].shape == (batch_size, 1, *patch) and batch["target"].dtype == torch.int64
    assert batch["target"].min() >= 0
    assert len(batch["case_ids"]) == len(batch["sites"]) == batch_size


def test_in_process_loader_yields_batches_without_touching_global_random_state(cache_3d, make_configuration):
    configuration = make_configuration(PATCH, 4)
    state_before = np.random.get_state()[1].copy()
    with make_training_loader(cache_3d, cache_3d.case_ids(), configuration, num_workers=0) as loader:
        for _ in range(3):
            _check_batch(next(loader), 4, PATCH)
    assert np.array_equal(np.random.get_state()[1], state_before)
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)


def test_two_workers_yield_batches_and_shut_down(cache_3d, make_configuration):
    configuration = make_configuration(PATCH, 3)
    loader = make_training_loader(cache_3d, cache_3d.case_ids(), configuration, num_workers=2)
    batches = [next(loader) for _ in range(4)]
    assert len(multiprocessing.active_children()) >= 2
    for batch in batches:
        _check_batch(batch, 3, PATCH)
    loader.close()
    loader.close()  # idempotent
    assert multiprocessing.active_children() == []
    with make_training_loader(cache_3d, cache_3d.case_ids(), configuration, num_workers=2) as again:
        for batch in batches:
            assert torch.equal(next(again)["data"], batch["data"])  # round-robin: repeatable


def test_one_worker_repeats_the_in_process_stream_and_ranks_differ(cache_3d, make_configuration):
    configuration = make_configuration(PATCH, 2)

    def first_batches(num_workers, rank=0):
        with make_training_loader(
            cache_3d, cache_3d.case_ids(), configuration, num_workers=num_workers, seed=3, rank=rank, world_size=2
        ) as loader:
            return [next(loader) for _ in range(2)]

    in_process, one_worker, other_rank = first_batches(0), first_batches(1), first_batches(0, rank=1)
    for a, b in zip(in_process, one_worker):
        assert a["case_ids"] == b["case_ids"] and torch.equal(a["data"], b["data"])
    assert not torch.equal(in_process[0]["data"], other_rank[0]["data"])


def test_validation_loader_crops_at_patch_size_without_augmentation(cache_2d_slices, make_configuration):
    configuration = make_configuration([16, 20], 5)
    case_ids = cache_2d_slices.case_ids()
    with make_validation_loader(cache_2d_slices, case_ids, configuration, num_workers=0) as loader:
        batch = next(loader)
    _check_batch(batch, 5, [16, 20], channels=2)
    assert loader.sampler.initial_patch_size == (16, 20)
    assert (batch["target"][-1] > 0).any()  # the last third is still forced to foreground


def test_site_balanced_sampler_balances_sites():
    sampler = SiteBalancedCaseSampler({"big": [f"b{i}" for i in range(40)], "small": ["s0", "s1"]})
    rng = np.random.default_rng(0)
    for batch_size in (8, 9):
        counts = Counter(case[0] for case in sampler.sample_batch(rng, batch_size))
        assert sorted(counts.values()) == [batch_size // 2, batch_size - batch_size // 2]
    positions = Counter(i for _ in range(200) for i, c in enumerate(sampler.sample_batch(rng, 4)) if c[0] == "s")
    assert min(positions.values()) > 50  # shuffled: no site owns the forced-foreground slots
    uniform = Counter(UniformCaseSampler(["a", "b"]).sample_batch(rng, 1000))
    assert 400 < uniform["a"] < 600


def test_loader_with_site_balanced_sampler_reports_balanced_sites(cache_3d, make_configuration):
    case_ids = cache_3d.case_ids()
    sites = {case: cache_3d.load_properties(case).site for case in case_ids}
    sampler = SiteBalancedCaseSampler.from_sites(case_ids, sites)
    configuration = make_configuration(PATCH, 4)
    with make_training_loader(cache_3d, case_ids, configuration, case_sampler=sampler, num_workers=0) as loader:
        for _ in range(3):
            assert Counter(next(loader)["sites"]) == {"siteA": 2, "siteB": 2}


def test_default_worker_count(monkeypatch):
    monkeypatch.setenv("MEDSEG_AUTO_WORKERS", "0")
    assert default_num_workers() == default_num_workers(validation=True) == 0
    monkeypatch.setenv("MEDSEG_AUTO_WORKERS", "5")
    assert (default_num_workers(), default_num_workers(validation=True)) == (5, 2)
    monkeypatch.setenv("MEDSEG_AUTO_WORKERS", "many")
    with pytest.raises(ValueError, match="MEDSEG_AUTO_WORKERS"):
        default_num_workers()
    monkeypatch.delenv("MEDSEG_AUTO_WORKERS")
    assert 1 <= default_num_workers() <= 12


def test_rank_outside_world_size_is_refused(cache_3d, make_configuration):
    loader_args = dict(num_workers=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        make_training_loader(cache_3d, cache_3d.case_ids(), make_configuration(PATCH, 2), **loader_args)


def test_worker_errors_reach_the_caller(cache_3d, make_configuration):
    configuration = make_configuration(PATCH, 2)
    loader = make_training_loader(cache_3d, ["case_000"], configuration, num_workers=1)
    assert isinstance(loader, BatchLoader)
    cache_3d.data_path("case_000").unlink()
    with pytest.raises(FileNotFoundError):
        next(loader)
    loader.close()
    assert multiprocessing.active_children() == []
