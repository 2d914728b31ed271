"""Post-processing selection, ensembling and find_best_configuration.

The rule is checked on hand-made predictions with known answers; find_best end to end on two
tiny trained runs (two trainers of the 2d configuration, folds 0 and 1, one epoch of two
iterations each), which is enough to exercise cross-validation, the pairwise ensemble and the
written decision without waiting for a useful model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.image_io import ImageGeometry, read_segmentation, write_segmentation
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home
from medseg_auto.evaluation.crossval import cross_validate
from medseg_auto.evaluation.evaluate import evaluate_folders
from medseg_auto.evaluation.postprocessing_selection import determine_postprocessing
from medseg_auto.inference.ensemble_folders import EnsembleError, ensemble_folders

SHAPE = (8, 24, 24)
GEOMETRY = ImageGeometry(spacing=(2.0, 1.0, 1.0), dimension=3, file_ending=".nii.gz")


def _write(folder: Path, case: str, labels: np.ndarray, geometry: ImageGeometry = GEOMETRY) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_segmentation(labels, geometry, folder / f"{case}.nii.gz")


def _case(label2_touching: bool) -> tuple[np.ndarray, np.ndarray]:
    """(reference, prediction): a label-1 cube with a label-2 slab (touching it, or apart);
    the prediction is the reference plus a spurious label-1 blob of 3/4 the cube's size."""
    reference = np.zeros(SHAPE, dtype=np.int16)
    reference[1:5, 2:10, 2:10] = 1
    if label2_touching:
        reference[1:5, 2:10, 10:12] = 2
    else:
        reference[6:8, 18:22, 2:6] = 2
    prediction = reference.copy()
    prediction[1:5, 16:22, 14:22] = 1
    return reference, prediction


def _folders(tmp_path: Path, touching: list[bool]) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for index, is_touching in enumerate(touching):
        reference, prediction = _case(is_touching)
        _write(gt, f"case{index}", reference)
        _write(pred, f"case{index}", prediction)
    return pred, gt


def test_spurious_blob_makes_the_rule_keep_the_foreground_component(tmp_path):
    pred, gt = _folders(tmp_path, [True, True])
    decision = determine_postprocessing(pred, lambda folder: evaluate_folders(folder, gt, labels=[1, 2],
                                                                            show_progress=False),
                                        tmp_path / "work", [1, 2])
    assert decision.plan.foreground_union and decision.plan.per_label == []
    assert decision.dice_before["per_class"]["1"] == pytest.approx(2 * 256 / (2 * 256 + 192))
    assert decision.dice_after["per_class"] == {"1": 1.0, "2": 1.0}
    assert [step["kept"] for step in decision.steps] == [True, False, False]  # per label: nothing left to gain
    assert (tmp_path / "work" / "foreground_union" / "summary.json").is_file()
    cleaned, _ = read_segmentation(decision.prediction_dir / "case0.nii.gz")
    assert not cleaned[1:5, 16:22, 14:22].any()


def test_union_component_not_kept_when_a_class_gets_worse_even_if_the_mean_improves(tmp_path):
    """In one case of five, label 2 lies apart from label 1: the union's largest component would
    delete it (label 2 Dice 1 -> 0.8) while label 1 gains more (mean up); the rule refuses, and
    the per-label step keeps label 1's largest component instead."""
    pred, gt = _folders(tmp_path, [True, True, True, True, False])
    decision = determine_postprocessing(pred, lambda folder: evaluate_folders(folder, gt, labels=[1, 2],
                                                                            show_progress=False),
                                        tmp_path / "work", [1, 2])
    union = decision.steps[0]
    assert union["dice_after"]["foreground_mean"] > union["dice_before"]["foreground_mean"]
    assert union["dice_after"]["per_class"]["2"] == pytest.approx(0.8)
    assert not union["kept"] and "2" in union["note"]
    assert not decision.plan.foreground_union and decision.plan.per_label == [1]
    assert decision.dice_after["per_class"] == {"1": 1.0, "2": 1.0}
    payload = decision.to_json()
    assert payload["foreground_union"] is False and payload["per_label"] == [1]


def _probabilities(folder: Path, case: str, foreground: np.ndarray, geometry: ImageGeometry) -> None:
    """``CASE.npz`` with two classes (float16, as predict writes) and the argmax label file."""
    probabilities = np.stack([1.0 - foreground, foreground]).astype(np.float16)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities)
    write_segmentation((foreground > 0.5).astype(np.int16), geometry, folder / f"{case}.nii.gz")


