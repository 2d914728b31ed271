"""Experiment cells through the executor: in process, in local worker processes, and through
submitit's local executor (the SLURM code path without a cluster)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from medseg_auto.errors import MedsegError
from medseg_auto.experiments.cells import CellsFailed, TrainingOptions
from medseg_auto.experiments.data_addition import DataAdditionRequest, run_data_addition
from medseg_auto.experiments.executor import ExecutorSettings, run_tasks
from medseg_auto.run import train as run_module

OPTIONS = dict(configuration="2d", epochs=1, iters_per_epoch=1, val_iters_per_epoch=1, device="cpu", num_workers=0)


@dataclass
class Square:
    """A picklable task: ``value ** 2``, or an error for a negative value."""

    key: str
    value: int
    log_file: Path | None = None

    def __call__(self) -> int:
        if self.value < 0:
            raise ValueError(f"negative value {self.value}")
        return self.value**2


@pytest.mark.parametrize("jobs", [1, 2])
def test_failures_are_reported_and_the_other_tasks_finish(tmp_path, jobs):
    seen = []
    tasks = [Square("a", 2), Square("b", -1), Square("c", 3)]
    outcome = run_tasks(tasks, ExecutorSettings(jobs=jobs), tmp_path, lambda key, result: seen.append(key))
    assert outcome.results == {"a": 4, "c": 9} and sorted(seen) == ["a", "c"]
    assert list(outcome.failures) == ["b"] and "negative value -1" in outcome.failures["b"]


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(MedsegError, match="--executor"):
        ExecutorSettings(backend="kubernetes")
    with pytest.raises(MedsegError, match="share a key"):
        run_tasks([Square("a", 1), Square("a", 2)], ExecutorSettings(), tmp_path)


def _request(executor: ExecutorSettings | None = None) -> DataAdditionRequest:
    return DataAdditionRequest("Toy", "busi", "stu", ["NoMirroring"], TrainingOptions(**OPTIONS), fractions=[0, 1],
                               executor=executor)


def test_a_failed_cell_is_reported_and_retried_on_rerun(two_site_home, monkeypatch):
    original = run_module.train_fold

    def fails_with_novel_cases(*args, **kwargs):
        if "f1_" in str(args[0].fold):
            raise RuntimeError("out of memory (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "train_fold", fails_with_novel_cases)
    with pytest.raises(CellsFailed, match=r"1 of 2 cell\(s\) failed \(NoMirroring/f1_r0"):
        run_data_addition(two_site_home, _request(), show_progress=False)
    cells = two_site_home.results / "Dataset901_Toy" / "experiments"
    assert [p.parent.name for p in sorted(cells.glob("*/cells/*/*/done.json"))] == ["f0_r0"]
    assert len(pd.read_csv(next(cells.glob("*/results.csv")))) == 1  # the tables hold the finished cell

    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].fold)
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "train_fold", counting)
    outcome = run_data_addition(two_site_home, _request(), show_progress=False)
    assert len(calls) == 1 and "f1_" in calls[0] and len(outcome.rows) == 2


@pytest.mark.slow
@pytest.mark.parametrize("executor", [ExecutorSettings(backend="submitit-local", timeout_min=10),
                                      ExecutorSettings(backend="local", jobs=2)], ids=["submitit-local", "local-j2"])
def test_two_cell_experiment_through_worker_processes(two_site_home, executor):
    """The cells run in other processes (spawned pool workers, or jobs started by submitit as on
    SLURM); results, tables and resume markers are those of an in-process run."""
    pytest.importorskip("submitit") if executor.backend != "local" else None
    outcome = run_data_addition(two_site_home, _request(executor), show_progress=False)
    results = pd.read_csv(outcome.folder / "results.csv")
    assert sorted(results["fraction"]) == [0, 1] and results["dice_base_test"].between(0, 1).all()
    markers = sorted(outcome.folder.glob("cells/*/*/done.json"))
    assert len(markers) == 2 and all(json.loads(m.read_text())["row"]["n_base_test"] == 2 for m in markers)
    assert all((m.parent / "logs" / "cell.txt").is_file() for m in markers)  # each cell logged in its process
    if executor.backend == "submitit-local":
        assert list((outcome.folder / "submitit").glob("*_result.pkl"))
    stamps = [m.stat().st_mtime_ns for m in markers]
    again = run_data_addition(two_site_home, _request(executor), show_progress=False)  # nothing left to run
    assert len(again.rows) == 2 and [m.stat().st_mtime_ns for m in markers] == stamps
