"""Per-case L_fd (``medseg-auto feature-discrepancy``): patch choice, the value against a direct
computation of eq. 1, and the CSV that ``compare`` reads."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from medseg_auto.cli.main import main
from medseg_auto.evaluation.case_feature_discrepancy import (
    PER_CASE_LFD_FILE, case_feature_discrepancy, foreground_patch, per_case_feature_discrepancy,
)
from medseg_auto.evaluation.compare import load_run
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.training.losses.feature_discrepancy import EPS, VARIANCE_EPS
from medseg_auto.training.network import FeatureTaps, build_dynunet


def test_patch_is_centred_on_the_foreground_and_padded_where_the_image_is_small():
    data = np.arange(1, 40 * 50 + 1, dtype=np.float32).reshape(1, 40, 50)
    seg = np.zeros((1, 40, 50), dtype=np.int16)
    seg[0, 30:34, 40:44] = 1  # centre (31.5 -> 32, 41.5 -> 42)
    image, labels = foreground_patch(data, seg, [8, 8])
    assert image.shape == (1, 8, 8) and labels.shape == (1, 8, 8)
    assert image[0, 0, 0] == data[0, 28, 38] and labels.sum() == 16
    # a patch larger than the image holds all of it; the rest is 0 (data) and background (labels)
    image, labels = foreground_patch(data, seg, [44, 60])
    assert image.shape == (1, 44, 60) and labels.sum() == 16
    assert image.sum() == data.sum() and (image > 0).sum() == data.size


def test_patch_of_a_volume_in_a_2d_configuration_takes_the_slice_with_most_foreground():
    data = np.stack([np.full((20, 20), z, dtype=np.float32) for z in range(3)])[None]
    seg = np.zeros((1, 3, 20, 20), dtype=np.int16)
    seg[0, 0, 2:4, 2:4] = 1
    seg[0, 2, 5:15, 5:15] = 2
    image, labels = foreground_patch(data, seg, [8, 8])
    assert (image == 2).all() and set(np.unique(labels)) == {2}


def test_no_foreground_gives_no_patch_and_outside_values_count_as_background():
    seg = np.full((1, 10, 10), -1, dtype=np.int16)
    assert foreground_patch(np.zeros((1, 10, 10), np.float32), seg, [8, 8]) is None


def test_case_value_matches_eq1_computed_directly(toy_2d_configuration):
    torch.manual_seed(0)
    network = build_dynunet(toy_2d_configuration, 1, 2).eval()
    image = torch.randn(1, 16, 16).numpy()
    labels = np.zeros((1, 16, 16), dtype=np.int64)
    labels[0, 4:10, 5:12] = 1
    values = case_feature_discrepancy(network, image, labels, 2, torch.device("cpu"))
    assert set(values) == {"encoder.0", "encoder.1", "bottleneck", "decoder.0", "decoder.1"}

    taps = FeatureTaps(network, ["encoder.0"])
    with torch.no_grad():
        network(torch.from_numpy(image)[None])
    feature = taps.features["encoder.0"][0].flatten(1).double()  # (C, 256), full resolution: no pooling
    mask = torch.from_numpy(labels[0].reshape(-1) == 1)
    foreground, background = feature[:, mask].mean(1), feature[:, ~mask].mean(1)
    variance = feature.var(1, unbiased=False) + VARIANCE_EPS
    expected = -math.log(float(((foreground - background) ** 2 / variance).mean()) + EPS)
    assert values["encoder.0"] == pytest.approx(expected, rel=1e-4, abs=1e-4)

    raw = case_feature_discrepancy(network, image, labels, 2, torch.device("cpu"), normalization="none")
    assert raw["encoder.0"] == pytest.approx(-math.log(float(((foreground - background) ** 2).mean()) + EPS),
                                             rel=1e-4, abs=1e-4)


def test_per_case_table_over_a_cache(two_site_home, toy_2d_configuration):
    cache = PreprocessedCache(two_site_home.preprocessed_dataset("Toy") / toy_2d_configuration.data_identifier)
    case_ids = cache.case_ids()[:3]
    _, seg, _ = cache.load_case(case_ids[0], mmap=False)
    network = build_dynunet(toy_2d_configuration, 1, 2)
    network.train()
    frame = per_case_feature_discrepancy(network, toy_2d_configuration, 2, cache, case_ids, torch.device("cpu"))
    assert network.training  # mode restored
    assert list(frame["case"]) == case_ids and (seg > 0).any()
    assert frame["l_fd"].notna().all()
    layers = frame[[c for c in frame.columns if c.startswith("l_fd/")]]
    assert np.allclose(layers.mean(axis=1), frame["l_fd"])


@pytest.mark.slow
def test_command_writes_the_csv_compare_plots(two_site_home, tmp_path):
    """Train the toy fold ``all`` for one iteration, then L_fd on its validation cases; compare
    then has an ``l_fd`` column for every case with foreground and draws the scatter plot."""
    root = str(two_site_home.root)
    assert main(["train", "Toy", "2d", "all", "--epochs", "1", "--iters-per-epoch", "1", "--val-iters-per-epoch", "1",
                 "--num-workers", "0", "--home", root, "--device", "cpu", "--no-progress"]) == 0
    fold = two_site_home.results_dataset("Toy") / "Base__plans__2d" / "fold_all"
    validation = fold / "validation"
    assert main(["feature-discrepancy", str(validation), "--model", str(fold), "--home", root, "--device", "cpu",
                 "--no-progress"]) == 0
    table = pd.read_csv(validation / PER_CASE_LFD_FILE)
    metrics = pd.read_csv(validation / "metrics.csv")
    assert sorted(table["case"]) == sorted(metrics["case"].astype(str).unique())
    assert table["l_fd"].notna().sum() > 0
    run = load_run(validation)
    assert run.has_l_fd
    assert main(["compare", str(validation), str(validation), "-o", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "l_fd_vs_dice.png").stat().st_size > 0

    with pytest.raises(SystemExit):
        main(["feature-discrepancy", str(validation), "--home", root])  # --model is required
    assert main(["feature-discrepancy", str(tmp_path), "--model", str(fold), "--home", root]) != 0  # no metrics.csv


def test_command_offers_the_loss_normalizations():
    from medseg_auto.cli.main import build_parser
    from medseg_auto.training.losses.feature_discrepancy import NORMALIZATIONS

    parser = build_parser()
    subcommand = next(a for a in parser._actions if a.dest == "command").choices["feature-discrepancy"]
    option = next(a for a in subcommand._actions if a.dest == "normalization")
    assert tuple(option.choices) == NORMALIZATIONS
