"""``site_information.py``'s pieces: the centred crop/pad and the cross-validated site probe
(separable features are told apart, identical ones are at chance). No network, no timings."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmarks.conftest import import_benchmark

pytest.importorskip("sklearn")
site_information = import_benchmark("site_information")


def test_centre_fit_crops_and_pads_around_the_centre():
    data = np.arange(2 * 6 * 3, dtype=np.float32).reshape(2, 6, 3)
    fitted = site_information.centre_fit(data, (4, 5))
    assert fitted.shape == (2, 4, 5)
    np.testing.assert_array_equal(fitted[:, :, 1:4], data[:, 1:5, :])  # rows cropped 1..4, columns padded by 1
    assert (fitted[:, :, 0] == 0).all() and (fitted[:, :, 4] == 0).all()


def test_probe_tells_separable_sites_apart_and_not_identical_ones():
    rng = np.random.default_rng(0)
    sites = np.array(["a"] * 20 + ["b"] * 20)
    separable = rng.normal(size=(40, 8)) + (sites == "b")[:, None] * 3.0
    accuracy, _ = site_information.cross_validated(separable, sites, seed=0)
    assert accuracy > 0.9
    same = np.ones((40, 8))
    chance, _ = site_information.cross_validated(same, sites, seed=0)
    assert chance == pytest.approx(0.5)


def test_site_option_needs_two_existing_folders(tmp_path, capsys):
    with pytest.raises(SystemExit):
        site_information.parse_args(["--model", str(tmp_path), "--fold", "0", "--crop", "8", "8",
                                     "--site", f"a={tmp_path}"])
    assert "at least two --site" in capsys.readouterr().err


def test_a_missing_model_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        site_information.parse_args(["--model", str(tmp_path / "nope"), "--fold", "0", "--crop", "8", "8",
                                     "--site", f"a={tmp_path}", "--site", f"b={tmp_path}"])
    assert stop.value.code == 2 and "no trained fold there" in capsys.readouterr().err
