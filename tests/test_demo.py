"""The demo runs end to end on tiny synthetic data, whichever stages exist yet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.demo import (
    DATASET_NAMES, STAGES, SUMMARY_FILE_NAME, Stage, configuration_patch_sizes, import_stage_module,
    report_problems, run_demo,
)
from medseg_auto.paths import DataHome

STATUSES = {"ran", "skipped"}


def test_run_demo_writes_datasets_and_lists_every_stage(tmp_path):
    summary = run_demo(tmp_path / "home", dimensions=(2, 3), cases_per_site=2, num_processes=1, show_progress=False)

    home = DataHome(tmp_path / "home")
    for dimension, name in DATASET_NAMES.items():
        folder = home.raw_dataset(name)
        spec = DatasetSpec.load(folder)
        assert spec.num_training == 4
        assert sorted(set(spec.sites.values())) == ["siteA", "siteB"]
        assert len(spec.training_cases()) == 4
        assert summary["datasets"][folder.name] == {
            "dimension": dimension, "raw": str(folder), "cases": 4, "sites": ["siteA", "siteB"], "reused": False,
        }
    expected = [(folder, stage.name) for folder in sorted(summary["datasets"]) for stage in STAGES]
    assert [(r["dataset"], r["stage"]) for r in summary["stages"]] == expected
    assert {r["status"] for r in summary["stages"]} <= STATUSES
    assert summary["ok"] is True
    on_disk = json.loads((home.root / SUMMARY_FILE_NAME).read_text())
    assert on_disk["stages"] == summary["stages"]


def test_run_demo_reuses_existing_dataset(tmp_path):
    run_demo(tmp_path, dimensions=(2,), cases_per_site=2, num_processes=1, show_progress=False)
    again = run_demo(tmp_path, dimensions=[2], cases_per_site=5, num_processes=1, show_progress=False)
    (record,) = again["datasets"].values()
    assert record["reused"] is True and record["cases"] == 4
    assert DataHome(tmp_path).list_datasets() == [next(iter(again["datasets"]))]


def test_stage_runner_skips_absent_modules_and_stops_after_problems(tmp_path):
    calls = []
    stages = [
        Stage("absent", "medseg_auto.no_such_stage.module", lambda module, inputs: calls.append("absent")),
        Stage("check", "medseg_auto.paths", lambda module, inputs: ["case x is broken"], report=report_problems),
        Stage("after", "medseg_auto.paths", lambda module, inputs: calls.append("after")),
    ]
    summary = run_demo(tmp_path, dimensions=(2,), cases_per_site=1, num_processes=1, show_progress=False,
                       stages=stages)
    statuses = [(r["stage"], r["status"]) for r in summary["stages"]]
    assert statuses == [("absent", "skipped"), ("check", "failed"), ("after", "skipped")]
    assert summary["stages"][1]["errors"] == ["case x is broken"]
    assert summary["ok"] is False and calls == []


def test_warnings_from_verify_do_not_stop_the_demo():
    class Warning_:
        severity = "warning"

        def __str__(self):
            return "warning: empty mask"

    report = report_problems([Warning_()])
    assert report.ok and report.details == {"errors": [], "warnings": ["warning: empty mask"]}
    assert not report_problems(["no severity counts as an error"]).ok
    assert report_problems([]).ok


def test_import_stage_module_only_forgives_the_stage_module_itself():
    assert import_stage_module("medseg_auto.not_built_yet") is None
    assert import_stage_module("medseg_auto.paths") is not None


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
                 "--no-progress"])
    assert code == 0
    assert "summary:" in capsys.readouterr().out
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
