"""Random amplitude mixup: the Fourier transform on hand-made images, donor choice, the
RandomAmplitudeMixup trainer and its combination with SGCG (SemanticGuidedContrastiveRAM)."""

from __future__ import annotations

import csv
import logging

import pytest
import torch

from medseg_auto.cli.main import build_parser
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.data.amplitude_mixup import choose_donors, low_frequency_mask, mix_low_frequency_amplitude
from medseg_auto.training.registry import get_trainer
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.trainers.random_amplitude_mixup import RandomAmplitudeMixup


def images_and_donors(dims: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (3, 2, 12, 10) if dims == 2 else (2, 1, 6, 8, 10)
    images = torch.randn(shape, generator=generator)
    donors = 3.0 * torch.randn(shape, generator=generator) + 1.0  # another "site": other contrast and offset
    return images, donors


def spectrum(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftn(x.double(), dim=tuple(range(2, x.dim())))


def test_low_frequency_window_by_hand():
    # n = 10, window 0.1: |k| <= 1, i.e. indices 0, 1 and 9 (k = -1); n = 12: |k| <= 1 as well
    mask = low_frequency_mask((10, 12), 0.1)
    rows = torch.nonzero(mask.any(dim=1)).squeeze(1).tolist()
    cols = torch.nonzero(mask.any(dim=0)).squeeze(1).tolist()
    assert rows == [0, 1, 9] and cols == [0, 1, 11] and int(mask.sum()) == 9
    assert int(low_frequency_mask((20,), 0.1).sum()) == 5  # |k| <= 2


@pytest.mark.parametrize("dims", [2, 3])
def test_ratio_zero_returns_the_image(dims):
    images, donors = images_and_donors(dims)
    mixed = mix_low_frequency_amplitude(images, donors, torch.zeros(images.shape[0]))
    torch.testing.assert_close(mixed, images, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_phase_is_kept_and_the_low_band_moves_towards_the_donor(dims):
    images, donors = images_and_donors(dims, seed=1)
    ratios = torch.tensor([0.3, 1.0, 0.7][: images.shape[0]])
    window = 0.25
    mixed = mix_low_frequency_amplitude(images, donors, ratios, window)
    before, after, donor = spectrum(images), spectrum(mixed), spectrum(donors)
    strong = before.abs() > 1e-3 * before.abs().max()
    phase_change = torch.angle(after * before.conj())  # wrapped difference of the phases
    assert float(phase_change[strong].abs().max()) < 1e-4
    band = low_frequency_mask(images.shape[2:], window).expand_as(before)
    share = ratios.double().reshape(-1, *([1] * (images.dim() - 1))).expand_as(before)
    gap_before = (before.abs() - donor.abs())[band]
    gap_after = (after.abs() - donor.abs())[band]
    torch.testing.assert_close(gap_after, (1 - share[band]) * gap_before, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(after.abs()[~band], before.abs()[~band], atol=1e-3, rtol=1e-4)
    assert float((after.abs() - donor.abs())[band & (share == 1.0)].abs().max()) < 1e-3  # ratio 1: the donor's band
    assert mixed.dtype == images.dtype and torch.isfinite(mixed).all()


def test_donors_come_from_other_sites_when_the_batch_has_them():
    torch.manual_seed(0)
    donors, cross = choose_donors(["a", "a", "b", None])
    assert cross and donors[0] == 2 and donors[1] == 2 and donors[2] in (0, 1) and donors[3] != 3
    donors, cross = choose_donors(["a", "a", "a"])
    assert not cross and all(d != i for i, d in enumerate(donors))
    assert choose_donors([None]) == ([0], False)


def test_transform_batch_mixes_the_chosen_samples_and_logs_a_single_site_once(caplog):
    images, _ = images_and_donors(2)
    method = RandomAmplitudeMixup({"ram_probability": 1.0, "ram_ratio_range": [0.5, 0.5]})
    batch = {"data": images, "target": torch.zeros(3, 1, 12, 10, dtype=torch.long), "case_ids": ["x", "y", "z"],
             "sites": ["a", "b", "b"]}
    torch.manual_seed(3)
    out = method.transform_batch(dict(batch), epoch=0)
    torch.manual_seed(3)
    donors, _ = choose_donors(batch["sites"])
    expected = mix_low_frequency_amplitude(images, images[torch.tensor(donors)], torch.full((3,), 0.5))
    torch.testing.assert_close(out["data"], expected)
    assert torch.equal(batch["data"], images) and out["target"] is batch["target"]  # input left alone
    assert method.last_logs == {"ram_mixed": 1.0, "ram_cross_site": 1.0}
    never = RandomAmplitudeMixup({"ram_probability": 0.0})
    assert torch.equal(never.transform_batch(dict(batch), 0)["data"], images)
    single = dict(batch, sites=["a", "a", "a"])
    with caplog.at_level(logging.WARNING):
        method.transform_batch(dict(single), 0)
        method.transform_batch(dict(single), 0)
    assert sum("single site" in record.message for record in caplog.records) == 1


@pytest.mark.slow
def test_ram_trains_end_to_end_on_two_sites(toy_home_factory):
    home = toy_home_factory(sites=["a", "b"] * 3)
    folder = train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="RandomAmplitudeMixup", device="cpu",
                                     seed=0, settings=dict(num_epochs=1, iterations_per_epoch=3, num_workers=0)))
    with open(folder / "progress.csv") as handle:
        row = next(csv.DictReader(handle))
    assert 0.0 <= float(row["ram_mixed"]) <= 1.0 and float(row["ram_cross_site"]) > 0.0


@pytest.mark.slow
def test_sgcg_ram_combines_both_methods_with_both_option_sets(toy_home_factory):
    spec = get_trainer("SemanticGuidedContrastiveRAM")
    assert [m.__name__ for m in spec.methods] == ["RandomAmplitudeMixup", "SemanticGuidedContrastive"]
    args = build_parser().parse_args(["train", "Toy", "2d", "0", "-tr", "SemanticGuidedContrastiveRAM",
                                      "--ram-probability", "0.8", "--sgcg-weight", "0.2"])
    assert args.ram_probability == 0.8 and args.sgcg_weight == 0.2
    home = toy_home_factory(sites=["a", "b"] * 3)
    folder = train_fold(TrainRequest(home, "Toy", "2d", 0, trainer_name="SemanticGuidedContrastiveRAM",
                                     device="cpu", seed=0,
                                     trainer_options={"ram_probability": 0.8, "sgcg_weight": 0.2},
                                     settings=dict(num_epochs=2, iterations_per_epoch=1, num_workers=0)))
    assert folder.parent.name == "SemanticGuidedContrastiveRAM__plans__2d"
    with open(folder / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"ram_mixed", "sgcg_loss"} <= set(rows[0]) and float(rows[1]["sgcg_loss"]) > 0
    payload = load_checkpoint(folder / FINAL)
    assert payload["init_args"]["method_options"]["RandomAmplitudeMixup"]["ram_probability"] == 0.8
    assert payload["init_args"]["method_options"]["SemanticGuidedContrastive"]["sgcg_weight"] == 0.2
    assert float(payload["methods_state"]["SemanticGuidedContrastive"]["statistics"]["count"].sum()) > 0
