"""Fourier domain adaptation: the transform's properties, donor choice, and predict --fda-source end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import fft

from medseg_auto.cli.main import main
from medseg_auto.inference import fda_donors
from medseg_auto.inference.fda import fda_transfer, fit_donor, low_frequency_mask
from medseg_auto.inference.fda_donors import DESCRIPTOR_FILE, DonorBank, FdaAdapter
from medseg_auto.preprocessing.cache import PreprocessedCache


def _spectrum(image: np.ndarray, axes=(-2, -1)) -> np.ndarray:
    return fft.fftshift(fft.fftn(image.astype(np.float64), axes=axes), axes=axes)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(2, 3, 24, 20)).astype(np.float32)
    donor = (3.0 * rng.normal(size=(2, 3, 24, 20)) + 1.0).astype(np.float32)
    return target, donor


@pytest.mark.parametrize("spatial_axes", [2, 3])
def test_beta_zero_returns_the_target(images, spatial_axes):
    target, donor = images
    adapted = fda_transfer(target, donor, beta=0.0, spatial_axes=spatial_axes)
    assert adapted.dtype == target.dtype and adapted.shape == target.shape
    np.testing.assert_array_equal(adapted, target)


@pytest.mark.parametrize("spatial_axes", [2, 3])
def test_donor_equal_to_target_returns_the_target(images, spatial_axes):
    target, _ = images
    adapted = fda_transfer(target, target.copy(), beta=0.2, spatial_axes=spatial_axes)
    np.testing.assert_allclose(adapted, target, atol=1e-5)


def test_low_band_amplitude_is_the_donors_and_the_rest_with_the_phase_is_the_targets(images):
    target, donor = images
    beta = 0.15
    adapted = fda_transfer(target, donor, beta=beta, spatial_axes=2)
    mask = low_frequency_mask(target.shape[-2:], beta)
    assert 1 < mask.sum() < mask.size  # the test covers both parts of the spectrum
    out, tgt, don = _spectrum(adapted), _spectrum(target), _spectrum(donor)
    np.testing.assert_allclose(np.abs(out)[..., mask], np.abs(don)[..., mask], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.abs(out)[..., ~mask], np.abs(tgt)[..., ~mask], rtol=1e-4, atol=1e-3)
    phase_difference = np.angle(out * np.conj(tgt))  # wrapped to (-pi, pi]
    visible = (np.abs(out) > 1e-3) & (np.abs(tgt) > 1e-3)
    assert np.abs(phase_difference[visible]).max() < 1e-3
    assert not np.allclose(adapted, target, atol=1e-2)  # the swap did change the image


def test_slice_wise_transfer_treats_every_slice_on_its_own(images):
    target, donor = images
    whole = fda_transfer(target, donor, beta=0.2, spatial_axes=2)
    one_slice = fda_transfer(target[1, 2], donor[1, 2], beta=0.2, spatial_axes=2)
    np.testing.assert_allclose(whole[1, 2], one_slice, atol=1e-6)


def test_mask_is_a_centred_disc_of_radius_beta_times_the_smaller_edge():
    mask = low_frequency_mask((40, 60), 0.05)  # radius 2 around (20, 30)
    assert mask[20, 30] and mask[21, 31] and mask[20, 31] and not mask[22, 30] and not mask[20, 32]
    assert not low_frequency_mask((40, 60), 0.0).any()


def test_bad_arguments_are_refused(images):
    target, donor = images
    with pytest.raises(ValueError, match="beta"):
        fda_transfer(target, donor, beta=0.5)
    with pytest.raises(ValueError, match="equal shapes"):
        fda_transfer(target, donor[..., :10])


def test_fit_donor_resizes_and_keeps_the_mean():
    donor = np.full((1, 1, 30, 50), 2.5, dtype=np.float32)
    fitted = fit_donor(donor, (1, 16, 20))
    assert fitted.shape == (1, 1, 16, 20)
    np.testing.assert_allclose(fitted, 2.5, rtol=1e-6)


@pytest.mark.slow
def test_donor_bank_picks_the_most_similar_case_caches_descriptors_and_filters_sites(trained_syn2d_home, monkeypatch):
    cache = PreprocessedCache(trained_syn2d_home.preprocessed_dataset("Syn2d") / "plans_2d")
    (cache.folder / DESCRIPTOR_FILE).unlink(missing_ok=True)
    bank = DonorBank.load(cache)
    assert (cache.folder / DESCRIPTOR_FILE).is_file() and len(bank.case_ids) == 12
    data, _, _ = cache.load_case("siteB_003", mmap=False)
    nearest = bank.nearest(data, 3)
    assert nearest[0] == ("siteB_003", 0.0) and nearest[1][1] <= nearest[2][1]

    def no_recomputing(_data):
        raise AssertionError("descriptors should come from the cache file")

    monkeypatch.setattr(fda_donors, "amplitude_descriptor", no_recomputing)
    site_a = DonorBank.load(cache, site="siteA")
    assert site_a.case_ids == [f"siteA_{i:03d}" for i in range(6)]
    with pytest.raises(Exception, match="no source case of site 'siteC'"):
        DonorBank.load(cache, site="siteC")


@pytest.mark.slow
def test_adapter_makes_one_view_per_donor(trained_syn2d_home):
    cache = PreprocessedCache(trained_syn2d_home.preprocessed_dataset("Syn2d") / "plans_2d")
    data, _, _ = cache.load_case("siteB_000", mmap=False)
    views, donors = FdaAdapter(DonorBank.load(cache, "siteA"), beta=0.05, donors=4).adapt(data)
    assert len(views) == len(donors) == 4 and all(view.shape == data.shape for view in views)
    assert all(donor.startswith("siteA_") for donor in donors)


def _site_b_inputs(home, tmp_path):
    inputs = tmp_path / "stu_like"
    inputs.mkdir()
    for image in sorted((home.raw_dataset("Syn2d") / "imagesTr").glob("siteB_00[0-2]_0000.png")):
        shutil.copy(image, inputs / image.name)
    return inputs


@pytest.mark.slow
def test_predict_with_fda_source_end_to_end(trained_syn2d_home, tmp_path):
    root = str(trained_syn2d_home.root)
    inputs = _site_b_inputs(trained_syn2d_home, tmp_path)
    base = ["-d", "Syn2d", "-c", "2d", "--home", root, "--no-progress", "--save-probabilities"]
    fda = ["--fda-source", "Syn2d", "--fda-site", "siteA", "--fda-donors", "3"]
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "plain"), *base]) == 0
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "fda"), *base, *fda]) == 0
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "beta0"), *base, *fda, "--fda-beta", "0"]) == 0

    summary = json.loads((tmp_path / "fda" / "summary.json").read_text())
    assert len(summary["predicted"]) == 3
    assert summary["fda"]["beta"] == pytest.approx(0.03) and summary["fda"]["site"] == "siteA"
    for case, donors in summary["fda"]["donors"].items():
        assert len(donors) == 3 and all(donor.startswith("siteA_") for donor in donors)
    assert "score_fda_adapted" in summary["ood"]["cases"]["siteB_000"]
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["fda"] is None

    def probabilities(folder):
        return np.load(tmp_path / folder / "siteB_000.npz")["probabilities"].astype(np.float32)

    # beta 0 leaves every view equal to the input: the average is the plain prediction
    np.testing.assert_allclose(probabilities("beta0"), probabilities("plain"), atol=1e-3)
    assert np.abs(probabilities("fda") - probabilities("plain")).max() > 1e-3


@pytest.mark.slow
def test_predict_with_unknown_fda_source_is_a_clear_error(trained_syn2d_home, tmp_path, capsys):
    inputs = _site_b_inputs(trained_syn2d_home, tmp_path)
    code = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "o"), "-d", "Syn2d", "-c", "2d", "--home",
                 str(trained_syn2d_home.root), "--no-progress", "--fda-source", "NoSuchData"])
    assert code == 2 and "NoSuchData" in capsys.readouterr().err
