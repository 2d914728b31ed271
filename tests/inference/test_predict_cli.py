"""predict end to end on models trained for a few iterations: fold ensemble and evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.image_io import read_segmentation
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory):
    home = synthetic_home(tmp_path_factory.mktemp("home"))
    make_synthetic_dataset(home, "Syn2d", dimension=2, cases_per_site=3)
    root = str(home.root)
    assert main(["plan_and_preprocess", "Syn2d", "-np", "1", "--home", root, "--no-progress"]) == 0
    for fold in ("0", "1"):
        code = main(["train", "Syn2d", "2d", fold, "--epochs", "1", "--iters-per-epoch", "2", "--home", root,
                     "--device", "cpu", "--no-progress"])
        assert code == 0
    return home


@pytest.mark.slow
def test_predict_with_two_fold_ensemble_and_evaluate(trained_home, tmp_path):
    root = str(trained_home.root)
    images = trained_home.raw_dataset("Syn2d") / "imagesTr"
    output = tmp_path / "pred"
    assert main(["predict", "-i", str(images), "-o", str(output), "-d", "Syn2d", "-c", "2d", "--home", root,
                 "--no-progress"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["folds"] == ["fold_0", "fold_1"] and len(summary["predicted"]) == 6
    labels, geometry = read_segmentation(output / "siteA_000.png")
    reference, _ = read_segmentation(trained_home.raw_dataset("Syn2d") / "labelsTr" / "siteA_000.png")
    assert labels.shape == reference.shape and set(np.unique(labels)) <= {0, 1}
    assert main(["evaluate", str(output), str(trained_home.raw_dataset("Syn2d") / "labelsTr"), "-d", "Syn2d",
                 "--sites", "--home", root, "--no-progress"]) == 0
    assert json.loads((output / "summary.json").read_text())["num_cases"] == 6


@pytest.mark.slow
def test_single_fold_prediction_of_validation_cases_equals_final_validation(trained_home, tmp_path):
    """Predicting a fold's validation cases from raw files gives the final validation's numbers."""
    root = str(trained_home.root)
    fold_folder = trained_home.results_dataset("Syn2d") / "Base__plans__2d" / "fold_0"
    validation = json.loads((fold_folder / "validation" / "summary.json").read_text())
    cases = sorted(p.stem for p in (fold_folder / "validation").glob("*.png"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for case in cases:
        (inputs / f"{case}_0000.png").write_bytes(
            (trained_home.raw_dataset("Syn2d") / "imagesTr" / f"{case}_0000.png").read_bytes())
    output = tmp_path / "pred"
    assert main(["predict", "-i", str(inputs), "-o", str(output), "-d", "Syn2d", "-c", "2d", "-f", "0",
                 "--home", root, "--no-progress"]) == 0
    assert main(["evaluate", str(output), str(trained_home.raw_dataset("Syn2d") / "labelsTr"), "-d", "Syn2d",
                 "--predicted-only", "--home", root, "--no-progress"]) == 0
    ours = json.loads((output / "summary.json").read_text())
    assert ours["foreground_mean"]["dice"] == pytest.approx(validation["foreground_mean"]["dice"], abs=1e-6)


@pytest.mark.slow
def test_predict_without_trained_model_is_a_clear_error(trained_home, tmp_path, capsys):
    code = main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-d", "Syn2d", "-c", "3d_fullres",
                 "--home", str(trained_home.root), "--no-progress"])
    assert code == 2
    assert "no trained model" in capsys.readouterr().err
