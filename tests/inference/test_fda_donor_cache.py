"""Prediction-time FDA: donors are read and transformed once per target shape, and the adapted
image can keep the target's mean and standard deviation (the z-scored scale the network expects)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_auto.inference import fda_donors
from medseg_auto.inference.fda import apply_low_band, fda_transfer, low_band_amplitude
from medseg_auto.inference.fda_donors import DonorBank, FdaAdapter
from medseg_auto.preprocessing.cache import PreprocessedCache


def test_apply_low_band_equals_the_transfer_with_the_donor():
    rng = np.random.default_rng(3)
    target, donor = rng.normal(size=(1, 2, 32, 24)), 2.0 + 3.0 * rng.normal(size=(1, 2, 32, 24))
    band = low_band_amplitude(donor, 0.1, 2)
    np.testing.assert_allclose(apply_low_band(target, band, 0.1, 2), fda_transfer(target, donor, 0.1, 2), atol=1e-10)
    with pytest.raises(ValueError, match="does not fit"):
        apply_low_band(target[..., :20], band, 0.1, 2)


def test_matched_moments_keep_the_targets_mean_and_std_per_channel():
    rng = np.random.default_rng(4)
    target = rng.normal(size=(2, 1, 40, 40)).astype(np.float32)
    donor = (5.0 + 4.0 * rng.normal(size=(2, 1, 40, 40))).astype(np.float32)
    donor[:, :, :20] += 6.0  # a strong low-frequency layout
    plain = fda_transfer(target, donor, beta=0.1)
    matched = fda_transfer(target, donor, beta=0.1, match_moments=True)
    moved = np.abs(plain.mean(axis=(1, 2, 3)) - target.mean(axis=(1, 2, 3)))
    assert moved.min() > 0.5  # the swap moved the z-scored image off its scale
    for channel in range(2):
        assert matched[channel].mean() == pytest.approx(target[channel].mean(), abs=1e-4)
        assert matched[channel].std() == pytest.approx(target[channel].std(), rel=1e-4)
        assert np.corrcoef(matched[channel].ravel(), plain[channel].ravel())[0, 1] > 0.999  # the same picture, rescaled


def test_adapter_reads_and_transforms_each_donor_once_per_target_shape(trained_syn2d_home, monkeypatch):
    cache = PreprocessedCache(trained_syn2d_home.preprocessed_dataset("Syn2d") / "plans_2d")
    adapter = FdaAdapter(DonorBank.load(cache, "siteA"), beta=0.05, donors=3)
    resized = []
    original = fda_donors.fit_donor

    def counting(donor, shape):
        resized.append(tuple(shape))
        return original(donor, shape)

    monkeypatch.setattr(fda_donors, "fit_donor", counting)
    data, _, _ = cache.load_case("siteB_000", mmap=False)
    first, donors = adapter.adapt(data)
    again, same_donors = adapter.adapt(data.copy())
    donor_fits = [shape for shape in resized if shape == data.shape[1:]]  # not the descriptors' 64 x 64 grid
    assert donors == same_donors and len(donor_fits) == 3  # the second case reused all three
    for view, repeated in zip(first, again):
        np.testing.assert_array_equal(view, repeated)

