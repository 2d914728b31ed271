"""``experiment methods`` end to end on tiny synthetic PNG data, with an RGB external dataset of
another size against a grey model, a duplicated case, and resuming."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medseg_auto.cli.main import main
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home
from medseg_auto.experiments import cells as cells_module


def _make_rgb_external(home, name: str) -> None:
    """A synthetic dataset of another size whose images are truly colour RGB PNGs."""
    spec = make_synthetic_dataset(home, name, dimension=2, cases_per_site=2, shape=(72, 80), seed=3)
    for path in sorted((spec.folder / "imagesTr").glob("*.png")):
        grey = np.asarray(Image.open(path), dtype=np.float32)
        rgb = np.stack([grey, grey * 0.9, grey * 0.7], axis=-1).clip(0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(path)
    spec.channel_names = {"0": "R", "1": "G", "2": "B"}
    spec.save()


def _duplicate_case(home, dataset: str, source: str, copy: str) -> None:
    """Add ``copy`` as an exact duplicate of case ``source`` (same image and label)."""
    spec = DatasetSpec.load(home.raw_dataset(dataset))
    shutil.copy(spec.folder / "imagesTr" / f"{source}_0000.png", spec.folder / "imagesTr" / f"{copy}_0000.png")
    shutil.copy(spec.folder / "labelsTr" / f"{source}.png", spec.folder / "labelsTr" / f"{copy}.png")
    spec.sites[copy] = spec.sites[source]
    spec.num_training += 1
    spec.save()


@pytest.fixture(scope="module")
def benchmark_home(tmp_path_factory):
    home = synthetic_home(tmp_path_factory.mktemp("methods_home"))
    make_synthetic_dataset(home, "Syn2d", dimension=2, cases_per_site=6)
    _duplicate_case(home, "Syn2d", "siteA_000", "siteA_dup")
    _make_rgb_external(home, "ExtRGB")
    assert main(["plan_and_preprocess", "Syn2d", "-np", "1", "--home", str(home.root), "--no-progress"]) == 0
    return home


ARGS = ["--epochs", "1", "--iters-per-epoch", "1", "--val-iters-per-epoch", "1", "--num-workers", "0",
        "--device", "cpu", "--no-progress", "--test-fraction", "0.3"]


def test_methods_benchmark_end_to_end_with_rgb_external_set(benchmark_home, capsys, monkeypatch):
    root = str(benchmark_home.root)
    out = benchmark_home.root / "bench"
    argv = ["experiment", "methods", "Syn2d", "--test-datasets", "ExtRGB", "--trainers", "NoMirroring",
            "--seeds", "0", "1", "--out", str(out), "--home", root, *ARGS]
    assert main(argv) == 0
    log_text = capsys.readouterr().err
    # the grey model predicted the RGB external cases, with a warning instead of refusing
    assert "3 channels, the model expects 1: converted to luminance" in log_text
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and set(results["arm"]) == {"Base", "NoMirroring"}  # Base always included
    assert results["n_ExtRGB"].eq(4).all() and results["dice_ExtRGB"].between(0, 1).all()
    per_case = pd.read_csv(out / "per_case.csv")
    assert set(per_case["test_set"]) == {"in_domain", "ExtRGB"}
    assert per_case[per_case["test_set"] == "ExtRGB"]["case"].nunique() == 4
    board = pd.read_csv(out / "leaderboard.csv")
    overall = board[board["site"] == "all"]
    assert set(zip(overall["arm"], overall["test_set"])) == {
        (arm, test) for arm in ("Base", "NoMirroring") for test in ("in_domain", "ExtRGB")}
    assert overall["n_seeds"].eq(2).all()
    other = overall[(overall["arm"] == "NoMirroring") & (overall["test_set"] == "ExtRGB")].iloc[0]
    assert other["n_pairs"] >= 1 and other["ci_low"] <= other["diff_vs_base"] <= other["ci_high"]
    assert set(board[board["test_set"] == "ExtRGB"]["site"]) == {"all", "siteA", "siteB"}  # its own sites
    assert "harm" in board.columns
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard.json", "splits.json", "duplicates.json"):
        assert (out / name).stat().st_size > 0, name
    assert "Δ vs Base" in (out / "leaderboard.md").read_text()
    # the duplicate pair is on one side of the split, and found as an exact duplicate
    splits = json.loads((out / "splits.json").read_text())["splits"]
    side = {case: name for name, cases in splits.items() for case in cases}
    assert side["siteA_000"] == side["siteA_dup"]
    assert ["siteA_000", "siteA_dup"] in json.loads((out / "duplicates.json").read_text())["exact_clusters"]
    # cells run seed by seed
    assert log_text.index("cell 3/4: Base/seed1") > log_text.index("cell 2/4: NoMirroring/seed0")

    # rerunning runs nothing
    def forbidden(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(cells_module, "_train", forbidden)
    assert main(argv) == 0
    # --report-only with a new seed: nothing runs, the tables stay those of the finished cells
    (out / "leaderboard.md").unlink()
    assert main(argv[:argv.index("--seeds")] + ["--seeds", "0", "1", "2", "--report-only"] + argv[argv.index("--out"):]) == 0
    assert "cells finished: 4 of 6" in (out / "leaderboard.md").read_text()


def test_methods_rejects_training_dataset_as_external_and_unknown_trainer(benchmark_home):
    root = str(benchmark_home.root)
    base = ["experiment", "methods", "Syn2d", "--home", root, "--out", str(benchmark_home.root / "bad"), *ARGS]
    assert main(base + ["--trainers", "NoSuchTrainer"]) == 2
    assert main(base + ["--test-datasets", "Syn2d"]) == 2


def test_all_trainers_leave_out_the_ones_needing_inputs():
    from medseg_auto.experiments.methods import NOT_IN_ALL, resolve_arms

    arms = resolve_arms(["all"], ["disseg"])
    names = [arm.name for arm in arms]
    assert names[0] == "Base" and "Base-disseg" in names and "Dispersive" in names
    assert not set(NOT_IN_ALL) & set(names)
    assert [a for a in arms if a.name == "Base-disseg"][0].network == "disseg"


@pytest.mark.slow  # spawned worker processes each import torch: ~100 s on a loaded 2-core machine
def test_methods_runs_cells_in_parallel_processes_with_an_fda_arm(benchmark_home):
    out = benchmark_home.root / "parallel"
    argv = ["experiment", "methods", "Syn2d", "--trainers", "Base", "--seeds", "0", "1", "-j", "2", "--fda",
            "--test-datasets", "ExtRGB", "--out", str(out), "--home", str(benchmark_home.root), *ARGS]
    assert main(argv) == 0
    assert not list(out.glob("cells/*/*/failed.json"))
    results = pd.read_csv(out / "results.csv")
    base = results[results["arm"] == "Base"]
    assert sorted(base["seed"]) == [0, 1] and base["dice_in_domain"].between(0, 1).all()
    fda = results[results["arm"] == "Base+FDA"]
    assert sorted(fda["seed"]) == [0, 1] and fda["dice_ExtRGB"].between(0, 1).all()
    assert set(fda["fold_folder"]) == set(base["fold_folder"])  # the same models, predicted with FDA
    board = pd.read_csv(out / "leaderboard.csv")
    row = board[(board["arm"] == "Base+FDA") & (board["test_set"] == "ExtRGB") & (board["site"] == "all")].iloc[0]
    assert row["n_pairs"] == 4 and not (board["arm"].eq("Base+FDA") & board["test_set"].eq("in_domain")).any()


def test_methods_refuses_an_external_set_with_other_labels(benchmark_home):
    from medseg_auto.dataset.synthetic import make_synthetic_dataset

    make_synthetic_dataset(benchmark_home, "Ext3d", dimension=3, cases_per_site=1)  # labels 0, 1, 2
    argv = ["experiment", "methods", "Syn2d", "--test-datasets", "Ext3d", "--home", str(benchmark_home.root),
            "--out", str(benchmark_home.root / "labels"), *ARGS]
    assert main(argv) == 2