def test_ensemble_averages_probabilities_in_the_first_folders_geometry(tmp_path):
    geometry = ImageGeometry(spacing=(3.0, 0.5, 0.7), origin=(1.0, 2.0, 3.0),
                             direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), dimension=3,
                             file_ending=".nii.gz")
    first, second = np.zeros((2, 4, 6), np.float32), np.zeros((2, 4, 6), np.float32)
    first[..., :3], first[..., 3:] = 0.9, 0.2     # left sure, right unsure
    second[..., :3], second[..., 3:] = 0.2, 0.7   # left wrong, right fairly sure
    _probabilities(tmp_path / "a", "c0", first, geometry)
    _probabilities(tmp_path / "b", "c0", second, geometry)
    assert main(["ensemble", "-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out"),
                 "--save-probabilities", "--no-progress"]) == 0
    labels, written = read_segmentation(tmp_path / "out" / "c0.nii.gz")
    assert (labels[..., :3] == 1).all() and (labels[..., 3:] == 0).all()  # means 0.55 and 0.45
    assert written.spacing == pytest.approx(geometry.spacing) and written.origin == pytest.approx(geometry.origin)
    averaged = np.load(tmp_path / "out" / "c0.npz")["probabilities"]
    assert averaged[1, 0, 0, 0] == pytest.approx(0.55, abs=1e-3)
    (tmp_path / "b" / "c0.npz").unlink()
    with pytest.raises(EnsembleError, match="--save-probabilities"):
        ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out2", show_progress=False)


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory):
    """Syn2d (6 cases), 2d configuration, trainers Base and NoMirroring, folds 0 and 1, --npz."""
    home = synthetic_home(tmp_path_factory.mktemp("home"))
    make_synthetic_dataset(home, "Syn2d", dimension=2, cases_per_site=3)
    root = str(home.root)
    assert main(["plan_and_preprocess", "Syn2d", "-np", "1", "--home", root, "--no-progress"]) == 0
    for trainer in ("Base", "NoMirroring"):
        for fold in ("0", "1"):
            assert main(["train", "Syn2d", "2d", fold, "-tr", trainer, "--epochs", "1", "--iters-per-epoch", "2",
                         "--npz", "--num-workers", "0", "--device", "cpu", "--home", root, "--no-progress"]) == 0
    return home


def _find_best(root: Path, *extra: str) -> int:
    return main(["find_best_configuration", "Syn2d", "-c", "2d", "3d_fullres", "-tr", "Base", "NoMirroring",
                 "-f", "0", "1", "-np", "1", "--home", str(root), "--no-progress", *extra])


@pytest.mark.slow
def test_find_best_end_to_end(trained_home, capsys):
    assert _find_best(trained_home.root) == 0
    results = trained_home.results_dataset("Syn2d")
    information = json.loads((results / "inference_information.json").read_text())
    names = [c["name"] for c in information["candidates"]]
    assert names == ["Base__plans__2d", "NoMirroring__plans__2d",
                     "ensemble___Base__plans__2d___NoMirroring__plans__2d"]
    assert {s["name"] for s in information["skipped"]} == {"Base__plans__3d_fullres", "NoMirroring__plans__3d_fullres"}
    dice = [c["foreground_mean_dice"] for c in information["candidates"]]
    best = information["best"]
    assert best["foreground_mean_dice"] == max(dice)
    assert best["name"] == names[dice.index(max(dice))]  # the first of equals: single models come first
    crossval = json.loads((results / "Base__plans__2d" / "crossval_results" / "summary.json").read_text())
    fold_cases = [json.loads((results / "Base__plans__2d" / f"fold_{f}" / "validation" / "summary.json").read_text())
                  ["num_cases"] for f in (0, 1)]
    assert crossval["folds"] == ["0", "1"] and crossval["num_cases"] == sum(fold_cases)
    assert (results / "Base__plans__2d" / "crossval_results" / "metrics.csv").is_file()
    if best["kind"] == "ensemble":
        record = results / "ensembles" / best["name"]
    else:
        record = results / best["name"]
    post = json.loads((record / "postprocessing.json").read_text())
    assert {"foreground_union", "per_label", "dice_before", "dice_after"} <= set(post)
    instructions = (results / "inference_instructions.txt").read_text()
    assert "medseg-auto predict -i INPUT_FOLDER" in instructions and "-f 0 1" in instructions
    assert ("medseg-auto ensemble -i" in instructions) == (best["kind"] == "ensemble")
    assert list((results / "logs").glob("find_best_configuration_*.txt"))
    assert "Best:" in capsys.readouterr().out


@pytest.mark.slow
def test_find_best_says_what_is_missing(trained_home, tmp_path):
    """A missing fold leaves the runs out; missing .npz leaves the ensemble out with the fix."""
    root = tmp_path / "home"
    shutil.copytree(trained_home.root, root)
    results = root / "results" / trained_home.results_dataset("Syn2d").name
    partial = cross_validate(results / "Base__plans__2d", DatasetSpec.load(root / "raw" / results.name).folder,
                             ["0", "1", "2"])
    assert partial.folds_used == ["0", "1"] and partial.folds_missing == ["2"]
    assert _find_best(root, "-f", "0", "1", "2") == 2  # no run has fold 2
    for npz in (results / "NoMirroring__plans__2d").glob("fold_*/validation/*.npz"):
        npz.unlink()
    assert _find_best(root) == 0
    information = json.loads((results / "inference_information.json").read_text())
    assert [c["kind"] for c in information["candidates"]] == ["single", "single"]
    ensemble_reason = next(s["reason"] for s in information["skipped"] if s["name"].startswith("ensemble"))
    assert "--npz" in ensemble_reason and "NoMirroring__plans__2d" in ensemble_reason
