"""Patch sampling: shapes, forced foreground, padding, 2D slices, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_auto.errors import DatasetError
from medseg_auto.training.data.patch_sampler import PatchSampler
from medseg_auto.training.data.synthetic_cache import write_synthetic_cache


def _centre(array: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """The centre ``size`` crop of the spatial axes of ``(C, *spatial)`` (where augmentation crops)."""
    starts = [(n - s) // 2 for n, s in zip(array.shape[1:], size)]
    return array[(slice(None), *(slice(a, a + s) for a, s in zip(starts, size)))]


def test_batch_shapes_and_dtypes(cache_3d):
    sampler = PatchSampler(cache_3d, cache_3d.case_ids(), (12, 16, 12), 4, initial_patch_size=(20, 22, 18))
    batch = sampler.sample_batch(np.random.default_rng(0))
    assert batch["data"].shape == (4, 1, 20, 22, 18) and batch["data"].dtype == np.float32
    assert batch["seg"].shape == (4, 1, 20, 22, 18) and batch["seg"].dtype == np.int16
    assert len(batch["case_ids"]) == 4 and all(case in cache_3d.case_ids() for case in batch["case_ids"])
    assert batch["sites"] == [cache_3d.load_properties(c).site for c in batch["case_ids"]]


@pytest.mark.parametrize(("batch_size", "forced"), [(2, 1), (3, 1), (9, 3), (12, 4)])
def test_last_third_of_a_batch_is_forced(cache_3d, batch_size, forced):
    sampler = PatchSampler(cache_3d, cache_3d.case_ids(), (8, 8, 8), batch_size)
    assert sum(sampler.is_forced_foreground(j) for j in range(batch_size)) == forced
    assert sampler.is_forced_foreground(batch_size - 1)


def test_forced_samples_contain_foreground_in_the_final_patch(cache_3d):
    with_foreground = [case for case in cache_3d.case_ids() if case != "case_005"]
    sampler = PatchSampler(cache_3d, with_foreground, (6, 6, 6), 3, initial_patch_size=(10, 10, 10))
    rng = np.random.default_rng(3)
    for _ in range(30):
        batch = sampler.sample_batch(rng)
        assert (_centre(batch["seg"][2], (6, 6, 6)) > 0).any()


def test_case_without_foreground_falls_back_to_random_crop(cache_3d):
    sampler = PatchSampler(cache_3d, ["case_005"], (8, 8, 8), 2)
    batch = sampler.sample_batch(np.random.default_rng(0))
    assert batch["seg"].max() <= 0 and batch["data"].shape == (2, 1, 8, 8, 8)


def test_image_smaller_than_patch_is_padded_and_fully_included(tmp_path):
    cache = write_synthetic_cache(tmp_path / "small", [(6, 7, 5)], seed=4)
    data, seg, _ = cache.load_case("case_000")
    sampler = PatchSampler(cache, ["case_000"], (8, 10, 8), 3, initial_patch_size=(12, 12, 10))
    batch = sampler.sample_batch(np.random.default_rng(0))
    for j in range(3):
        inside = batch["seg"][j] != -1
        assert inside.sum() == (seg != -1).sum()  # the whole image, nothing more
        assert (batch["data"][j][~inside] == 0).all()
        assert np.isclose(batch["data"][j].sum(), data.sum(), rtol=1e-5)


def test_2d_sampling_takes_one_slice_of_3d_data(cache_2d_slices):
    sampler = PatchSampler(cache_2d_slices, cache_2d_slices.case_ids(), (20, 24), 6, initial_patch_size=(34, 34))
    batch = sampler.sample_batch(np.random.default_rng(1))
    assert batch["data"].shape == (6, 2, 34, 34) and batch["seg"].shape == (6, 1, 34, 34)
    for j, case in enumerate(batch["case_ids"]):
        data, _, _ = cache_2d_slices.load_case(case)
        patch = batch["data"][j]
        rows, cols = np.nonzero((patch != 0).any(axis=0))
        window = patch[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        matches = [
            z for z in range(data.shape[1]) if any(
                np.array_equal(window, data[:, z, r : r + window.shape[1], c : c + window.shape[2]])
                for r in range(data.shape[2] - window.shape[1] + 1)
                for c in range(data.shape[3] - window.shape[2] + 1)
            )
        ]
        assert matches, f"patch {j} is not a slice of {case}"


def test_2d_sampling_of_2d_images_stored_with_z_1(tmp_path):
    cache = write_synthetic_cache(tmp_path / "true2d", [(1, 30, 28), (1, 26, 32)], seed=5)
    sampler = PatchSampler(cache, cache.case_ids(), (16, 16), 3)
    batch = sampler.sample_batch(np.random.default_rng(2))
    assert batch["data"].shape == (3, 1, 16, 16)
    assert (batch["seg"][2] > 0).any()


def test_sampling_is_deterministic_given_the_generator(cache_3d):
    sampler = PatchSampler(cache_3d, cache_3d.case_ids(), (8, 10, 8), 4, initial_patch_size=(12, 14, 12))
    first = sampler.sample_batch(np.random.default_rng(7))
    again = sampler.sample_batch(np.random.default_rng(7))
    other = sampler.sample_batch(np.random.default_rng(8))
    assert first["case_ids"] == again["case_ids"]
    assert np.array_equal(first["data"], again["data"]) and np.array_equal(first["seg"], again["seg"])
    assert not np.array_equal(first["data"], other["data"])


def test_missing_cases_and_bad_sizes_are_refused(cache_3d):
    with pytest.raises(DatasetError, match="not in the preprocessed cache"):
        PatchSampler(cache_3d, ["case_000", "nope"], (8, 8, 8), 2)
    with pytest.raises(ValueError, match="cover"):
        PatchSampler(cache_3d, ["case_000"], (8, 8, 8), 2, initial_patch_size=(6, 8, 8))
