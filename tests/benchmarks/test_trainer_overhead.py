"""``benchmarks/trainer_overhead.py`` end to end on the toy data: every trainer gets a row, Base
is the reference, and the JSON, CSV and Markdown results are written. No timing assertions."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.toy_home import make_toy_home

pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_trainers_on_toy_data(tmp_path):
    make_toy_home(tmp_path / "home", sites=["a", "a", "a", "b", "b", "b"])
    work = tmp_path / "work"
    command = [sys.executable, str(REPO / "benchmarks" / "trainer_overhead.py"), "--home", str(tmp_path / "home"),
               "--dataset", "Toy", "--configuration", "2d", "--trainers", "FeatureDiscrepancy", "--iterations", "2",
               "--warmup", "1", "--device", "cpu", "--options", "fd_weight=0.3", "--work", str(work)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads((work / "trainer_overhead.json").read_text())
    rows = {row["trainer"]: row for row in payload["rows"]}
    assert list(rows) == ["Base", "FeatureDiscrepancy"]  # Base added first as the reference
    assert rows["Base"]["overhead_%"] == 0.0 and all(len(row["seconds"]) == 2 for row in rows.values())
    assert payload["metadata"]["method_options"]["FeatureDiscrepancy"]["FeatureDiscrepancy"]["fd_weight"] == 0.3
    assert payload["metadata"]["epoch"] == 999  # methods timed at the last epoch: the penalty is on
    with open(work / "trainer_overhead.csv") as handle:
        assert [row["trainer"] for row in csv.DictReader(handle)] == ["Base", "FeatureDiscrepancy"]
    assert "| FeatureDiscrepancy" in (work / "trainer_overhead.md").read_text()
    assert "| FeatureDiscrepancy" in result.stdout


def test_unknown_dataset_is_a_clear_error(tmp_path):
    make_toy_home(tmp_path / "home", sites=["a", "a", "a", "b", "b", "b"])
    command = [sys.executable, str(REPO / "benchmarks" / "trainer_overhead.py"), "--home", str(tmp_path / "home"),
               "--dataset", "Nope", "--configuration", "2d", "--work", str(tmp_path / "work")]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 2 and "trainer_overhead.py: error:" in result.stderr and "Nope" in result.stderr
