"""Issue 13: RandomAmplitudeMixup drew style donors from the batch, so in pooled BUSI+STU
training (780 vs 42 cases) it mixed within BUSI almost always, and in a 2-site leave-one-site-out
(one source site) it mixed within that site, which RAM (across source domains only) never does.
Donors now come from the *other sites' cases in the cache*; with one source site nothing is
mixed unless asked (``--ram-within-site``), and the run says so."""

from __future__ import annotations

import logging

import numpy as np
import torch

from medseg_auto.planning.plans import Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.data.amplitude_mixup import donor_image, mix_low_frequency_amplitude
from medseg_auto.training.hooks import TrainingContext, TrainingSettings
from medseg_auto.training.trainers.random_amplitude_mixup import RandomAmplitudeMixup


def _method(home, options=None) -> tuple[RandomAmplitudeMixup, PreprocessedCache, dict]:
    dataset = next(home.preprocessed.iterdir())
    plans = Plans.load(dataset / "plans.json")
    configuration = plans.configuration("2d")
    cache = PreprocessedCache(dataset / configuration.data_identifier)
    cases = cache.case_ids()
    sites = {case: cache.load_case(case, mmap=False)[2].site for case in cases}
    method = RandomAmplitudeMixup({"ram_probability": 1.0, "ram_ratio_range": [0.9, 0.9], **(options or {})})
    method.setup(TrainingContext(plans=plans, configuration=configuration, network=torch.nn.Identity(),
                                 device=torch.device("cpu"), num_classes=3, tap_channels={}, cache=cache,
                                 train_case_ids=cases, sites=sites, settings=TrainingSettings()))
    return method, cache, sites


def _batch(sites: dict, site: str, size: int = 4) -> dict:
    cases = [case for case, s in sites.items() if s == site][:size]
    torch.manual_seed(0)
    return {"data": torch.randn(len(cases), 1, 16, 16), "target": torch.zeros(len(cases), 1, 16, 16, dtype=torch.long),
            "case_ids": cases, "sites": [site] * len(cases)}


def test_a_single_site_batch_takes_donors_from_the_other_site_in_the_cache(toy_home_factory):
    home = toy_home_factory(n_cases=8, sites=["a", "a", "a", "a", "a", "a", "b", "b"])
    method, _, sites = _method(home)
    batch = _batch(sites, "a")
    out = method.transform_batch(dict(batch), epoch=0)
    assert not torch.allclose(out["data"], batch["data"])
    assert len(method.last_donors) == len(batch["case_ids"])
    assert all(sites[donor] == "b" for donor in method.last_donors)
    assert method.last_logs["ram_cross_site"] == 1.0 and method.last_logs["ram_source_sites"] == 2.0


def test_one_source_site_mixes_nothing_and_says_so(toy_home_factory, caplog):
    home = toy_home_factory(n_cases=6, sites=["a"] * 6)
    with caplog.at_level(logging.WARNING):
        method, _, sites = _method(home)
    assert any("one source site" in record.message for record in caplog.records)
    batch = _batch(sites, "a")
    out = method.transform_batch(dict(batch), epoch=0)
    assert torch.equal(out["data"], batch["data"])
    assert method.last_logs["ram_mixed"] == 0.0 and method.last_logs["ram_source_sites"] == 1.0


def test_within_site_mixing_on_request_uses_other_cases_of_the_cache(toy_home_factory):
    home = toy_home_factory(n_cases=6, sites=["a"] * 6)
    method, _, sites = _method(home, {"ram_within_site": True})
    batch = _batch(sites, "a", size=3)
    out = method.transform_batch(dict(batch), epoch=0)
    assert not torch.allclose(out["data"], batch["data"])
    assert all(donor != case for donor, case in zip(method.last_donors, batch["case_ids"]))
    assert method.last_logs["ram_cross_site"] == 0.0


def test_a_donor_smaller_than_the_patch_is_resized_not_padded():
    """Padding a small donor into the patch mixed in the amplitude of a flat canvas (BUSI+STU:
    STU donors were 80% padding and halved the mixed samples' contrast)."""
    rng = np.random.default_rng(0)
    stored = (1.0 + rng.random((1, 3, 8, 8))).astype(np.float32)  # (C, Z, Y, X), every value in [1, 2)
    donor = donor_image(stored, (16, 20), rng)
    assert donor.shape == (1, 16, 20)
    assert float(donor.min()) >= 1.0 and float(donor.max()) <= 2.0  # no padding value anywhere
    volume = donor_image(stored, (4, 16, 6), rng)  # 3D: crop where larger (x), resize where smaller
    assert volume.shape == (1, 4, 16, 6) and float(volume.min()) >= 1.0


def test_a_donor_larger_than_the_patch_is_an_unresized_crop():
    stored = np.arange(1 * 2 * 10 * 12, dtype=np.float32).reshape(1, 2, 10, 12)
    donor = donor_image(stored, (4, 5), np.random.default_rng(1)).numpy()
    slices = [stored[0, z] for z in range(2)]
    assert any(np.array_equal(donor[0], image[y:y + 4, x:x + 5])
               for image in slices for y in range(7) for x in range(8))


def test_mixing_with_a_small_donor_keeps_the_contrast_of_the_image():
    """Measured on the coarse BUSI+STU plan before the fix: share 0.9 with a padded STU donor cut a
    BUSI patch's sd from 0.92 to 0.50; with the donor resized the sd stays near both images'."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.standard_normal((1, 1, 32, 40)).astype(np.float32))
    small = rng.standard_normal((1, 1, 12, 12)).astype(np.float32)
    donor = donor_image(small, (32, 40), rng)[None]
    mixed = mix_low_frequency_amplitude(image, donor, torch.tensor([0.9]), 0.1)
    padded = torch.zeros_like(image)
    padded[..., 10:22, 14:26] = torch.from_numpy(small[:, 0])
    mixed_padded = mix_low_frequency_amplitude(image, padded, torch.tensor([0.9]), 0.1)
    assert float(mixed.std()) > float(mixed_padded.std())
