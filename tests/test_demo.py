"""The demo runs every stage end to end on tiny synthetic data and shows that training helped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.demo import (
    DATASET_NAMES, STAGES, SUMMARY_FILE_NAME, Stage, configuration_patch_sizes, held_out_split, report_problems,
    run_demo,
)
from medseg_auto.paths import DataHome

# A shorter budget than the demo's own (DEMO_BUDGETS): enough to show learning on the toy shapes.
TEST_EPOCHS, TEST_ITERATIONS = 3, 5


def test_run_demo_runs_every_stage_and_training_improves_held_out_dice(tmp_path):
    summary = run_demo(tmp_path / "home", dimensions=(2, 3), cases_per_site=2, num_processes=1, show_progress=False,
                       epochs=TEST_EPOCHS, iterations=TEST_ITERATIONS)

    home = DataHome(tmp_path / "home")
    for dimension, name in DATASET_NAMES.items():
        folder = home.raw_dataset(name)
        spec = DatasetSpec.load(folder)
        assert spec.num_training == 4
        assert sorted(set(spec.sites.values())) == ["siteA", "siteB"]
        assert len(spec.training_cases()) == 4
        assert summary["datasets"][folder.name] == {
            "dimension": dimension, "raw": str(folder), "cases": 4, "sites": ["siteA", "siteB"], "reused": False,
            "held_out": ["siteA_001", "siteB_001"],
        }
    expected = [(folder, stage.name) for folder in sorted(summary["datasets"]) for stage in STAGES]
    assert [(r["dataset"], r["stage"]) for r in summary["stages"]] == expected
    assert {r["status"] for r in summary["stages"]} == {"ran"}  # every stage, none skipped
    assert summary["ok"] is True
    assert set(summary["dice"]) == set(summary["datasets"])
    for dataset, dice in summary["dice"].items():
        assert dice["after"] > dice["before"], (dataset, dice)
    evaluations = [r for r in summary["stages"] if r["stage"] == "evaluate"]
    assert [r["held_out_cases"] for r in evaluations] == [2, 2]  # scored on held-out cases only
    on_disk = json.loads((home.root / SUMMARY_FILE_NAME).read_text())
    assert on_disk["stages"] == summary["stages"]


def test_run_demo_reuses_existing_dataset(tmp_path):
    run_demo(tmp_path, dimensions=(2,), cases_per_site=2, num_processes=1, show_progress=False)
    again = run_demo(tmp_path, dimensions=[2], cases_per_site=5, num_processes=1, show_progress=False)
    (record,) = again["datasets"].values()
    assert record["reused"] is True and record["cases"] == 4
    assert DataHome(tmp_path).list_datasets() == [next(iter(again["datasets"]))]


def test_stage_runner_stops_after_problems(tmp_path):
    calls = []
    stages = [
        Stage("check", "medseg_auto.paths", lambda module, inputs: ["case x is broken"], report=report_problems),
        Stage("after", "medseg_auto.paths", lambda module, inputs: calls.append("after")),
    ]
    summary = run_demo(tmp_path, dimensions=(2,), cases_per_site=1, num_processes=1, show_progress=False,
                       stages=stages)
    statuses = [(r["stage"], r["status"]) for r in summary["stages"]]
    assert statuses == [("check", "failed"), ("after", "skipped")]
    assert summary["stages"][0]["errors"] == ["case x is broken"]
    assert summary["ok"] is False and calls == []


def test_a_stage_module_that_does_not_import_is_an_error_not_a_skip(tmp_path):
    stages = [Stage("absent", "medseg_auto.no_such_stage.module", lambda module, inputs: None)]
    with pytest.raises(ModuleNotFoundError):
        run_demo(tmp_path, dimensions=(2,), cases_per_site=1, num_processes=1, show_progress=False, stages=stages)


def test_held_out_split_keeps_a_third_of_each_site_out_of_training():
    sites = {f"{site}_{index:03d}": site for site in ("siteA", "siteB") for index in range(6)}
    train, held_out = held_out_split(sites)
    assert held_out == ["siteA_004", "siteA_005", "siteB_004", "siteB_005"]
    assert len(train) == 8 and not set(train) & set(held_out)
    assert held_out_split({"a_0": "a", "b_0": "b"}) == (["a_0"], ["b_0"])  # one case per site: the last is held out
    assert held_out_split({"only": "a"}) == (["only"], ["only"])


def test_warnings_from_verify_do_not_stop_the_demo():
    class Warning_:
        severity = "warning"

        def __str__(self):
            return "warning: empty mask"

    report = report_problems([Warning_()])
    assert report.ok and report.details == {"errors": [], "warnings": ["warning: empty mask"]}
    assert not report_problems(["no severity counts as an error"]).ok
    assert report_problems([]).ok


def test_patch_sizes_from_plans_object_or_dict():
    class Configuration:
        patch_size = (2, 3)

    class Plans:
        configurations = {"2d": Configuration()}

    assert configuration_patch_sizes(Plans()) == {"2d": [2, 3]}
    assert configuration_patch_sizes({"configurations": {"3d_fullres": {"patch_size": [4, 5, 6]}}}) == {
        "3d_fullres": [4, 5, 6]
    }
    assert configuration_patch_sizes(None) == {}


def test_demo_command_runs_and_reports(tmp_path, capsys):
    code = main(["demo", "--home", str(tmp_path), "--dimension", "2", "--cases-per-site", "1", "-np", "1",
                 "--epochs", "1", "--iterations", "2", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "summary:" in out and "Dice on held-out cases:" in out and "before training" in out
    assert (tmp_path / SUMMARY_FILE_NAME).is_file()
    assert list((tmp_path / "logs").glob("demo_*.txt"))


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_console_script_help_runs_in_a_fresh_process():
    completed = subprocess.run([sys.executable, "-m", "medseg_auto", "demo", "--help"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "--cases-per-site" in completed.stdout


def test_building_the_parser_imports_no_heavy_package():
    """Every command's parser is built on every call (even ``--help``): registering one must not
    import torch, scipy or pandas (each costs about a second of start-up)."""
    code = ("import sys; from medseg_auto.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'scipy', 'pandas', 'monai') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
