"""``experiment methods`` runs its cells through the experiments' one executor
(``experiments/executor.py``): a failing cell is recorded and retried on rerun, and the
submitit path (SLURM's, run locally) finishes the cells, the ``Base+FDA`` cell after its Base."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from medseg_auto.cli.main import main
from medseg_auto.experiments import cells as cells_module
from tests.experiments.test_methods_benchmark import ARGS, benchmark_home  # noqa: F401 (fixture)


def _argv(home, out, *extra):
    return ["experiment", "methods", "Syn2d", "--trainers", "NoMirroring", "--seeds", "0", "--out", str(out),
            "--home", str(home.root), *ARGS, *extra]


def test_a_failing_cell_is_recorded_the_others_finish_and_a_rerun_retries_it(benchmark_home, monkeypatch):  # noqa: F811
    out = benchmark_home.root / "failing"
    original = cells_module._train
    calls = []

    def fails_for_no_mirroring(data, cell, options):
        calls.append(cell.key)
        if cell.trainer == "NoMirroring":
            raise RuntimeError("out of memory (simulated)")
        return original(data, cell, options)

    monkeypatch.setattr(cells_module, "_train", fails_for_no_mirroring)
    assert main(_argv(benchmark_home, out)) == 0
    failed = json.loads((out / "cells" / "NoMirroring" / "seed0" / "failed.json").read_text())
    assert "out of memory (simulated)" in failed["error"]
    assert (out / "cells" / "Base" / "seed0" / "done.json").is_file()
    assert "failed: NoMirroring/seed0" in (out / "leaderboard.md").read_text()
    assert len(pd.read_csv(out / "results.csv")) == 1

    calls.clear()
    monkeypatch.setattr(cells_module, "_train", lambda *args: calls.append(args[1].key) or original(*args))
    assert main(_argv(benchmark_home, out)) == 0
    assert calls == ["NoMirroring/seed0"]  # only the failed cell ran again
    assert not (out / "cells" / "NoMirroring" / "seed0" / "failed.json").exists()
    assert len(pd.read_csv(out / "results.csv")) == 2 and "failed:" not in (out / "leaderboard.md").read_text()


def test_bad_executor_settings_are_one_line_errors(benchmark_home, capsys):  # noqa: F811
    assert main(_argv(benchmark_home, benchmark_home.root / "bad_j", "-j", "0")) == 2
    assert "-j/--jobs must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_methods_through_submitit_local_with_an_fda_arm(benchmark_home):  # noqa: F811
    pytest.importorskip("submitit", reason="the submitit backend needs the submitit package")
    out = benchmark_home.root / "submitit"
    argv = ["experiment", "methods", "Syn2d", "--trainers", "Base", "--seeds", "0", "--fda", "--test-datasets",
            "ExtRGB", "--executor", "submitit-local", "--out", str(out), "--home", str(benchmark_home.root), *ARGS]
    assert main(argv) == 0
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["arm"]) == ["Base", "Base+FDA"] and results["dice_ExtRGB"].between(0, 1).all()
    assert list((out / "submitit").glob("*_result.pkl"))  # the cells ran as submitit jobs
    assert (out / "cells" / "Base" / "seed0" / "logs" / "cell.txt").is_file()  # each job logs to its cell
