"""Data addition and leave one site out end to end on the toy two-site home (1 epoch x 1 iteration)."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home
from medseg_auto.experiments import cells as cells_module
from medseg_auto.experiments.cells import TrainingOptions
from medseg_auto.experiments.data_addition import DataAdditionRequest, resolve_base_and_novel, run_data_addition
from medseg_auto.run import train as run_module
from medseg_auto.training.checkpoint import BEST, FINAL, LATEST
from medseg_auto.training.hooks import DomainMethod
from medseg_auto.training.registry import register_trainer

SITE = {**{f"case_{i:03d}": "busi" for i in range(8)}, **{f"case_{i:03d}": "stu" for i in range(8, 12)}}
OPTIONS = dict(configuration="2d", epochs=1, iters_per_epoch=1, device="cpu", num_workers=0)


@register_trainer("ExperimentToyTest")
class ExperimentToyTest(DomainMethod):
    """Test trainer: records the training cases its sampler hook is shown (then samples uniformly);
    no mirroring, so its test predictions take a quarter of the time."""

    seen: list[list[str]] = []

    def configure(self, settings):
        return replace(settings, mirror_axes=None)

    def make_sampler(self, info):
        ExperimentToyTest.seen.append(list(info.case_ids))
        return None


def _request(trainers, fractions, **kwargs):
    return DataAdditionRequest("Toy", "busi", "stu", trainers, TrainingOptions(**OPTIONS), fractions=fractions, **kwargs)


def _fold_split(row):
    return json.loads((run_module.Path(row["fold_folder"]) / "split.json").read_text())


@pytest.mark.slow
def test_data_addition_runs_every_cell_once_and_keeps_test_cases_out(two_site_home, monkeypatch):
    ExperimentToyTest.seen.clear()
    outcome = run_data_addition(two_site_home, _request(["NoMirroring", "ExperimentToyTest"], [0, 1]), show_progress=False)
    folder = outcome.folder
    results = pd.read_csv(folder / "results.csv")
    assert len(results) == 4 and set(results["trainer"]) == {"NoMirroring", "ExperimentToyTest"}
    assert list(results.loc[results["trainer"] == "NoMirroring", "n_novel"]) == [0, 3]  # 4 stu: 1 test, 3 in the pool
    assert results["dice_base_test"].between(0, 1).all() and results["n_base_test"].eq(2).all()
    assert results["n_novel_test"].eq(1).all()
    for name in ("summary.csv", "results.md", "dice_vs_fraction.png", "splits.json", "experiment.json"):
        assert (folder / name).stat().st_size > 0, name
    splits = json.loads((folder / "splits.json").read_text())["splits"]
    held_out = set(splits["base_test"]) | set(splits["novel_test"])
    for row in outcome.rows:
        split = _fold_split(row)
        assert not held_out & set(split["train"] + split["val"])
        assert split["val"] == splits["base_val"] and {SITE[c] for c in split["val"]} == {"busi"}
    assert all(not held_out & set(seen) for seen in ExperimentToyTest.seen) and len(ExperimentToyTest.seen) == 2
    assert "| 1 | 3 |" in (folder / "results.md").read_text()
    test_folders = sorted(folder.glob("cells/*/*/test_*"))
    assert len(test_folders) == 8  # 4 cells x (base test, novel test)
    for test_folder in test_folders:  # per-case L_fd next to the metrics, one row per test case
        lfd = pd.read_csv(test_folder / "per_case_l_fd.csv")
        assert sorted(lfd["case"]) == sorted(pd.read_csv(test_folder / "metrics.csv")["case"].astype(str).unique())

    # a second call runs nothing: no training, no prediction, markers untouched
    markers = sorted(folder.glob("cells/*/*/done.json"))
    assert len(markers) == 4
    stamps = [m.stat().st_mtime_ns for m in markers]

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(run_module, "train_fold", forbidden)
    monkeypatch.setattr(cells_module, "_score", forbidden)
    again = run_data_addition(two_site_home, _request(["NoMirroring", "ExperimentToyTest"], [0, 1]), show_progress=False)
    assert [m.stat().st_mtime_ns for m in markers] == stamps
    assert pd.read_csv(folder / "results.csv").equals(results)
    assert len(again.rows) == 4

    # other training settings in the same folder are refused; more fractions only add cells
    with pytest.raises(Exception, match="other settings"):
        run_data_addition(two_site_home, DataAdditionRequest(
            "Toy", "busi", "stu", ["Base"], TrainingOptions(**{**OPTIONS, "epochs": 2}), fractions=[0]),
            show_progress=False)


@pytest.mark.slow
def test_an_interrupted_cell_resumes_from_its_checkpoint(two_site_home, monkeypatch):
    request = _request(["NoMirroring"], [1], novel_test_fraction=0)
    outcome = run_data_addition(two_site_home, request, show_progress=False)
    (row,) = outcome.rows
    assert "dice_novel_test" not in row  # no novel test cases: nothing predicted
    fold = run_module.Path(row["fold_folder"])
    cell_folder = outcome.folder / "cells" / "NoMirroring" / "f1_r0"
    calls = []
    original = run_module.train_fold

    def spy(request):
        calls.append(request)
        return original(request)

    monkeypatch.setattr(run_module, "train_fold", spy)
    # killed after training, before scoring: training is not repeated, scoring is
    (cell_folder / "done.json").unlink()
    run_data_addition(two_site_home, request, show_progress=False)
    assert calls == [] and (cell_folder / "done.json").is_file()
    # killed during training (only a latest checkpoint): train_fold resumes with --continue
    (cell_folder / "done.json").unlink()
    (fold / FINAL).rename(fold / LATEST)
    (fold / BEST).unlink()
    run_data_addition(two_site_home, request, show_progress=False)
    assert len(calls) == 1 and calls[0].continue_training is True
    assert calls[0].show_progress is False  # a cell's final validation draws no bar of its own (cells have one)
    assert calls[0].split == (_fold_split(row)["train"], _fold_split(row)["val"])
    assert (fold / FINAL).is_file() and json.loads((cell_folder / "done.json").read_text())["row"]["checkpoint"] == "final"


@pytest.mark.slow
def test_leave_one_site_out_command(two_site_home):
    ExperimentToyTest.seen.clear()
    common = ["--config", "2d", "--epochs", "1", "--iters-per-epoch", "1", "--device", "cpu", "--num-workers", "0",
              "--home", str(two_site_home.root), "--no-progress"]
    assert main(["experiment", "leave-one-site-out", "Toy", "--trainers", "ExperimentToyTest", *common]) == 0
    folder = two_site_home.results / "Dataset901_Toy" / "experiments" / "leave_one_site_out__2d__plans"
    table = pd.read_csv(folder / "table.csv")
    assert list(table.columns) == ["trainer", "busi", "stu", "mean"] and list(table["trainer"]) == ["ExperimentToyTest"]
    assert table.loc[0, "mean"] == pytest.approx((table.loc[0, "busi"] + table.loc[0, "stu"]) / 2)
    results = pd.read_csv(folder / "results.csv")
    assert dict(zip(results["held_out"], results["n_test"])) == {"busi": 8, "stu": 4}
    for row in results.itertuples():
        split = _fold_split(row._asdict())
        assert row.held_out not in {SITE[c] for c in split["train"] + split["val"]}
    assert [{SITE[c] for c in seen} for seen in ExperimentToyTest.seen] == [{"stu"}, {"busi"}]
    assert "| ExperimentToyTest |" in (folder / "table.md").read_text()
    assert list((folder / "logs").glob("experiment_leave_one_site_out_*.txt"))
    # rerun: nothing left to do; another epoch count in the same folder is refused with exit code 2
    stamps = [p.stat().st_mtime_ns for p in sorted(folder.glob("cells/*/*/done.json"))]
    assert main(["experiment", "leave-one-site-out", "Toy", "--trainers", "ExperimentToyTest", *common]) == 0
    assert [p.stat().st_mtime_ns for p in sorted(folder.glob("cells/*/*/done.json"))] == stamps
    assert main(["experiment", "leave-one-site-out", "Toy", "--trainers", "Base", *common[:2], "--epochs", "3",
                 *common[4:]]) == 2


def test_two_datasets_are_merged_once_with_one_site_each(tmp_path):
    home = synthetic_home(tmp_path / "home")
    make_synthetic_dataset(home, "BUSI", dimension=2, cases_per_site=1, shape=(8, 8))
    make_synthetic_dataset(home, "STU", dimension=2, cases_per_site=1, shape=(8, 8))
    dataset, base, novel = resolve_base_and_novel(home, None, "BUSI", "STU", show_progress=False)
    assert (dataset, base, novel) == ("Dataset503_BUSI_STU", "BUSI", "STU")
    sites = json.loads((home.raw / dataset / "dataset.json").read_text())["sites"]
    assert sorted(sites.values()) == ["BUSI", "BUSI", "STU", "STU"]  # the sources' own sites are replaced
    assert resolve_base_and_novel(home, None, "BUSI", "STU", show_progress=False)[0] == dataset  # reused
